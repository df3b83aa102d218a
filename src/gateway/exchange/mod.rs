//! One moderated exchange on a protocol's path, as phases: read the request, check the input
//! and forward it (in turn, or side by side), then answer with the upstream's response, checked
//! whole (`buffer`), relayed as it is checked (`incremental`), relayed and scored afterwards
//! (`audit`) or untouched (`off`). Each phase returns `Result<_, Stop>`; [`Exchange::render`]
//! is the one place a [`Stop`] becomes an answer in the client's protocol.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::http::response;
use hyper::{Request, Response, StatusCode};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use serde_json::Value;

use crate::config::{BadRequest, FailMode, OutputMode, PiiAction, Reveal};
use crate::http::body::{
    collect, full, json_response, pass_through, read_json_request, Body, CollectError,
};
use crate::http::upstream::{strip_hop_by_hop, Upstream};
use crate::pii::{Kind, Masker};
use crate::policy::profiles::{Profile, Selector};

use super::check::{self, Asked, CheckInput};
use super::decision::{Decision, Direction, Disposition, PiiFound};
use super::error::{RequestError, Unchecked};
use super::headers::{annotate, Annotation, REQUEST_ID};
use super::pii::{
    count_in_metrics, found_in_outputs, protect_input, protect_output, restore, rewrites_output,
    stream_kinds, StreamRewriter,
};
use super::protocols::sse::Parser;
use super::protocols::{Adapter, Block, Conversation, StreamCollector};
use super::trace::ExchangeTrace;
use super::{Gateway, Settings};

mod relayed;

/// Why an exchange ends before the upstream's answer is relayed.
enum Stop {
    /// The input check blocked the request: the protocol's block shape.
    Blocked(Box<Decision>),
    /// A check gave no verdict and fails closed.
    Unavailable(Box<Decision>),
    /// The gateway answers with an error.
    Error(RequestError),
}

impl From<RequestError> for Stop {
    fn from(e: RequestError) -> Self {
        Self::Error(e)
    }
}

impl Stop {
    /// The stop for a decision that [`Decision::stops`].
    fn checked(decision: Decision) -> Self {
        if decision.disposition == Disposition::Unavailable {
            Self::Unavailable(Box::new(decision))
        } else {
            Self::Blocked(Box::new(decision))
        }
    }
}

/// What the steps of one exchange share.
#[derive(Clone)]
struct Exchange {
    gw: Arc<Gateway>,
    adapter: &'static dyn Adapter,
    settings: Arc<Settings>,
    profile: Arc<Profile>,
    request_id: String,
    trace: ExchangeTrace,
}

/// A request as read: its bytes (masked where the profile masks), what to scan, a decision
/// already made (an unparsable request forwarded unscanned), and the personal data and
/// secrets found.
struct ReadRequest {
    bytes: Bytes,
    conversation: Conversation,
    check: bool,
    unparsable: Option<Decision>,
    pii: BTreeMap<Kind, PiiFound>,
    masker: Masker,
}

/// The upstream's response body and how long it may pause.
struct UpstreamBody {
    body: Incoming,
    idle: Duration,
}

/// Handles a POST on a protocol's path.
pub async fn handle(
    gw: Arc<Gateway>,
    adapter: &'static dyn Adapter,
    req: Request<Incoming>,
    request_id: String,
) -> Response<Body> {
    let settings = gw.settings();
    let (parts, body) = req.into_parts();
    let profile = settings
        .profiles
        .select(&Selector {
            path: parts.uri.path(),
            headers: &parts.headers,
            tenant_header: &settings.proxy.tenant_header,
        })
        .clone();
    let trace = ExchangeTrace::start(
        gw.tracer(),
        &parts.headers,
        || {
            vec![
                KeyValue::new("http.request.method", parts.method.to_string()),
                KeyValue::new("url.path", parts.uri.path().to_string()),
                KeyValue::new("shieldgate.protocol", adapter.protocol()),
                KeyValue::new("shieldgate.request_id", request_id.clone()),
                KeyValue::new("shieldgate.profile", profile.name.clone()),
            ]
        },
        settings.proxy.reveal == Reveal::Scores,
    );
    let ex = Exchange {
        gw,
        adapter,
        settings,
        profile,
        request_id,
        trace,
    };
    let response = match ex.run(parts, body).await {
        Ok(response) => response,
        Err(stop) => ex.render(stop),
    };
    let status = i64::from(response.status().as_u16());
    ex.trace
        .set([KeyValue::new("http.response.status_code", status)]);
    response
}

