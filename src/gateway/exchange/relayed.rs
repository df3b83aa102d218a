//! The modes that relay a response as it arrives: `incremental` (a stream relayed as it is
//! checked, cut when a check stops it) and `audit`/`off` (relayed at once, checked afterwards
//! in `audit`), with personal data masked on the way where the profile asks.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::http::body::{channel, relay, Body, ChannelSender, RelayEnd};
use crate::pii::{Kind, Masker};

use super::{as_masked, masked, read_outputs, Exchange, UpstreamBody};
use crate::gateway::check::{self, Asked};
use crate::gateway::decision::{Decision, Direction, PiiFound};
use crate::gateway::error::Unchecked;
use crate::gateway::pii::{count_in_metrics, found_in_outputs, StreamRewriter};
use crate::gateway::protocols::sse::Parser;
use crate::gateway::protocols::StreamCollector;

impl Exchange {
    /// Relays a stream as it is scored; see [`crate::config::OutputMode::Incremental`]. With a masker, what
    /// is relayed is masked (and the request's placeholders restored) on the way.
    pub(super) fn incremental(
        &self,
        upstream: UpstreamBody,
        prompt: Asked,
        masker: Option<Masker>,
    ) -> Body {
        let (tx, body) = channel(16);
        let ex = self.clone();
        tokio::spawn(async move {
            if let Err(e) = ex.run_incremental(upstream, &prompt, masker, &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        body
    }

    async fn run_incremental(
        &self,
        upstream: UpstreamBody,
        prompt: &Asked,
        masker: Option<Masker>,
        tx: &ChannelSender,
    ) -> Result<(), &'static str> {
        let UpstreamBody {
            body: mut upstream,
            idle,
        } = upstream;
        let every = self.settings.proxy.incremental_chars;
        let mut scoring = (Parser::new(), self.adapter.collector());
        let mut released = (Parser::new(), self.adapter.collector());
        let mut rewriting = masker.map(|m| (StreamRewriter::new(self.adapter), m));
        let mut held: Vec<u8> = Vec::new();
        let (mut total, mut sent, mut checked) = (0u64, 0u64, 0usize);
        let mut pii = BTreeMap::new();
        loop {
            let done = match next_frame(&mut upstream, idle).await? {
                Some(data) => {
                    total += data.len() as u64;
                    held.extend_from_slice(&data);
                    for event in scoring.0.feed(&data) {
                        scoring.1.event(&event);
                    }
                    false
                }
                None => {
                    if let Some(event) = scoring.0.finish() {
                        scoring.1.event(&event);
                    }
                    true
                }
            };
            let outputs = scoring.1.outputs();
            let length: usize = outputs.iter().map(String::len).sum();
            if !done && length < checked + every {
                continue;
            }
            if length > checked || (done && checked == 0) {
                checked = length;
                pii = found_in_outputs(&self.profile, &outputs);
                let texts = match &mut rewriting {
                    Some((_, masker)) => masked(masker, outputs),
                    None => outputs,
                };
                let d = self.check_output(prompt, texts, pii.clone()).await;
                if d.stops() {
                    count_in_metrics(&self.gw, Direction::Output, &pii);
                    let block = self.block(&d);
                    let end = if sent > 0 {
                        released.1.terminate(&block)
                    } else if let Some((rewriter, masker)) = &mut rewriting {
                        // The choices not withheld are replayed as the client would see them.
                        let mut shown = rewriter.feed(masker, &held);
                        shown.extend(rewriter.finish(masker));
                        read_outputs(self.adapter, &shown).blocked_stream(&d.parts_blocked, &block)
                    } else {
                        scoring.1.blocked_stream(&d.parts_blocked, &block)
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
                let mut release: Vec<u8> = held.drain(..(upto - sent) as usize).collect();
                if let Some((rewriter, masker)) = &mut rewriting {
                    release = rewriter.feed(masker, &release);
                    if done {
                        release.extend(rewriter.finish(masker));
                    }
                }
                for event in released.0.feed(&release) {
                    released.1.event(&event);
                }
                sent = upto;
                if tx.send(Ok(Bytes::from(release))).await.is_err() {
                    return Ok(());
                }
            }
            if done {
                count_in_metrics(&self.gw, Direction::Output, &pii);
                return Ok(());
            }
        }
    }

    /// Relays the response at once; with `check` (the prompt, in `audit` mode), scores it when
    /// it is complete (record only). With a masker, a stream is masked (and the request's
    /// placeholders restored) on the way, and what was found is recorded.
    pub(super) fn audit(
        &self,
        upstream: UpstreamBody,
        is_stream: bool,
        check: Option<Asked>,
        masker: Option<Masker>,
    ) -> Body {
        let UpstreamBody { body, idle } = upstream;
        let limit = self.settings.proxy.max_response_bytes;
        let state = Arc::new(Mutex::new(AuditState {
            parser: Parser::new(),
            collector: self.adapter.collector(),
            json: Vec::new(),
            overflow: false,
            rewriting: masker.map(|m| (StreamRewriter::new(self.adapter), m)),
        }));
        let tap_state = state.clone();
        let tap = move |data: Bytes| {
            let mut s = tap_state.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut *s;
            if is_stream {
                for event in s.parser.feed(&data) {
                    s.collector.event(&event);
                }
            } else if s.json.len() + data.len() <= limit {
                s.json.extend_from_slice(&data);
            } else {
                s.overflow = true;
            }
            match &mut s.rewriting {
                Some((rewriter, masker)) if is_stream => Bytes::from(rewriter.feed(masker, &data)),
                _ => data,
            }
        };
        let ex = self.clone();
        let done = move |end: RelayEnd| {
            if end != RelayEnd::Complete {
                return Bytes::new();
            }
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut *s;
            let (outputs, rest) = if is_stream {
                if let Some(event) = s.parser.finish() {
                    s.collector.event(&event);
                }
                let rest = match &mut s.rewriting {
                    Some((rewriter, masker)) => Bytes::from(rewriter.finish(masker)),
                    None => Bytes::new(),
                };
                (Ok(s.collector.outputs()), rest)
            } else if s.overflow {
                (Err(Unchecked::ResponseTooLarge), Bytes::new())
            } else {
                let outputs = ex.adapter.response_outputs(&s.json);
                (outputs.ok_or(Unchecked::UnparsableResponse), Bytes::new())
            };
            let pii = match &outputs {
                Ok(outputs) if s.rewriting.is_some() => found_in_outputs(&ex.profile, outputs),
                _ => BTreeMap::new(),
            };
            count_in_metrics(&ex.gw, Direction::Output, &pii);
            let outputs = match (outputs, &mut s.rewriting) {
                (Ok(outputs), Some((_, masker))) => Ok(masked(masker, outputs)),
                (outputs, _) => outputs,
            };
            match check {
                Some(prompt) => ex.check_later(prompt, outputs, pii),
                None if !pii.is_empty() => {
                    let d = Decision::pii_only(Direction::Output, &ex.profile, as_masked(pii));
                    check::record(&ex.gw, &d, &ex.request_id, ex.adapter.protocol(), &[]);
                }
                None => {}
            }
            rest
        };
        relay(body, idle, tap, done)
    }

    /// Checks the answer's texts in the background (record only).
    pub(super) fn check_later(
        &self,
        prompt: Asked,
        outputs: Result<Vec<String>, Unchecked>,
        pii: BTreeMap<Kind, PiiFound>,
    ) {
        let ex = self.clone();
        tokio::spawn(async move {
            let d = match outputs {
                Ok(outputs) => ex.check_output(&prompt, outputs, pii).await,
                Err(why) => ex.output_failed(why),
            };
            tracing::info!(request_id = %ex.request_id, action = d.disposition.as_str(), "audited response");
        });
    }
}

/// The next data of a body (`None` at its end), waiting at most `idle`.
async fn next_frame(body: &mut Incoming, idle: Duration) -> Result<Option<Bytes>, &'static str> {
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(_))) => return Err("the upstream stream broke off"),
            Err(_) => return Err("the upstream stream stalled"),
        }
    }
}

/// What an audited response accumulates while it is relayed.
struct AuditState {
    parser: Parser,
    collector: Box<dyn StreamCollector>,
    json: Vec<u8>,
    overflow: bool,
    /// A stream's masking, where the profile masks or restores.
    rewriting: Option<(StreamRewriter, Masker)>,
}
