//! The gateway under test, in process: a scripted scorer, a mock upstream speaking OpenAI and
//! Anthropic (JSON and SSE, written in small pieces), and an HTTP client.

use std::collections::HashMap;

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use shieldgate::config::Config;
use shieldgate::gateway::metrics::Metrics;
use shieldgate::gateway::{admin, route, Gateway};
use shieldgate::http::body::{channel, full, Body};
use shieldgate::http::server::{serve, serve_on, Limits};
use shieldgate::http::workers::Workers;
use shieldgate::scorer::worker::ScorerHandle;
use shieldgate::scorer::{p_yes, PolicyScore, RequestScores, Score, ScoreError, ScoreRequest};
use tokio::sync::watch;

/// A scored text as (user, response).
pub type Seen = (String, Option<String>);

/// Scores 0.9 for a policy whose id is followed by `!` in the judged text (the response when
/// there is one, else the user turn) and 0.1 otherwise; holds every batch while the gate is
/// closed.
pub struct Scripted {
    /// (open, batches started); notified on every change.
    pub gate: Arc<(Mutex<(bool, usize)>, Condvar)>,
    /// The texts seen, as (user, response).
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    /// A scorer with its gate open or closed.
    pub fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            gate: Arc::new((Mutex::new((open, 0)), Condvar::new())),
            seen: Arc::default(),
        })
    }

    /// Lets held batches go.
    pub fn open(&self) {
        let (lock, cvar) = &*self.gate;
        lock.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
        cvar.notify_all();
    }

    /// Waits until `n` batches have started.
    pub fn wait_for_batches(&self, n: usize) {
        let (lock, cvar) = &*self.gate;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        while state.1 < n {
            state = cvar.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The logits the script gives a policy for a text.
    pub fn logits(id: &str, text: &str) -> (f32, f32) {
        if text.contains(&format!("{id}!")) {
            (1.1, -1.1)
        } else {
            (-1.1, 1.1)
        }
    }
}

impl Score for Scripted {
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
        let (lock, cvar) = &*self.gate;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        cvar.notify_all();
        while !state.0 {
            state = cvar.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        drop(state);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        Ok(requests
            .iter()
            .map(|r| {
                seen.push((r.user.clone(), r.response.clone()));
                let judged = r.response.as_deref().unwrap_or(&r.user);
                RequestScores {
                    scores: r
                        .policies
                        .iter()
                        .map(|p| {
                            let (yes, no) = Self::logits(&p.id, judged);
                            PolicyScore {
                                id: p.id.clone(),
                                p_yes: p_yes(yes, no),
                                yes_logit: yes,
                                no_logit: no,
                                tokens: 10,
                            }
                        })
                        .collect(),
                    truncated: None,
                }
            })
            .collect())
    }
}

/// A running gateway.
pub struct TestGateway {
    /// Public address.
    pub addr: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// The shared state.
    pub gw: Arc<Gateway>,
    stop: watch::Sender<bool>,
    /// The public listener's connections run here, as in `serve`.
    _workers: Arc<Workers>,
    /// The runtime everything else runs on.
    pub runtime: tokio::runtime::Runtime,
}

/// The runtime tests run on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts a gateway with `config` (TOML) and a scorer on 127.0.0.1.
pub fn start(config: &str, scorer: Arc<dyn Score>) -> TestGateway {
    let config = Config::parse(config, "test config").expect("test config is valid");
    let runtime = runtime();
    let metrics = Arc::new(Metrics::new());
    let scorer =
        ScorerHandle::spawn(scorer, config.scorer.queue, config.scorer.max_batch).expect("worker");
    let gw = Arc::new(Gateway::new(&config, scorer, "scripted".into(), metrics).expect("gateway"));
    let (stop, rx) = watch::channel(false);
    let limits = Limits::from_server(&config.server);
    let timeout = Duration::from_millis(config.server.request_timeout_ms);
    let workers = Arc::new(Workers::start(config.server.workers, "test-worker").expect("workers"));
    let (addr, admin_addr) = runtime.block_on(async {
        let public = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addrs = (
            public.local_addr().expect("addr"),
            admin_listener.local_addr().expect("addr"),
        );
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let g = gw.clone();
        let on = workers.clone();
        let public_stopped = stopped(rx.clone());
        tokio::spawn(async move {
            serve_on(
                &on,
                public,
                limits,
                move |req| route(g.clone(), req, timeout),
                public_stopped,
            )
            .await
        });
        let g = gw.clone();
        tokio::spawn(serve(
            admin_listener,
            limits,
            move |req| {
                let g = g.clone();
                async move { admin::route(&g, &req).await }
            },
            stopped(rx),
        ));
        addrs
    });
    TestGateway {
        addr,
        admin: admin_addr,
        gw,
        stop,
        _workers: workers,
        runtime,
    }
}

impl TestGateway {
    /// Begins a graceful shutdown.
    pub fn shutdown(&self) {
        self.gw.start_draining();
        let _ = self.stop.send(true);
    }
}

/// A gateway in front of a fresh mock upstream; `extra` is appended to the config.
pub fn gateway(extra: &str) -> (TestGateway, MockUpstream, Arc<Scripted>) {
    gateway_scored(extra, Scripted::new(true))
}

/// [`gateway`] with the scorer's gate closed: every check waits for [`Scripted::open`].
pub fn held_gateway(extra: &str) -> (TestGateway, MockUpstream, Arc<Scripted>) {
    gateway_scored(extra, Scripted::new(false))
}

fn gateway_scored(
    extra: &str,
    scorer: Arc<Scripted>,
) -> (TestGateway, MockUpstream, Arc<Scripted>) {
    let (gw, mock) = gateway_with(extra, scorer.clone());
    (gw, mock, scorer)
}

/// [`gateway`] with any scorer.
pub fn gateway_with(extra: &str, scorer: Arc<dyn Score>) -> (TestGateway, MockUpstream) {
    // The mock runs on its own runtime so that a stalled gateway cannot stall it.
    let mock_runtime = Box::leak(Box::new(runtime()));
    let mock = MockUpstream::start(mock_runtime);
    let config = format!("[upstream]\nurl = \"http://{}\"\n{extra}", mock.addr);
    (start(&config, scorer), mock)
}

/// A chat completion request with a system prompt and one user turn.
pub fn chat(user: &str, stream: bool) -> Value {
    json!({"model": "gpt-x", "stream": stream, "temperature": 0.2,
           "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": user}]})
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

