//! The remote scorer: the same [`Score`] contract, served by an OpenAI-compatible completions
//! endpoint that returns logprobs (vLLM, llama.cpp's `llama-server`). Each policy's ShieldGemma
//! prompt is encoded here exactly as the embedded engine encodes it (`<bos>` and the template's
//! markers as special tokens, user text never) and sent as a list of token ids; one token is
//! asked for with the top logprobs, and P(Yes) is the softmax over the `Yes` and `No` logprobs —
//! the same number as the embedded engine's, since the normalisation cancels. Prompts as text
//! (the server tokenizes, so typed markers become special tokens) remain an explicit option.
//! Several endpoints share the load round-robin; failures are retried on the next endpoint
//! with backoff, a circuit breaker rests an endpoint after repeated failures, and a health
//! thread probes `/v1/models`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

pub use crate::config::{PromptFormat, RemoteSettings};
use crate::model::GemmaTokenizer;
use crate::prompt::Templates;

use super::encode::{encode_request, Truncation};
use super::{PolicyScore, RequestScores, Score, ScoreError, ScoreRequest};

/// One prompt as the server receives it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Prompt {
    /// Token ids, `<bos>` first.
    Ids(Vec<u32>),
    /// The rendered text without `<bos>` (the server adds it).
    Text(String),
}

/// How token-id prompts are made: the model's tokenizer and the longest prompt allowed.
struct Encoder {
    tokenizer: GemmaTokenizer,
    max_tokens: usize,
}

/// Why a remote call failed (reported as [`ScoreError::Remote`]).
#[derive(Debug, Clone, PartialEq)]
enum CallError {
    /// Worth trying elsewhere: transport errors, 429, 5xx, unreadable answers.
    Retryable(String),
    /// The request itself is wrong (other 4xx) or the answer cannot give a score.
    Final(String),
}

/// One server and its circuit.
struct Endpoint {
    url: String,
    healthy: AtomicBool,
    circuit: Mutex<Circuit>,
}

#[derive(Default)]
struct Circuit {
    failures: u32,
    open_until: Option<Instant>,
}

impl Endpoint {
    /// Whether a request may go here now (a rested open circuit lets one trial through).
    fn available(&self, now: Instant) -> bool {
        let circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        self.healthy.load(Ordering::Relaxed) && circuit.open_until.is_none_or(|t| now >= t)
    }

    fn record(&self, ok: bool, settings: &RemoteSettings) {
        let mut circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            *circuit = Circuit::default();
        } else {
            circuit.failures += 1;
            if circuit.failures >= settings.breaker_failures.max(1) {
                circuit.open_until =
                    Some(Instant::now() + Duration::from_millis(settings.breaker_cooldown_ms));
                tracing::warn!(endpoint = %self.url, failures = circuit.failures, "scorer endpoint circuit open");
            }
        }
    }
}

/// Scores through remote completions endpoints.
pub struct RemoteScorer {
    endpoints: Arc<Vec<Endpoint>>,
    agent: ureq::Agent,
    templates: Templates,
    /// Present for token-id prompts.
    encoder: Option<Encoder>,
    settings: RemoteSettings,
    api_key: Option<String>,
    next: AtomicUsize,
    stop: Arc<AtomicBool>,
}