impl Exchange {
    async fn run(&self, mut parts: Parts, body: Incoming) -> Result<Response<Body>, Stop> {
        let mut request = self.read(&parts.headers, body).await?;
        let Some(upstream) = &self.gw.upstream else {
            return match self.check_input(&request).await {
                Some(d) if d.stops() => Err(Stop::checked(d)),
                _ => Err(RequestError::NoUpstream.into()),
            };
        };
        if self.settings.proxy.output_mode != OutputMode::Off
            || rewrites_output(&self.profile, &request.masker)
        {
            // The output check or masking reads the body: ask for it uncompressed.
            parts.headers.remove(ACCEPT_ENCODING);
        }
        let (decisions, response) = self.forward(upstream, parts, &request).await?;
        let (mut head, body) = response.into_parts();
        strip_hop_by_hop(&mut head.headers);
        // A length belongs to a body, not to a head: the body sent may be rewritten (a block,
        // a stream cut short), and hyper writes the length of whatever body it sends (a body
        // relayed unchanged keeps its exact length through its size hint).
        head.headers.remove(CONTENT_LENGTH);
        let upstream_body = UpstreamBody {
            body,
            idle: upstream.idle_timeout,
        };
        let masker = std::mem::take(&mut request.masker);
        let prompt = &Asked::of(&request.conversation, self.settings.proxy.context_turns);
        self.answer(head, upstream_body, prompt, decisions, masker)
            .await
    }

    /// Reads the request and what to scan in it.
    async fn read(&self, headers: &hyper::HeaderMap, body: Incoming) -> Result<ReadRequest, Stop> {
        let proxy = &self.settings.proxy;
        let bytes = read_json_request(
            headers,
            body,
            self.gw.max_body_bytes,
            self.gw.client_timeout,
        )
        .await
        .map_err(RequestError::from)?;
        match self.adapter.request_conversation(&bytes, &proxy.scan) {
            Ok(conversation) => {
                let protected = protect_input(
                    &self.gw,
                    &self.profile,
                    self.adapter,
                    &proxy.scan,
                    bytes,
                    conversation,
                    &self.request_id,
                )?;
                Ok(ReadRequest {
                    bytes: protected.bytes,
                    conversation: protected.conversation,
                    check: proxy.input_check,
                    unparsable: None,
                    pii: protected.found,
                    masker: protected.masker,
                })
            }
            Err(message) if proxy.on_bad_request == BadRequest::Reject => {
                Err(RequestError::InvalidRequest(message).into())
            }
            // Unread, its personal data could be neither masked nor refused.
            Err(message)
                if self
                    .profile
                    .pii_input
                    .values()
                    .any(|a| *a != PiiAction::Flag) =>
            {
                Err(RequestError::InvalidRequest(format!(
                    "{message}; this profile masks or blocks personal data, so a request it \
                     cannot read is not forwarded"
                ))
                .into())
            }
            Err(message) => {
                tracing::info!(request_id = %self.request_id, %message, "forwarding an unparsable request unscanned");
                let mut d = Decision::failed(
                    Direction::Input,
                    &self.profile,
                    Unchecked::UnparsableRequest,
                    FailMode::Open,
                );
                d.unscanned.push("the whole request".into());
                check::record(&self.gw, &d, &self.request_id, self.adapter.protocol(), &[]);
                Ok(ReadRequest {
                    bytes,
                    conversation: Conversation::default(),
                    check: false,
                    unparsable: Some(d),
                    pii: BTreeMap::new(),
                    masker: Masker::default(),
                })
            }
        }
    }

    /// The input check, unless there is nothing to check.
    async fn check_input(&self, request: &ReadRequest) -> Option<Decision> {
        if !request.check {
            return None;
        }
        let input = CheckInput {
            direction: Direction::Input,
            profile: &self.profile,
            requests: check::input_requests(
                &self.profile,
                &request.conversation,
                self.settings.proxy.context_turns,
            ),
            fail: self.settings.proxy.on_input_error,
            unscanned: request.conversation.unscanned.clone(),
            pii: request.pii.clone(),
            trace: &self.trace,
        };
        Some(check::run(&self.gw, input, &self.request_id, self.adapter.protocol()).await)
    }

