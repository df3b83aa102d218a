//! One moderated exchange on an adapter's path: read and parse the request, check the input
//! and forward it (in turn, or side by side), check the response (held whole in `buffer`
//! mode, relayed and scored afterwards in `audit` mode) and answer in the protocol's own shape.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use crate::config::{BadRequest, FailMode, OutputMode};

use super::adapters::{Adapter, Block, Conversation, StreamCollector};
use super::body::{
    channel, collect, full, json_response, pass_through, read_json_request, relay, Body,
    ChannelSender, CollectError,
};
use super::check::{self, CheckInput};
use super::decision::{Decision, Direction, Disposition};
use super::error::ApiError;
use super::headers::{annotate, Annotation, REQUEST_ID};
use super::profiles::{Profile, Selector};
use super::sse::Parser;
use super::upstream::strip_hop_by_hop;
use super::{Gateway, Settings};

/// What the steps of one exchange share.
#[derive(Clone)]
struct Exchange {
    gw: Arc<Gateway>,
    adapter: &'static dyn Adapter,
    settings: Arc<Settings>,
    profile: Arc<Profile>,
    request_id: String,
}

/// Handles a POST on an adapter's path.
pub async fn handle(
    gw: Arc<Gateway>,
    adapter: &'static dyn Adapter,
    req: Request<Incoming>,
    request_id: String,
) -> Response<Body> {
    let settings = gw.settings();
    let (mut parts, body) = req.into_parts();
    let profile = settings
        .profiles
        .select(&Selector {
            path: parts.uri.path(),
            headers: &parts.headers,
            tenant_header: &settings.proxy.tenant_header,
        })
        .clone();
    let ex = Exchange {
        gw,
        adapter,
        settings,
        profile,
        request_id,
    };
    let proxy = &ex.settings.proxy;
    let bytes = match read_json_request(
        &parts.headers,
        body,
        ex.gw.max_body_bytes,
        ex.gw.client_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return ex.error(e),
    };
    let parsed = ex.adapter.request_conversation(&bytes, &proxy.scan);
    let mut decisions = Vec::new();
    let mut input = None;
    let conversation = match parsed {
        Ok(c) => {
            if proxy.input_check {
                input = Some(CheckInput {
                    direction: Direction::Input,
                    profile: &ex.profile,
                    texts: c.parts.iter().map(|p| (p.clone(), None)).collect(),
                    fail: proxy.on_input_error,
                    unscanned: c.unscanned.clone(),
                });
            }
            c
        }
        Err(message) if proxy.on_bad_request == BadRequest::Reject => {
            return ex.error(ApiError::invalid(message))
        }
        Err(message) => {
            tracing::info!(request_id = %ex.request_id, %message, "forwarding an unparsable request unscanned");
            let mut d = Decision::failed(
                Direction::Input,
                &ex.profile,
                "unparsable_request",
                FailMode::Open,
            );
            d.unscanned.push("the whole request".into());
            decisions.push(d);
            Conversation::default()
        }
    };
    let verdict = async {
        match input {
            Some(input) => {
                Some(check::run(&ex.gw, input, &ex.request_id, adapter.protocol()).await)
            }
            None => None,
        }
    };
    let Some(upstream) = &ex.gw.upstream else {
        if let Some(d) = verdict.await.filter(Decision::stops) {
            return ex.stopped(&d);
        }
        return ex.error(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "no_upstream",
            "this gateway has no [upstream] configured; only /v1/moderations is served",
        ));
    };
    if proxy.output_mode != OutputMode::Off {
        // The output check reads the body: ask for it uncompressed.
        parts.headers.remove(ACCEPT_ENCODING);
    }
    let metrics = &ex.gw.hot_metrics;
    let send = async {
        let started = Instant::now();
        let sent = upstream.send(parts, bytes).await;
        if let Ok(r) = &sent {
            metrics.observe_upstream(r.status(), started.elapsed().as_secs_f64());
        }
        sent
    };
    let (input, sent) = match check_and_send(verdict, send, proxy.parallel_input_check).await {
        Ok(done) => done,
        Err(stopping) => return ex.stopped(&stopping),
    };
    decisions.extend(input);
    let response = match sent {
        Ok(r) => r,
        Err(e) => return ex.error(e.into()),
    };
    let (mut head, upstream_body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    // A length belongs to a body, not to a head: the body sent below may be rewritten (a block,
    // an end of stream cut short), and hyper writes the length of whatever body it sends (an
    // upstream body relayed unchanged keeps its exact length through its size hint).
    head.headers.remove(CONTENT_LENGTH);
    let idle = upstream.idle_timeout;
    let refs: Vec<&Decision> = decisions.iter().collect();
    if !head.status.is_success() || proxy.output_mode == OutputMode::Off {
        let body = pass_through(upstream_body, idle, Bytes::new());
        return ex.annotated(Response::from_parts(head, body), &refs);
    }
    let is_stream = head
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if proxy.output_mode == OutputMode::Audit {
        let body = ex.audit(upstream_body, is_stream, conversation.prompt, idle);
        return ex.annotated(Response::from_parts(head, body), &refs);
    }
    if is_stream && proxy.output_mode == OutputMode::Incremental {
        let body = ex.incremental(upstream_body, conversation.prompt, idle);
        return ex.annotated(Response::from_parts(head, body), &refs);
    }
    let mut upstream_body = upstream_body;
    let bytes = match collect(&mut upstream_body, proxy.max_response_bytes, idle).await {
        Ok(b) => b,
        Err(CollectError::TooLarge(prefix)) => {
            let d = ex.output_failed("response_too_large");
            if d.disposition == Disposition::Unavailable {
                return ex.unavailable(&d);
            }
            decisions.push(d);
            let refs: Vec<&Decision> = decisions.iter().collect();
            let body = pass_through(upstream_body, idle, prefix);
            return ex.annotated(Response::from_parts(head, body), &refs);
        }
        Err(CollectError::Failed) => {
            return ex.error(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                "the upstream's response broke off before it was complete",
            ))
        }
        Err(CollectError::Stalled) => {
            return ex.error(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_stalled",
                format!(
                    "the upstream's response paused for more than {} ms",
                    idle.as_millis()
                ),
            ))
        }
    };
    let Outputs { texts, collector } = read_outputs(ex.adapter, &bytes, is_stream);
    let output = match texts {
        Some(outputs) => {
            let input = CheckInput {
                direction: Direction::Output,
                profile: &ex.profile,
                texts: outputs
                    .into_iter()
                    .map(|o| (conversation.prompt.clone(), Some(o)))
                    .collect(),
                fail: proxy.on_output_error,
                unscanned: Vec::new(),
            };
            check::run(&ex.gw, input, &ex.request_id, adapter.protocol()).await
        }
        None => ex.output_failed("unparsable_response"),
    };
    let body = match output.disposition {
        Disposition::Unavailable => return ex.unavailable(&output),
        Disposition::Block => {
            let block = ex.block(&output);
            match collector {
                Some(c) => full(c.blocked_stream(&output.parts_blocked, &block)),
                // Texts were read only from bodies a `Value` accepts (see
                // `Adapter::response_outputs`); were one refused, nothing of it is sent.
                None => match serde_json::from_slice::<Value>(&bytes) {
                    Ok(mut v) => {
                        ex.adapter
                            .block_outputs(&mut v, &output.parts_blocked, &block);
                        full(v.to_string())
                    }
                    Err(_) => {
                        return ex.error(ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_failed",
                            "the upstream's answer was withheld and cannot be rewritten",
                        ))
                    }
                },
            }
        }
        Disposition::Pass | Disposition::Flag => full(bytes),
    };
    decisions.push(output);
    let refs: Vec<&Decision> = decisions.iter().collect();
    ex.annotated(Response::from_parts(head, body), &refs)
}