/// Sends one request (JSON body when `body` is an object) and reads the whole answer.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(full(body.into())).expect("request");
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .expect("no hang")
        .expect("response");
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("no hang")
        .map(|c| String::from_utf8_lossy(&c.to_bytes()).into_owned())
        .unwrap_or_else(|e| format!("<body failed: {e}>"));
    Answer {
        status,
        headers,
        body,
    }
}

/// POSTs JSON.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send(addr, "POST", path, &all, body.to_string()).await
}

/// One request as the mock upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Path and query.
    pub path: String,
    /// Headers (lower-case names).
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: String,
}

/// A mock upstream on 127.0.0.1: answers each protocol's path in its shape; the answer text
/// is what follows `say:` in the request (up to the next quote, with `~` turned into `!` so
/// that a clean prompt can ask for a violating answer), "Hello there." otherwise.
/// Headers steer it: `x-mock-status` (answer with this error status), `x-mock-stall-ms`
/// (wait before the head), `x-mock-stall-body-ms` (wait half-way through the body),
/// `x-mock-break` (end the stream abruptly half-way), `x-mock-garbage` (a 200 whose JSON body
/// is not JSON), `x-mock-content-length` (send the body, streamed or not, with a
/// `Content-Length` instead of chunked, as some servers and buffering proxies do).
pub struct MockUpstream {
    /// Its address.
    pub addr: SocketAddr,
    /// Requests received so far.
    pub received: Arc<Mutex<Vec<Received>>>,
}

/// Serves `handler` on a free 127.0.0.1 port on `runtime` until the runtime ends.
pub fn serve_on_loopback<F, Fut>(runtime: &tokio::runtime::Runtime, handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = Limits {
            shutdown_grace: Duration::from_secs(1),
            ..Limits::default()
        };
        tokio::spawn(serve(listener, limits, handler, std::future::pending()));
        addr
    })
}

impl MockUpstream {
    /// Starts the mock on `runtime`.
    pub fn start(runtime: &tokio::runtime::Runtime) -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let addr = serve_on_loopback(runtime, move |req| mock_answer(log.clone(), req));
        Self { addr, received }
    }

    /// Starts the mock behind TLS (HTTP/2 and HTTP/1.1 by ALPN) with a certificate for
    /// `localhost` issued by a fresh CA; returns the CA certificate as PEM.
    pub fn start_tls(runtime: &tokio::runtime::Runtime) -> (Self, String) {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("certificate");
        let private =
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], private)
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let addr =
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                tokio::spawn(async move {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let acceptor = acceptor.clone();
                        let log = log.clone();
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let service = hyper::service::service_fn(move |req| {
                                let log = log.clone();
                                async move {
                                    Ok::<_, std::convert::Infallible>(mock_answer(log, req).await)
                                }
                            });
                            let _ =
                                hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await;
                        });
                    }
                });
                addr
            });
        (Self { addr, received }, ca.pem())
    }

    /// The last request received.
    pub fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
            .expect("the upstream got a request")
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