impl Drop for RemoteScorer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl RemoteScorer {
    /// Builds the scorer (and starts its health thread); fails on an empty URL list, an unset
    /// API key variable, or token-id prompts without the model's tokenizer.
    pub fn new(
        settings: RemoteSettings,
        tokenizer: Option<GemmaTokenizer>,
    ) -> Result<Self, ScoreError> {
        if settings.urls.is_empty() {
            return Err(ScoreError::Remote(
                "no scorer endpoints: set [scorer.remote] urls".into(),
            ));
        }
        let encoder = match (settings.prompt_format, tokenizer) {
            (PromptFormat::Text, _) => None,
            (PromptFormat::TokenIds, Some(tokenizer)) => Some(Encoder {
                tokenizer,
                max_tokens: settings.max_tokens,
            }),
            (PromptFormat::TokenIds, None) => {
                return Err(ScoreError::Remote(
                    "token-id prompts need the model's tokenizer: set [model] source (or \
                     [model] tokenizer) to the served model's"
                        .into(),
                ))
            }
        };
        let api_key = match &settings.api_key_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                ScoreError::Remote(format!(
                    "[scorer.remote] api_key_env names {var}, which is not set"
                ))
            })?),
            None => None,
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .build();
        let endpoints: Arc<Vec<Endpoint>> = Arc::new(
            settings
                .urls
                .iter()
                .map(|u| Endpoint {
                    url: u.trim_end_matches('/').to_string(),
                    healthy: AtomicBool::new(true),
                    circuit: Mutex::new(Circuit::default()),
                })
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        if settings.health_interval_ms > 0 {
            let (endpoints, agent, stop) = (endpoints.clone(), agent.clone(), stop.clone());
            let interval = Duration::from_millis(settings.health_interval_ms);
            let key = api_key.clone();
            std::thread::Builder::new()
                .name("shieldgate-scorer-health".into())
                .spawn(move || probe_health(&endpoints, &agent, key.as_deref(), interval, &stop))
                .map_err(|e| ScoreError::Remote(format!("cannot start the health thread: {e}")))?;
        }
        Ok(Self {
            endpoints,
            agent,
            templates: Templates::builtin(),
            encoder,
            settings,
            api_key,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// `(Yes, No)` logprobs of each prompt: `prompts_per_request` per request, the requests
    /// sent concurrently.
    fn complete(&self, prompts: &[Prompt]) -> Result<Vec<(f64, f64)>, ScoreError> {
        let chunks: Vec<&[Prompt]> = prompts
            .chunks(self.settings.prompts_per_request.max(1))
            .collect();
        if chunks.len() == 1 {
            return self.complete_chunk(chunks[0]);
        }
        let results: Vec<Result<Vec<(f64, f64)>, ScoreError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|chunk| scope.spawn(move || self.complete_chunk(chunk)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(ScoreError::Remote("a request thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut all = Vec::with_capacity(prompts.len());
        for r in results {
            all.extend(r?);
        }
        Ok(all)
    }

    /// `(Yes, No)` logprobs of each prompt of one request, trying endpoints in turn.
    fn complete_chunk(&self, prompts: &[Prompt]) -> Result<Vec<(f64, f64)>, ScoreError> {
        let body = json!({"model": self.settings.model, "prompt": prompts, "max_tokens": 1,
            "temperature": 0, "logprobs": self.settings.top_logprobs, "echo": false});
        let mut last = String::from("no endpoint is available");
        for attempt in 0..=self.settings.retries {
            if attempt > 0 {
                let pause = self
                    .settings
                    .backoff_ms
                    .saturating_mul(1 << (attempt - 1).min(16));
                std::thread::sleep(Duration::from_millis(pause));
            }
            let Some(endpoint) = self.pick() else {
                last =
                    "every scorer endpoint is unhealthy or resting after failures (circuit open)"
                        .into();
                continue;
            };
            match self.call(endpoint, &body, prompts.len()) {
                Ok(found) => {
                    endpoint.record(true, &self.settings);
                    return Ok(found);
                }
                Err(CallError::Final(msg)) => {
                    return Err(ScoreError::Remote(format!("{}: {msg}", endpoint.url)))
                }
                Err(CallError::Retryable(msg)) => {
                    endpoint.record(false, &self.settings);
                    tracing::warn!(endpoint = %endpoint.url, error = %msg, attempt, "scorer endpoint failed");
                    last = format!("{}: {msg}", endpoint.url);
                }
            }
        }
        Err(ScoreError::Remote(format!(
            "gave up after {} tries; last: {last}",
            self.settings.retries + 1
        )))
    }

    /// The next available endpoint, round-robin.
    fn pick(&self) -> Option<&Endpoint> {
        let now = Instant::now();
        let n = self.endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.endpoints[(start + k) % n])
            .find(|e| e.available(now))
    }

    fn call(
        &self,
        endpoint: &Endpoint,
        body: &Value,
        n: usize,
    ) -> Result<Vec<(f64, f64)>, CallError> {
        let mut request = self.agent.post(&format!("{}/v1/completions", endpoint.url));
        if let Some(key) = &self.api_key {
            request = request.set("authorization", &format!("Bearer {key}"));
        }
        let answer: Value = match request.send_json(body) {
            Ok(response) => response
                .into_json()
                .map_err(|e| CallError::Retryable(format!("unreadable answer: {e}")))?,
            Err(ureq::Error::Status(code, response)) => {
                let text: String = response
                    .into_string()
                    .unwrap_or_default()
                    .chars()
                    .take(300)
                    .collect();
                let msg = format!("HTTP {code}: {text}");
                return Err(if code == 429 || code >= 500 {
                    CallError::Retryable(msg)
                } else {
                    CallError::Final(msg)
                });
            }
            Err(e) => return Err(CallError::Retryable(e.to_string())),
        };
        let ids = self
            .encoder
            .as_ref()
            .map(|e| (e.tokenizer.yes, e.tokenizer.no));
        yes_no_logprobs(&answer, n, self.settings.top_logprobs, ids)
    }

    /// Each policy's prompt of `request`, and how its content was cut.
    fn prompts(
        &self,
        request: &ScoreRequest,
        out: &mut Vec<Prompt>,
    ) -> Result<Truncation, ScoreError> {
        let guidelines = request.guidelines()?;
        let content = request.content();
        let template = self.templates.get(content.mode());
        match &self.encoder {
            Some(e) => {
                let (encoded, truncation) =
                    encode_request(&e.tokenizer, template, &content, &guidelines, e.max_tokens)?;
                out.extend((0..guidelines.len()).map(|i| Prompt::Ids(encoded.full(i))));
                Ok(truncation)
            }
            None => {
                let rendered = template.render(&content, &guidelines);
                out.extend((0..guidelines.len()).map(|i| {
                    let text = rendered.text(i);
                    Prompt::Text(text.strip_prefix("<bos>").unwrap_or(&text).to_string())
                }));
                Ok(Truncation::default())
            }
        }
    }
}

/// Reads each choice's `Yes` and `No` logprobs from a completions answer, in either shape:
/// OpenAI's legacy `logprobs.top_logprobs[0]` mapping token text to logprob (vLLM), or
/// llama.cpp's `logprobs.content[0].top_logprobs` list of `{id, token, logprob}` (matched by
/// id when the ids are known).
fn yes_no_logprobs(
    answer: &Value,
    n: usize,
    asked: u32,
    ids: Option<(u32, u32)>,
) -> Result<Vec<(f64, f64)>, CallError> {
    let choices = answer
        .get("choices")
        .and_then(Value::as_array)
        .ok_or_else(|| CallError::Retryable("the answer has no choices".into()))?;
    let mut found = vec![None; n];
    for (k, choice) in choices.iter().enumerate() {
        let index = choice
            .get("index")
            .and_then(Value::as_u64)
            .map_or(k, |i| i as usize);
        let missing = |token: &str, returned: usize| {
            CallError::Final(format!(
                "{token:?} is not among the top {asked} logprobs of prompt {index} (the server returned {returned}); raise [scorer.remote] top_logprobs (and the server's limit, e.g. vLLM --max-logprobs)"
            ))
        };
        let pair = if let Some(top) = choice
            .pointer("/logprobs/top_logprobs/0")
            .and_then(Value::as_object)
        {
            let get = |token: &str| {
                top.get(token)
                    .and_then(Value::as_f64)
                    .ok_or_else(|| missing(token, top.len()))
            };
            (get("Yes")?, get("No")?)
        } else if let Some(top) = choice
            .pointer("/logprobs/content/0/top_logprobs")
            .and_then(Value::as_array)
        {
            let get = |token: &str, id: Option<u32>| {
                top.iter()
                    .find(|entry| match id {
                        Some(id) => entry.get("id").and_then(Value::as_u64) == Some(id.into()),
                        None => entry.get("token").and_then(Value::as_str) == Some(token),
                    })
                    .and_then(|entry| entry.get("logprob").and_then(Value::as_f64))
                    .ok_or_else(|| missing(token, top.len()))
            };
            (get("Yes", ids.map(|i| i.0))?, get("No", ids.map(|i| i.1))?)
        } else {
            return Err(CallError::Final(
                "the answer has no top logprobs: the server must support logprobs on /v1/completions".into(),
            ));
        };
        if let Some(slot) = found.get_mut(index) {
            *slot = Some(pair);
        }
    }
    found
        .into_iter()
        .enumerate()
        .map(|(i, f)| f.ok_or_else(|| CallError::Retryable(format!("no choice for prompt {i}"))))
        .collect()
}

/// Marks endpoints healthy or not by `GET /v1/models`, every `interval`, until `stop`.
fn probe_health(
    endpoints: &[Endpoint],
    agent: &ureq::Agent,
    key: Option<&str>,
    interval: Duration,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(interval);
        for e in endpoints {
            let mut request = agent.get(&format!("{}/v1/models", e.url));
            if let Some(key) = key {
                request = request.set("authorization", &format!("Bearer {key}"));
            }
            let ok = request.call().is_ok();
            if e.healthy.swap(ok, Ordering::Relaxed) != ok {
                tracing::warn!(endpoint = %e.url, healthy = ok, "scorer endpoint health changed");
            }
        }
    }
}

impl Score for RemoteScorer {
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
        let mut prompts = Vec::new();
        let mut truncations = Vec::with_capacity(requests.len());
        for r in requests {
            truncations.push(self.prompts(r, &mut prompts)?);
        }
        let lengths: Vec<usize> = prompts
            .iter()
            .map(|p| match p {
                Prompt::Ids(ids) => ids.len(),
                Prompt::Text(_) => 0,
            })
            .collect();
        let mut logprobs = self.complete(&prompts)?.into_iter().zip(lengths);
        Ok(requests
            .iter()
            .zip(truncations)
            .map(|(r, truncation)| RequestScores {
                scores: r
                    .policies
                    .iter()
                    .zip(logprobs.by_ref())
                    .map(|(p, ((yes, no), tokens))| PolicyScore {
                        id: p.id.clone(),
                        p_yes: 1.0 / (1.0 + (no - yes).exp()),
                        yes_logit: yes as f32,
                        no_logit: no as f32,
                        tokens,
                    })
                    .collect(),
                truncated: (truncation != Truncation::default()).then_some(truncation),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicU32;

    type Answer = Arc<dyn Fn(&Value) -> (u16, Value) + Send + Sync>;

    /// A one-thread HTTP/1.1 server: answers each POST body with `answer`, GETs with 200.
    fn mock(answer: Answer) -> (String, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let (status, value) = if head.starts_with("POST") {
                    counted.fetch_add(1, Ordering::SeqCst);
                    answer(&serde_json::from_slice(&body).unwrap_or(Value::Null))
                } else {
                    (200, json!({"data": []}))
                };
                let text = value.to_string();
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        (url, calls)
    }

    /// Answers every prompt with the given Yes and No logprobs.
    fn logprobs(yes: f64, no: f64) -> Answer {
        Arc::new(move |body: &Value| {
            let n = body["prompt"].as_array().map_or(0, Vec::len);
            let choices: Vec<Value> = (0..n)
                .map(|i| {
                    json!({"index": i, "text": "Yes",
                    "logprobs": {"top_logprobs": [{"Yes": yes, "No": no, "The": -9.0}]}})
                })
                .collect();
            (200, json!({"choices": choices}))
        })
    }

    /// Text prompts: these tests are about the transport; token ids are tested against the
    /// real tokenizer in tests/remote.rs.
    fn settings(urls: Vec<String>) -> RemoteSettings {
        RemoteSettings {
            urls,
            backoff_ms: 1,
            health_interval_ms: 0,
            prompt_format: PromptFormat::Text,
            ..RemoteSettings::default()
        }
    }

    fn request() -> ScoreRequest {
        ScoreRequest {
            user: "How do I pick a lock?".into(),
            response: None,
            context: Vec::new(),
            policies: crate::policy::PolicySet::builtin()
                .iter()
                .cloned()
                .collect(),
        }
    }

    #[test]
    fn p_yes_comes_from_the_yes_and_no_logprobs_of_raw_prompts() {
        let seen = Arc::new(Mutex::new(Value::Null));
        let store = seen.clone();
        let inner = logprobs(-0.1, -2.4);
        let (url, _) = mock(Arc::new(move |body: &Value| {
            *store.lock().expect("lock") = body.clone();
            inner(body)
        }));
        let scorer = RemoteScorer::new(settings(vec![url.clone()]), None).expect("scorer");
        let scores = scorer.score(&[request()]).expect("scores");
        let want = 1.0 / (1.0 + (-2.3f64).exp());
        assert_eq!(scores[0].scores.len(), 4);
        for s in &scores[0].scores {
            assert!((s.p_yes - want).abs() < 1e-12, "{}", s.p_yes);
        }
        let body = seen.lock().expect("lock").clone();
        assert_eq!(body["max_tokens"], 1);
        assert_eq!(body["logprobs"], 20);
        let prompts = body["prompt"].as_array().expect("prompts");
        assert_eq!(prompts.len(), 4);
        let first = prompts[0].as_str().expect("text");
        assert!(
            first.starts_with("You are a policy expert"),
            "no <bos>: {first}"
        );
        assert!(first.contains("Human Question: How do I pick a lock?"));
        assert!(
            first.contains("<start_of_turn>"),
            "markers are sent as text"
        );
    }

    #[test]
    fn llama_cpp_logprobs_are_read_by_id_or_by_text() {
        let entry = |id: u32, token: &str, logprob: f64| json!({"id": id, "token": token, "bytes": [], "logprob": logprob});
        let answer = json!({"choices": [
            {"index": 1, "logprobs": {"content": [{"id": 9, "token": "x", "logprob": -0.5,
                "top_logprobs": [entry(9, "x", -0.5), entry(1294, "No", -1.5), entry(3553, "Yes", -2.5)]}]}},
            {"index": 0, "logprobs": {"content": [{"id": 9, "token": "x", "logprob": -0.5,
                "top_logprobs": [entry(3553, "Yes", -0.25), entry(7, "Yes", -9.0), entry(1294, "No", -4.0)]}]}}
        ]});
        let by_id = yes_no_logprobs(&answer, 2, 20, Some((3553, 1294))).expect("by id");
        assert_eq!(by_id, vec![(-0.25, -4.0), (-2.5, -1.5)]);
        let by_text = yes_no_logprobs(&answer, 2, 20, None).expect("by text");
        assert_eq!(by_text, vec![(-0.25, -4.0), (-2.5, -1.5)]);
        let without_no = json!({"choices": [{"index": 0, "logprobs": {"content": [{"top_logprobs": [entry(3553, "Yes", -0.1)]}]}}]});
        match yes_no_logprobs(&without_no, 1, 20, Some((3553, 1294))) {
            Err(CallError::Final(msg)) => {
                assert!(msg.contains("\"No\" is not among the top 20"), "{msg}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prompts_are_split_over_concurrent_requests_in_order() {
        let answer: Answer = Arc::new(|body: &Value| {
            let prompts = body["prompt"].as_array().cloned().unwrap_or_default();
            assert_eq!(prompts.len(), 1, "one prompt per request");
            // Yes higher for the harassment guideline only.
            let yes = if prompts[0]
                .as_str()
                .is_some_and(|p| p.contains("Harassment"))
            {
                -0.1
            } else {
                -3.0
            };
            (
                200,
                json!({"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"Yes": yes, "No": -1.0}]}}]}),
            )
        });
        let (url, calls) = mock(answer);
        let scorer = RemoteScorer::new(
            RemoteSettings {
                prompts_per_request: 1,
                ..settings(vec![url])
            },
            None,
        )
        .expect("scorer");
        let scores = scorer.score(&[request(), request()]).expect("scores");
        assert_eq!(calls.load(Ordering::SeqCst), 8);
        for s in &scores {
            let high: Vec<&str> = s
                .scores
                .iter()
                .filter(|p| p.p_yes > 0.5)
                .map(|p| p.id.as_str())
                .collect();
            assert_eq!(high, ["harassment"]);
        }
    }

    #[test]
    fn a_missing_yes_or_no_is_an_error_not_a_zero() {
        let (url, _) = mock(Arc::new(|_: &Value| {
            (
                200,
                json!({"choices": [{"index": 0, "logprobs": {"top_logprobs": [{"Yes": -0.1}]}}]}),
            )
        }));
        let scorer = RemoteScorer::new(settings(vec![url]), None).expect("scorer");
        let err = scorer.score(&[request()]).expect_err("refused").to_string();
        assert!(
            err.contains("\"No\" is not among the top 20 logprobs"),
            "{err}"
        );
    }

    #[test]
    fn failures_move_to_the_next_endpoint_and_open_the_circuit() {
        let (bad, bad_calls) = mock(Arc::new(|_: &Value| (503, json!({"error": "overloaded"}))));
        let (good, good_calls) = mock(logprobs(-1.0, -1.0));
        let scorer = RemoteScorer::new(
            RemoteSettings {
                breaker_failures: 1,
                ..settings(vec![bad, good])
            },
            None,
        )
        .expect("scorer");
        for _ in 0..4 {
            let s = scorer.score(&[request()]).expect("scores");
            assert!((s[0].scores[0].p_yes - 0.5).abs() < 1e-12);
        }
        assert_eq!(
            bad_calls.load(Ordering::SeqCst),
            1,
            "rested after one failure"
        );
        assert_eq!(good_calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_bad_request_is_not_retried_and_total_failure_says_so() {
        let (url, calls) = mock(Arc::new(|_: &Value| {
            (400, json!({"error": "unknown model"}))
        }));
        let scorer = RemoteScorer::new(settings(vec![url]), None).expect("scorer");
        let err = scorer.score(&[request()]).expect_err("refused").to_string();
        assert!(
            err.contains("HTTP 400") && err.contains("unknown model"),
            "{err}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let (down, calls) = mock(Arc::new(|_: &Value| (500, json!({}))));
        let scorer = RemoteScorer::new(
            RemoteSettings {
                breaker_failures: 10,
                ..settings(vec![down])
            },
            None,
        )
        .expect("scorer");
        let err = scorer.score(&[request()]).expect_err("refused").to_string();
        assert!(err.contains("gave up after 3 tries"), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(RemoteScorer::new(settings(Vec::new()), None).is_err());
        let token_ids = RemoteSettings {
            prompt_format: PromptFormat::TokenIds,
            ..settings(vec!["http://127.0.0.1:9".into()])
        };
        let e = RemoteScorer::new(token_ids, None)
            .err()
            .expect("no tokenizer");
        assert!(e.to_string().contains("tokenizer"), "{e}");
    }
}