/// Runs the input check (`None`: nothing to check) and the upstream call: one after the
/// other, or side by side when `parallel` (the answer then waits for the verdict). A verdict
/// that stops the request comes back as the error, and the call is dropped (cancelled) or
/// never made.
async fn check_and_send<R>(
    verdict: impl Future<Output = Option<Decision>>,
    send: impl Future<Output = R>,
    parallel: bool,
) -> Result<(Option<Decision>, R), Box<Decision>> {
    let stop = |d: Option<Decision>| match d {
        Some(d) if d.stops() => Err(Box::new(d)),
        d => Ok(d),
    };
    if !parallel {
        let d = stop(verdict.await)?;
        return Ok((d, send.await));
    }
    let mut verdict = pin!(verdict);
    let mut send = pin!(send);
    tokio::select! {
        d = &mut verdict => {
            let d = stop(d)?;
            Ok((d, send.await))
        }
        sent = &mut send => Ok((stop(verdict.await)?, sent)),
    }
}

/// A whole response as the output check sees it.
struct Outputs {
    /// One text per choice; `None` when the body is not what the protocol promises.
    texts: Option<Vec<String>>,
    /// The stream's collector (streamed responses).
    collector: Option<Box<dyn StreamCollector>>,
}

fn read_outputs(adapter: &dyn Adapter, bytes: &[u8], is_stream: bool) -> Outputs {
    if is_stream {
        let mut collector = adapter.collector();
        let mut parser = Parser::new();
        let mut events = parser.feed(bytes);
        events.extend(parser.finish());
        for event in &events {
            collector.event(event);
        }
        Outputs {
            texts: Some(collector.outputs()),
            collector: Some(collector),
        }
    } else {
        Outputs {
            texts: adapter.response_outputs(bytes),
            collector: None,
        }
    }
}

