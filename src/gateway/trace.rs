//! Traces on the request path: one span per exchange (a child of the client's W3C
//! `traceparent`, when it sends one) with a child span per check and for the upstream call,
//! whose context goes upstream as the new `traceparent`. Spans carry the profile, actions,
//! violated categories and error codes, and scores only where `[proxy] reveal = "scores"`;
//! never content, headers or credentials.

use hyper::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;

use super::decision::Decision;

/// One exchange's span, or nothing when tracing is off. Clones share the span; it ends when
/// the last clone goes (a streamed answer keeps it open to its end).
#[derive(Clone, Default)]
pub struct ExchangeTrace {
    span: Option<(SdkTracer, Context)>,
    reveal_scores: bool,
}

/// A child span of the exchange: a check or the upstream call; it ends when dropped.
pub struct ChildSpan(Option<Context>);

impl ExchangeTrace {
    /// Starts the exchange's span under the client's `traceparent` (if any); `attributes`
    /// describe the request and are only built when tracing is on.
    pub fn start(
        tracer: Option<&SdkTracer>,
        headers: &HeaderMap,
        attributes: impl FnOnce() -> Vec<KeyValue>,
        reveal_scores: bool,
    ) -> Self {
        let Some(tracer) = tracer else {
            return Self::default();
        };
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let span = tracer
            .span_builder("shieldgate.exchange")
            .with_kind(SpanKind::Server)
            .with_attributes(attributes())
            .start_with_context(tracer, &parent);
        Self {
            span: Some((tracer.clone(), parent.with_span(span))),
            reveal_scores,
        }
    }

    /// Adds attributes to the exchange's span.
    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        if let Some((_, cx)) = &self.span {
            cx.span().set_attributes(attributes);
        }
    }

    /// Starts a child span.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> ChildSpan {
        ChildSpan(self.span.as_ref().map(|(tracer, cx)| {
            let span = tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(tracer, cx);
            cx.with_span(span)
        }))
    }

    /// Records a check's outcome on its span and, per direction, on the exchange's.
    pub fn record_check(&self, span: &ChildSpan, decision: &Decision) {
        if self.span.is_none() {
            return;
        }
        let direction = decision.direction.as_str();
        let action = decision.disposition.as_str();
        let mut attributes = vec![
            KeyValue::new("shieldgate.direction", direction),
            KeyValue::new("shieldgate.profile", decision.profile.clone()),
            KeyValue::new("shieldgate.action", action),
            KeyValue::new(
                "shieldgate.categories",
                decision
                    .categories
                    .iter()
                    .filter(|c| c.violated)
                    .map(|c| c.id.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ];
        if let Some(error) = decision.evaluation_error {
            attributes.push(KeyValue::new("shieldgate.error", error.error_type()));
        }
        if let Some(turns) = decision.context_turns {
            attributes.push(KeyValue::new("shieldgate.context_turns", turns as i64));
        }
        if self.reveal_scores {
            for c in &decision.categories {
                let key = format!("shieldgate.score.{}", c.id);
                attributes.push(KeyValue::new(key, c.p_yes));
            }
        }
        span.set(attributes);
        self.set([KeyValue::new(
            format!("shieldgate.{direction}.action"),
            action,
        )]);
    }
}

impl ChildSpan {
    /// Adds attributes.
    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attributes(attributes);
        }
    }

    /// Marks the span failed with an error code.
    pub fn fail(&self, error_type: &'static str) {
        if let Some(cx) = &self.0 {
            cx.span()
                .set_attribute(KeyValue::new("error.type", error_type));
            cx.span().set_status(Status::error(error_type));
        }
    }

    /// Sets `traceparent` (and `tracestate`) in `headers` to this span, replacing the
    /// client's; without tracing the client's go upstream untouched.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(cx) = &self.0 {
            TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
        }
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}