async fn mock_answer(log: Arc<Mutex<Vec<Received>>>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).into_owned();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            path: path.clone(),
            headers: headers.clone(),
            body: text.clone(),
        });
    if let Some(ms) = headers.get("x-mock-stall-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(status) = headers
        .get("x-mock-status")
        .and_then(|v| v.parse::<u16>().ok())
    {
        let mut r = Response::new(full(
            json!({"error": {"message": "upstream says no", "type": "server_error"}}).to_string(),
        ));
        *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("ct"));
        return r;
    }
    if headers.contains_key("x-mock-garbage") {
        let mut r = Response::new(full("this is not JSON"));
        r.headers_mut()
            .insert("content-type", "application/json".parse().expect("ct"));
        return r;
    }
    let answer = text
        .split_once("say:")
        .map(|(_, rest)| {
            rest.split('"')
                .next()
                .unwrap_or("")
                .trim()
                .replace('~', "!")
        })
        .unwrap_or_else(|| "Hello there.".into());
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let stream = request
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let broken = headers.contains_key("x-mock-break");
    let stall = headers
        .get("x-mock-stall-body-ms")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    let route = parts.uri.path();
    let (content_type, payload) = match (route, stream) {
        ("/v1/models", _) => ("application/json", json!({"object": "list", "data": [{"id": "m"}]}).to_string()),
        (p, false) if p.ends_with("/chat/completions") => ("application/json", json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).to_string()),
        (p, true) if p.ends_with("/chat/completions") => ("text/event-stream", chat_stream(&answer)),
        ("/v1/completions", false) => ("application/json", json!({
            "id": "cmpl-1", "object": "text_completion", "created": 1, "model": "mock",
            "choices": [{"index": 0, "text": answer, "finish_reason": "stop", "logprobs": null}]}).to_string()),
        ("/v1/completions", true) => ("text/event-stream", completion_stream(&answer)),
        ("/v1/responses", false) => ("application/json", json!({
            "id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "mock",
            "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": answer, "annotations": []}]}]}).to_string()),
        ("/v1/responses", true) => ("text/event-stream", responses_stream(&answer)),
        ("/v1/messages", false) => ("application/json", json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "mock",
            "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 5, "output_tokens": 3}}).to_string()),
        ("/v1/messages", true) => ("text/event-stream", messages_stream(&answer)),
        _ => ("application/json", json!({"echo": path}).to_string()),
    };
    let length = payload.len();
    let (tx, body) = channel(4);
    tokio::spawn(async move {
        let bytes = payload.into_bytes();
        let half = bytes.len() / 2;
        for (i, piece) in bytes.chunks(7).enumerate() {
            if broken && i * 7 >= half {
                let _ = tx.send(Err("mock stream broken".into())).await;
                return;
            }
            if let Some(pause) = stall.filter(|_| i * 7 >= half && i * 7 < half + 7) {
                tokio::time::sleep(pause).await;
            }
            if tx.send(Ok(Bytes::copy_from_slice(piece))).await.is_err() {
                return;
            }
            tokio::task::yield_now().await;
        }
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert("content-type", content_type.parse().expect("ct"));
    r.headers_mut()
        .insert("x-upstream", "mock".parse().expect("value"));
    if headers.contains_key("x-mock-content-length") {
        r.headers_mut().insert(
            "content-length",
            length.to_string().parse().expect("length"),
        );
    }
    r
}

fn pieces(answer: &str) -> Vec<String> {
    let chars: Vec<char> = answer.chars().collect();
    chars.chunks(4).map(|c| c.iter().collect()).collect()
}

/// The stream the mock sends for a chat completion.
pub fn chat_stream(answer: &str) -> String {
    let mut out = String::new();
    let chunk = |delta: Value, finish: Value| {
        format!(
            "data: {}\n\n",
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "mock",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        )
    };
    out += &chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    out += ": keep-alive\n\n";
    for p in pieces(answer) {
        out += &chunk(json!({"content": p}), Value::Null);
    }
    out += &chunk(json!({}), json!("stop"));
    out + "data: [DONE]\n\n"
}

fn completion_stream(answer: &str) -> String {
    let mut out = String::new();
    for p in pieces(answer) {
        out += &format!(
            "data: {}\n\n",
            json!({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "mock",
            "choices": [{"index": 0, "text": p, "finish_reason": null, "logprobs": null}]})
        );
    }
    out + "data: [DONE]\n\n"
}

fn responses_stream(answer: &str) -> String {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let response = json!({"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "model": "mock", "output": []});
    let mut out = ev(
        "response.created",
        json!({"type": "response.created", "sequence_number": 0, "response": response}),
    );
    for (i, p) in pieces(answer).into_iter().enumerate() {
        out += &ev(
            "response.output_text.delta",
            json!({"type": "response.output_text.delta", "sequence_number": i + 1,
            "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": p}),
        );
    }
    let mut done = response.clone();
    done["status"] = json!("completed");
    done["output"] = json!([{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": answer, "annotations": []}]}]);
    out + &ev(
        "response.completed",
        json!({"type": "response.completed", "sequence_number": 99, "response": done}),
    )
}

fn messages_stream(answer: &str) -> String {
    let ev = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
        "role": "assistant", "model": "mock", "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 5, "output_tokens": 1}}}),
    );
    out += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    out += &ev("ping", json!({"type": "ping"}));
    for p in pieces(answer) {
        out += &ev(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
        );
    }
    out += &ev(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    );
    out += &ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 3}}),
    );
    out + &ev("message_stop", json!({"type": "message_stop"}))
}