    /// Checks the input and sends the request upstream (in turn, or side by side).
    async fn forward(
        &self,
        upstream: &Upstream,
        mut parts: Parts,
        request: &ReadRequest,
    ) -> Result<(Vec<Decision>, Response<Incoming>), Stop> {
        let metrics = &self.gw.hot_metrics;
        let send = async {
            let span = self.trace.child("shieldgate.upstream", SpanKind::Client);
            span.inject(&mut parts.headers);
            let started = Instant::now();
            let sent = upstream.send(parts, request.bytes.clone()).await;
            match &sent {
                Ok(r) => {
                    metrics.observe_upstream(r.status(), started.elapsed().as_secs_f64());
                    let status = i64::from(r.status().as_u16());
                    span.set([KeyValue::new("http.response.status_code", status)]);
                }
                Err(e) => span.fail(e.error_type()),
            }
            sent
        };
        let parallel = self.settings.proxy.parallel_input_check;
        let (input, sent) = check_and_send(self.check_input(request), send, parallel)
            .await
            .map_err(|d| Stop::checked(*d))?;
        // Without an input check, what was found still gets its decision (log, headers).
        let input = input.or_else(|| {
            (!request.pii.is_empty()).then(|| {
                let d = Decision::pii_only(Direction::Input, &self.profile, request.pii.clone());
                check::record(&self.gw, &d, &self.request_id, self.adapter.protocol(), &[]);
                d
            })
        });
        let decisions = request.unparsable.iter().cloned().chain(input).collect();
        Ok((decisions, sent.map_err(RequestError::from)?))
    }

    /// Answers with the upstream's response, as the output mode says; where the profile
    /// masks the answer's personal data or restores the request's, in every mode.
    async fn answer(
        &self,
        head: response::Parts,
        upstream: UpstreamBody,
        prompt: &Asked,
        decisions: Vec<Decision>,
        mut masker: Masker,
    ) -> Result<Response<Body>, Stop> {
        let mode = self.settings.proxy.output_mode;
        let rewrite = rewrites_output(&self.profile, &masker);
        let UpstreamBody { body, idle } = upstream;
        if !head.status.is_success() || (mode == OutputMode::Off && !rewrite) {
            let body = pass_through(body, idle, Bytes::new());
            return Ok(self.annotated(Response::from_parts(head, body), &decisions));
        }
        masker.set_kinds(&stream_kinds(&self.profile));
        let is_stream = head
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let upstream = UpstreamBody { body, idle };
        let body = match (mode, is_stream) {
            (OutputMode::Off | OutputMode::Audit, false) if rewrite => {
                return self.held(head, upstream, prompt, decisions, masker).await;
            }
            (OutputMode::Off | OutputMode::Audit, _) => {
                let check = (mode == OutputMode::Audit).then(|| prompt.clone());
                let masker = rewrite.then_some(masker);
                self.audit(upstream, is_stream, check, masker)
            }
            (OutputMode::Incremental, true) => {
                self.incremental(upstream, prompt.clone(), rewrite.then_some(masker))
            }
            _ => {
                return self
                    .buffered(head, upstream, is_stream, prompt, decisions, masker)
                    .await;
            }
        };
        Ok(self.annotated(Response::from_parts(head, body), &decisions))
    }

    /// A JSON answer held whole in a mode that does not wait for its check (`audit`, `off`),
    /// so that its personal data is masked (and the request's restored) before it is relayed;
    /// in `audit` mode it is checked afterwards.
    async fn held(
        &self,
        head: response::Parts,
        upstream: UpstreamBody,
        prompt: &Asked,
        mut decisions: Vec<Decision>,
        mut masker: Masker,
    ) -> Result<Response<Body>, Stop> {
        let bytes = match self.collect_whole(upstream, &mut decisions).await? {
            Ok(bytes) => bytes,
            Err(body) => return Ok(self.annotated(Response::from_parts(head, body), &decisions)),
        };
        let (bytes, pii) = protect_output(
            &self.gw,
            &self.profile,
            self.adapter,
            bytes,
            &mut masker,
            false,
        );
        if self.settings.proxy.output_mode == OutputMode::Audit {
            let outputs = self
                .adapter
                .response_outputs(&bytes)
                .ok_or(Unchecked::UnparsableResponse);
            self.check_later(prompt.clone(), outputs, pii);
        } else if !pii.is_empty() {
            let d = Decision::pii_only(Direction::Output, &self.profile, as_masked(pii));
            check::record(&self.gw, &d, &self.request_id, self.adapter.protocol(), &[]);
            decisions.push(d);
        }
        let body = full(restore(self.adapter, bytes, &masker));
        Ok(self.annotated(Response::from_parts(head, body), &decisions))
    }