/// What an audited response accumulates while it is relayed.
struct AuditState {
    parser: Parser,
    collector: Box<dyn StreamCollector>,
    json: Vec<u8>,
    overflow: bool,
}

impl Exchange {
    fn block<'a>(&'a self, decision: &'a Decision) -> Block<'a> {
        Block {
            decision,
            reveal: self.settings.proxy.reveal,
            replacement: &self.settings.proxy.replacement_text,
        }
    }

    /// An error in the protocol's envelope.
    fn error(&self, e: ApiError) -> Response<Body> {
        self.gw.metrics.errors.with_label_values(&[e.code]).inc();
        tracing::info!(request_id = %self.request_id, code = e.code, status = e.status.as_u16(), "request refused");
        let body = self.adapter.error(e.status, e.code, &e.message);
        self.annotated(json_response(e.status, &body), &[])
    }

    /// The answer to a request its input check stopped: the block in the protocol's shape,
    /// or the fail-closed error.
    fn stopped(&self, decision: &Decision) -> Response<Body> {
        if decision.disposition == Disposition::Unavailable {
            return self.unavailable(decision);
        }
        let body = self.adapter.input_blocked(&self.block(decision));
        self.annotated(json_response(StatusCode::BAD_REQUEST, &body), &[decision])
    }