    /// The whole upstream body; or, when it is larger than the limit and the output check
    /// fails open, the body to relay as it is (the decision that says so added to
    /// `decisions`).
    async fn collect_whole(
        &self,
        upstream: UpstreamBody,
        decisions: &mut Vec<Decision>,
    ) -> Result<Result<Bytes, Body>, Stop> {
        let UpstreamBody { mut body, idle } = upstream;
        match collect(&mut body, self.settings.proxy.max_response_bytes, idle).await {
            Ok(b) => Ok(Ok(b)),
            Err(CollectError::TooLarge(prefix)) => {
                let d = self.output_failed(Unchecked::ResponseTooLarge);
                if d.stops() {
                    return Err(Stop::checked(d));
                }
                decisions.push(d);
                Ok(Err(pass_through(body, idle, prefix)))
            }
            Err(CollectError::Failed) => Err(RequestError::UpstreamFailed.into()),
            Err(CollectError::Stalled) => {
                Err(RequestError::UpstreamStalled(idle.as_millis()).into())
            }
        }
    }

    /// Holds the whole response, checks it, and relays it or its blocked form.
    async fn buffered(
        &self,
        head: response::Parts,
        upstream: UpstreamBody,
        is_stream: bool,
        prompt: &Asked,
        mut decisions: Vec<Decision>,
        mut masker: Masker,
    ) -> Result<Response<Body>, Stop> {
        let bytes = match self.collect_whole(upstream, &mut decisions).await? {
            Ok(bytes) => bytes,
            Err(body) => return Ok(self.annotated(Response::from_parts(head, body), &decisions)),
        };
        let (shown, texts, pii, collector) = if is_stream {
            // Checked as the upstream wrote it (masked, not restored); relayed rewritten.
            let upstream = read_outputs(self.adapter, &bytes);
            let outputs = upstream.outputs();
            let pii = found_in_outputs(&self.profile, &outputs);
            count_in_metrics(&self.gw, Direction::Output, &pii);
            let texts = masked(&masker, outputs);
            // A block replays the choices it does not withhold as the client would see them.
            let (shown, collector) = match rewrites_output(&self.profile, &masker) {
                true => {
                    let shown = rewrite_stream(self.adapter, &mut masker, &bytes);
                    let collector = read_outputs(self.adapter, &shown);
                    (shown, collector)
                }
                false => (bytes, upstream),
            };
            (shown, Some(texts), pii, Some(collector))
        } else {
            let (bytes, pii) = protect_output(
                &self.gw,
                &self.profile,
                self.adapter,
                bytes,
                &mut masker,
                true,
            );
            let texts = self.adapter.response_outputs(&bytes);
            (
                restore(self.adapter, bytes.clone(), &masker),
                texts,
                pii,
                None,
            )
        };
        let output = match texts {
            Some(texts) => self.check_output(prompt, texts, pii).await,
            None => self.output_failed(Unchecked::UnparsableResponse),
        };
        let body = match output.disposition {
            Disposition::Unavailable => return Err(Stop::checked(output)),
            Disposition::Block => {
                let block = self.block(&output);
                match collector {
                    Some(c) => full(c.blocked_stream(&output.parts_blocked, &block)),
                    // Texts were read only from bodies a `Value` accepts (see
                    // `Adapter::response_outputs`); were one refused, nothing of it is sent.
                    None => {
                        let mut v = serde_json::from_slice::<Value>(&shown)
                            .map_err(|_| RequestError::UpstreamUnrewritable)?;
                        self.adapter
                            .block_outputs(&mut v, &output.parts_blocked, &block);
                        full(v.to_string())
                    }
                }
            }
            Disposition::Pass | Disposition::Flag => full(shown),
        };
        decisions.push(output);
        Ok(self.annotated(Response::from_parts(head, body), &decisions))
    }

    /// Checks answer texts (one per choice) against the prompt; personal data or secrets found
    /// in them whose kind is blocked withhold every choice.
    async fn check_output(
        &self,
        prompt: &Asked,
        texts: Vec<String>,
        pii: BTreeMap<Kind, PiiFound>,
    ) -> Decision {
        let input = CheckInput {
            direction: Direction::Output,
            profile: &self.profile,
            requests: check::output_requests(&self.profile, prompt, texts),
            fail: self.settings.proxy.on_output_error,
            unscanned: Vec::new(),
            pii,
            trace: &self.trace,
        };
        check::run(&self.gw, input, &self.request_id, self.adapter.protocol()).await
    }

    /// The one place a [`Stop`] becomes an answer in the client's protocol.
    fn render(&self, stop: Stop) -> Response<Body> {
        match stop {
            Stop::Blocked(d) => {
                let body = self.adapter.input_blocked(&self.block(&d));
                self.annotated(json_response(StatusCode::BAD_REQUEST, &body), &[*d])
            }
            Stop::Unavailable(d) => {
                let why = d.evaluation_error.unwrap_or(Unchecked::ScoringFailed);
                let response = super::error::respond(
                    &self.gw,
                    self.adapter,
                    &RequestError::ModerationUnavailable(why),
                    &self.request_id,
                );
                self.annotated(response, &[*d])
            }
            Stop::Error(e) => super::error::respond(&self.gw, self.adapter, &e, &self.request_id),
        }
    }

    fn block<'a>(&'a self, decision: &'a Decision) -> Block<'a> {
        Block {
            decision,
            reveal: self.settings.proxy.reveal,
            replacement: &self.settings.proxy.replacement_text,
        }
    }

    /// A failed output check, recorded like any other.
    fn output_failed(&self, why: Unchecked) -> Decision {
        let d = Decision::failed(
            Direction::Output,
            &self.profile,
            why,
            self.settings.proxy.on_output_error,
        );
        check::record(&self.gw, &d, &self.request_id, self.adapter.protocol(), &[]);
        d
    }

    fn annotated(&self, mut response: Response<Body>, decisions: &[Decision]) -> Response<Body> {
        let headers = response.headers_mut();
        if decisions.is_empty() {
            if let Ok(v) = self.request_id.parse() {
                headers.insert(REQUEST_ID, v);
            }
            return response;
        }
        let decisions: Vec<&Decision> = decisions.iter().collect();
        annotate(
            headers,
            &Annotation {
                request_id: &self.request_id,
                policy_version: &self.settings.profiles.version,
                decisions: &decisions,
                reveal: self.settings.proxy.reveal,
            },
        );
        response
    }
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

/// A collector that has read a whole stream.
fn read_outputs(adapter: &dyn Adapter, bytes: &[u8]) -> Box<dyn StreamCollector> {
    let mut collector = adapter.collector();
    let mut parser = Parser::new();
    let mut events = parser.feed(bytes);
    events.extend(parser.finish());
    for event in &events {
        collector.event(event);
    }
    collector
}

/// A whole stream, masked (and the request's placeholders restored).
fn rewrite_stream(adapter: &'static dyn Adapter, masker: &mut Masker, bytes: &[u8]) -> Bytes {
    let mut rewriter = StreamRewriter::new(adapter);
    let mut out = rewriter.feed(masker, bytes);
    out.extend(rewriter.finish(masker));
    Bytes::from(out)
}

/// Answer texts as the output check reads them: masked, the placeholders not restored. The
/// numbering goes on from `masker`'s in a copy, so that a value the check sees cut short (a
/// stream checked as it grows) takes no number from the client's.
fn masked(masker: &Masker, outputs: Vec<String>) -> Vec<String> {
    if masker.kinds().is_empty() {
        return outputs;
    }
    let mut masker = masker.clone();
    outputs
        .into_iter()
        .map(|o| masker.mask(&o).unwrap_or(o))
        .collect()
}

/// What was found where nothing can be withheld (`off` mode): a blocked kind was masked.
fn as_masked(mut pii: BTreeMap<Kind, PiiFound>) -> BTreeMap<Kind, PiiFound> {
    for f in pii.values_mut() {
        if f.action == PiiAction::Block {
            f.action = PiiAction::Mask;
        }
    }
    pii
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