    /// The fail-closed answer: 429 when the scorer's queue is full, 503 otherwise.
    fn unavailable(&self, decision: &Decision) -> Response<Body> {
        let full_queue = decision.evaluation_error.as_deref() == Some("queue_full");
        let status = if full_queue {
            StatusCode::TOO_MANY_REQUESTS
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let message = format!(
            "moderation is unavailable ({}); retry shortly",
            decision.evaluation_error.as_deref().unwrap_or("unknown")
        );
        let body = self
            .adapter
            .error(status, "moderation_unavailable", &message);
        let mut response = self.annotated(json_response(status, &body), &[decision]);
        response
            .headers_mut()
            .insert(RETRY_AFTER, hyper::header::HeaderValue::from_static("1"));
        response
    }

    /// A failed output check, recorded like any other.
    fn output_failed(&self, error: &str) -> Decision {
        let d = Decision::failed(
            Direction::Output,
            &self.profile,
            error,
            self.settings.proxy.on_output_error,
        );
        check::record(&self.gw, &d, &self.request_id, self.adapter.protocol(), &[]);
        d
    }

    fn annotated(&self, mut response: Response<Body>, decisions: &[&Decision]) -> Response<Body> {
        let headers = response.headers_mut();
        if decisions.is_empty() {
            if let Ok(v) = self.request_id.parse() {
                headers.insert(REQUEST_ID, v);
            }
            return response;
        }
        annotate(
            headers,
            &Annotation {
                request_id: &self.request_id,
                policy_version: &self.settings.profiles.version,
                decisions,
                reveal: self.settings.proxy.reveal,
            },
        );
        response
    }

    /// Relays a stream as it is scored; see [`OutputMode::Incremental`].
    fn incremental(&self, upstream: Incoming, prompt: String, idle: Duration) -> Body {
        let (tx, body) = channel(16);
        let ex = self.clone();
        tokio::spawn(async move {
            if let Err(e) = ex.run_incremental(upstream, &prompt, idle, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        body
    }

    async fn run_incremental(
        &self,
        mut upstream: Incoming,
        prompt: &str,
        idle: Duration,
        tx: &ChannelSender,
    ) -> Result<(), &'static str> {
        let every = self.settings.proxy.incremental_chars;
        let mut scoring = (Parser::new(), self.adapter.collector());
        let mut released = (Parser::new(), self.adapter.collector());
        let mut held: Vec<u8> = Vec::new();
        let (mut total, mut sent, mut checked) = (0u64, 0u64, 0usize);
        loop {
            let done = match tokio::time::timeout(idle, upstream.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len() as u64;
                        held.extend_from_slice(&data);
                        for event in scoring.0.feed(&data) {
                            scoring.1.event(&event);
                        }
                    }
                    false
                }
                Ok(None) => {
                    if let Some(event) = scoring.0.finish() {
                        scoring.1.event(&event);
                    }
                    true
                }
                Ok(Some(Err(_))) => return Err("the upstream stream broke off"),
                Err(_) => return Err("the upstream stream stalled"),
            };
            let outputs = scoring.1.outputs();
            let length: usize = outputs.iter().map(String::len).sum();
            if !done && length < checked + every {
                continue;
            }
            if length > checked || (done && checked == 0) {
                checked = length;
                let input = CheckInput {
                    direction: Direction::Output,
                    profile: &self.profile,
                    texts: outputs
                        .into_iter()
                        .map(|o| (prompt.to_string(), Some(o)))
                        .collect(),
                    fail: self.settings.proxy.on_output_error,
                    unscanned: Vec::new(),
                };
                let d =
                    check::run(&self.gw, input, &self.request_id, self.adapter.protocol()).await;
                if d.stops() {
                    let block = self.block(&d);
                    let end = if sent == 0 {
                        scoring.1.blocked_stream(&d.parts_blocked, &block)
                    } else {
                        released.1.terminate(&block)
                    };
                    let _ = tx.send(Ok(Bytes::from(end))).await;
                    return Ok(());
                }
            }
            let upto = if done {
                total
            } else {
                scoring.0.complete_through()
            };
            if upto > sent {
                let release: Vec<u8> = held.drain(..(upto - sent) as usize).collect();
                for event in released.0.feed(&release) {
                    released.1.event(&event);
                }
                sent = upto;
                if tx.send(Ok(Bytes::from(release))).await.is_err() {
                    return Ok(());
                }
            }
            if done {
                return Ok(());
            }
        }
    }

    /// Relays the response at once and scores it when it is complete (record only).
    fn audit(&self, upstream: Incoming, is_stream: bool, prompt: String, idle: Duration) -> Body {
        let limit = self.settings.proxy.max_response_bytes;
        let state = Arc::new(Mutex::new(AuditState {
            parser: Parser::new(),
            collector: self.adapter.collector(),
            json: Vec::new(),
            overflow: false,
        }));
        let tap_state = state.clone();
        let tap = move |data: &Bytes| {
            let mut s = tap_state.lock().unwrap_or_else(|e| e.into_inner());
            if is_stream {
                for event in s.parser.feed(data) {
                    s.collector.event(&event);
                }
            } else if s.json.len() + data.len() <= limit {
                s.json.extend_from_slice(data);
            } else {
                s.overflow = true;
            }
        };
        let gw = self.gw.clone();
        let profile = self.profile.clone();
        let request_id = self.request_id.clone();
        let adapter = self.adapter;
        let fail = self.settings.proxy.on_output_error;
        let done = move |end: super::body::RelayEnd| {
            if end != super::body::RelayEnd::Complete {
                return;
            }
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let outputs = if is_stream {
                if let Some(event) = s.parser.finish() {
                    s.collector.event(&event);
                }
                Some(s.collector.outputs())
            } else if s.overflow {
                None
            } else {
                adapter.response_outputs(&s.json)
            };
            drop(s);
            tokio::spawn(async move {
                let Some(outputs) = outputs else {
                    let d =
                        Decision::failed(Direction::Output, &profile, "unparsable_response", fail);
                    check::record(&gw, &d, &request_id, adapter.protocol(), &[]);
                    return;
                };
                let input = CheckInput {
                    direction: Direction::Output,
                    profile: &profile,
                    texts: outputs
                        .into_iter()
                        .map(|o| (prompt.clone(), Some(o)))
                        .collect(),
                    fail,
                    unscanned: Vec::new(),
                };
                let d = check::run(&gw, input, &request_id, adapter.protocol()).await;
                tracing::info!(request_id = %request_id, action = d.disposition.as_str(), "audited response");
            });
        };
        relay(upstream, idle, tap, done)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    fn decided(disposition: Disposition) -> Option<Decision> {
        let mut d = Decision::bare_block(Direction::Input);
        d.disposition = disposition;
        Some(d)
    }

    /// Sets its flag when dropped.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn in_turn_the_call_waits_for_the_verdict_and_is_not_made_when_stopped() {
        let (give, verdict) = oneshot::channel();
        let called = Arc::new(AtomicBool::new(false));
        let flag = called.clone();
        let send = async move {
            flag.store(true, Ordering::SeqCst);
            "answer"
        };
        let both = tokio::spawn(check_and_send(
            async { verdict.await.expect("verdict") },
            send,
            false,
        ));
        tokio::task::yield_now().await;
        assert!(!called.load(Ordering::SeqCst), "called before the verdict");
        give.send(decided(Disposition::Block)).expect("given");
        let stopped = both.await.expect("task").expect_err("stopped");
        assert_eq!(stopped.disposition, Disposition::Block);
        assert!(!called.load(Ordering::SeqCst), "a blocked request was sent");

        let passed = check_and_send(async { decided(Disposition::Flag) }, async { 7 }, false).await;
        let (d, sent) = passed.expect("let through");
        assert_eq!(
            (d.map(|d| d.disposition), sent),
            (Some(Disposition::Flag), 7)
        );
    }

    #[tokio::test]
    async fn side_by_side_the_call_goes_out_at_once_and_its_answer_waits_for_the_verdict() {
        let (give, verdict) = oneshot::channel();
        let (answered, answer) = oneshot::channel();
        let both = tokio::spawn(check_and_send(
            async { verdict.await.expect("verdict") },
            async move {
                answered.send(()).expect("answered");
                "answer"
            },
            true,
        ));
        tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("the call was made before the verdict")
            .expect("answered");
        tokio::task::yield_now().await;
        assert!(
            !both.is_finished(),
            "the answer did not wait for the verdict"
        );
        give.send(None).expect("given");
        let (d, sent) = both.await.expect("task").expect("let through");
        assert_eq!((d, sent), (None, "answer"));
    }

    #[tokio::test]
    async fn side_by_side_a_stopping_verdict_cancels_the_call_or_drops_its_answer() {
        for unfinished in [true, false] {
            let dropped = Arc::new(AtomicBool::new(false));
            let guard = Dropped(dropped.clone());
            let send = async move {
                let _guard = guard;
                if unfinished {
                    std::future::pending::<()>().await;
                }
            };
            let stopped = check_and_send(
                async {
                    tokio::task::yield_now().await;
                    decided(Disposition::Unavailable)
                },
                send,
                true,
            )
            .await
            .expect_err("stopped");
            assert_eq!(stopped.disposition, Disposition::Unavailable);
            assert!(
                dropped.load(Ordering::SeqCst),
                "the call outlived the verdict"
            );
        }
    }
}
