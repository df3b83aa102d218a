//! Request-path failures as typed codes: why a check gave no verdict ([`Unchecked`]) and why
//! the gateway answered a request itself ([`RequestError`]). Each has its HTTP status, a
//! stable `error_type()` (the JSON error code, the metric label and the log field) and whose
//! fault it was. docs/metrics.md lists exactly these codes (a test checks it).

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

use crate::http::body::{json_response, Body, BodyError};
use crate::http::upstream::UpstreamError;
use crate::scorer::worker::WorkerError;

use super::protocols::Adapter;
use super::Gateway;

/// Whose fault a failure was (logged with every error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Fault {
    /// The request was unusable.
    Client,
    /// The upstream failed or answered something unusable.
    Upstream,
    /// The gateway itself (its scorer, its configuration, its limits).
    Gateway,
}

/// Why a check could not give a verdict; fail-open or fail-closed applies then.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Unchecked {
    /// The scorer's queue is full.
    QueueFull,
    /// The scorer did not answer within `[scorer] timeout_ms`.
    ScorerTimeout,
    /// The scorer has stopped.
    ScorerStopped,
    /// The scorer failed on this input.
    ScoringFailed,
    /// The request is not in its protocol's shape (forwarded unscanned by `on_bad_request`).
    UnparsableRequest,
    /// The upstream's answer is not in its protocol's shape.
    UnparsableResponse,
    /// The upstream's answer exceeds `[proxy] max_response_bytes`.
    ResponseTooLarge,
}

impl Unchecked {
    /// The stable name.
    pub fn error_type(self) -> &'static str {
        self.into()
    }

    /// The status of the fail-closed answer: 429 when the queue is full (retry later), 503
    /// otherwise.
    pub fn status(self) -> StatusCode {
        match self {
            Self::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Whose fault it was.
    pub fn fault(self) -> Fault {
        match self {
            Self::UnparsableRequest => Fault::Client,
            Self::UnparsableResponse | Self::ResponseTooLarge => Fault::Upstream,
            Self::QueueFull | Self::ScorerTimeout | Self::ScorerStopped | Self::ScoringFailed => {
                Fault::Gateway
            }
        }
    }
}

impl From<&WorkerError> for Unchecked {
    fn from(e: &WorkerError) -> Self {
        match e {
            WorkerError::QueueFull => Self::QueueFull,
            WorkerError::Stopped => Self::ScorerStopped,
            WorkerError::Score(_) => Self::ScoringFailed,
        }
    }
}

/// An error the gateway answers itself, in the client's protocol.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body is not JSON (415).
    #[error("send the body as Content-Type: application/json")]
    UnsupportedMediaType,
    /// The body exceeds `[server] max_body_bytes` (413).
    #[error("the request body exceeds {0} bytes")]
    BodyTooLarge(usize),
    /// The body did not arrive within `[server] client_timeout_ms` (408).
    #[error("the request body took longer than {0} ms to arrive; send it without pauses")]
    RequestBodyTimeout(u128),
    /// The request is malformed (400); the message says how.
    #[error("{0}")]
    InvalidRequest(String),
    /// Nothing is served on this path (404).
    #[error("{0}")]
    NotFound(String),
    /// The path is served, not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The whole request took longer than `[server] request_timeout_ms` (504).
    #[error("the request took longer than {0} ms")]
    RequestTimeout(u128),
    /// A chat path was asked of a gateway without `[upstream]` (502).
    #[error("this gateway has no [upstream] configured; only /v1/moderations is served")]
    NoUpstream,
    /// The upstream client failed before a response head (502, 504 on timeout).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream's body broke off (502).
    #[error("the upstream's response broke off before it was complete")]
    UpstreamFailed,
    /// The upstream's body paused for longer than its idle timeout (504).
    #[error("the upstream's response paused for more than {0} ms")]
    UpstreamStalled(u128),
    /// A withheld answer cannot be rewritten in its protocol's shape (502).
    #[error("the upstream's answer was withheld and cannot be rewritten")]
    UpstreamUnrewritable,
    /// The request carries personal data or secrets of kinds its profile blocks (400); the
    /// kinds are named, never the values.
    #[error("the request contains {0}, which this gateway does not forward; remove it and retry")]
    PiiBlocked(String),
    /// No verdict, and the check fails closed (503, 429 when the queue is full).
    #[error("moderation is unavailable ({}); retry shortly", .0.error_type())]
    ModerationUnavailable(Unchecked),
}

/// Every `error_type()` a [`RequestError`] can have.
pub const REQUEST_ERROR_TYPES: [&str; 16] = [
    "unsupported_media_type",
    "body_too_large",
    "request_body_timeout",
    "invalid_request",
    "not_found",
    "method_not_allowed",
    "request_timeout",
    "no_upstream",
    "upstream_setup",
    "upstream_unreachable",
    "upstream_timeout",
    "upstream_failed",
    "upstream_stalled",
    "upstream_unrewritable",
    "pii_blocked",
    "moderation_unavailable",
];

impl RequestError {
    /// The stable name: the JSON error code, the metric label and the log field.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::RequestBodyTimeout(_) => "request_body_timeout",
            Self::InvalidRequest(_) => "invalid_request",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed(_) => "method_not_allowed",
            Self::RequestTimeout(_) => "request_timeout",
            Self::NoUpstream => "no_upstream",
            Self::Upstream(UpstreamError::Setup(_)) => "upstream_setup",
            Self::Upstream(UpstreamError::Unreachable(_)) => "upstream_unreachable",
            Self::Upstream(UpstreamError::Timeout(_)) => "upstream_timeout",
            Self::UpstreamFailed => "upstream_failed",
            Self::UpstreamStalled(_) => "upstream_stalled",
            Self::UpstreamUnrewritable => "upstream_unrewritable",
            Self::PiiBlocked(_) => "pii_blocked",
            Self::ModerationUnavailable(_) => "moderation_unavailable",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::InvalidRequest(_) | Self::PiiBlocked(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout(_)
            | Self::Upstream(UpstreamError::Timeout(_))
            | Self::UpstreamStalled(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::NoUpstream
            | Self::Upstream(_)
            | Self::UpstreamFailed
            | Self::UpstreamUnrewritable => StatusCode::BAD_GATEWAY,
            Self::ModerationUnavailable(why) => why.status(),
        }
    }

    /// Whose fault it was.
    pub fn fault(&self) -> Fault {
        match self {
            Self::UnsupportedMediaType
            | Self::BodyTooLarge(_)
            | Self::RequestBodyTimeout(_)
            | Self::InvalidRequest(_)
            | Self::PiiBlocked(_)
            | Self::NotFound(_)
            | Self::MethodNotAllowed(_) => Fault::Client,
            Self::Upstream(UpstreamError::Setup(_)) => Fault::Gateway,
            Self::Upstream(_)
            | Self::UpstreamFailed
            | Self::UpstreamStalled(_)
            | Self::UpstreamUnrewritable => Fault::Upstream,
            Self::RequestTimeout(_) | Self::NoUpstream => Fault::Gateway,
            Self::ModerationUnavailable(why) => why.fault(),
        }
    }

    /// 400 with a message saying what is wrong.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidRequest(message.into())
    }
}

/// The one renderer of a [`RequestError`]: counted, logged with whose fault it was, and answered
/// in `protocol`'s error envelope (with `Retry-After` when moderation is unavailable).
pub fn respond(
    gw: &Gateway,
    protocol: &dyn Adapter,
    e: &RequestError,
    request_id: &str,
) -> Response<Body> {
    let (status, error_type, fault) = (e.status(), e.error_type(), <&str>::from(e.fault()));
    gw.metrics.errors.with_label_values(&[error_type]).inc();
    tracing::info!(
        request_id,
        error_type,
        fault,
        status = status.as_u16(),
        "answered with an error"
    );
    let body = protocol.error(status, error_type, &e.to_string());
    let mut response = json_response(status, &body);
    if let Ok(id) = HeaderValue::try_from(request_id) {
        response
            .headers_mut()
            .insert(super::headers::REQUEST_ID, id);
    }
    if matches!(e, RequestError::ModerationUnavailable(_)) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl From<BodyError> for RequestError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::NotJson => Self::UnsupportedMediaType,
            BodyError::TooLarge(limit) => Self::BodyTooLarge(limit),
            BodyError::Timeout(deadline) => Self::RequestBodyTimeout(deadline.as_millis()),
            BodyError::Broken => {
                Self::invalid("the request body ended early or was malformed; send it again")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use strum::IntoEnumIterator;

    use super::*;

    /// One of each variant.
    fn every_request_error() -> Vec<RequestError> {
        vec![
            RequestError::UnsupportedMediaType,
            RequestError::BodyTooLarge(1),
            RequestError::RequestBodyTimeout(1),
            RequestError::invalid("x"),
            RequestError::NotFound("x".into()),
            RequestError::MethodNotAllowed("x".into()),
            RequestError::RequestTimeout(1),
            RequestError::NoUpstream,
            RequestError::Upstream(UpstreamError::Setup("x".into())),
            RequestError::Upstream(UpstreamError::Unreachable("x".into())),
            RequestError::Upstream(UpstreamError::Timeout(Duration::from_secs(1))),
            RequestError::UpstreamFailed,
            RequestError::UpstreamStalled(1),
            RequestError::UpstreamUnrewritable,
            RequestError::PiiBlocked("card".into()),
            RequestError::ModerationUnavailable(Unchecked::QueueFull),
        ]
    }

    #[test]
    fn the_list_of_request_error_types_is_the_set_the_errors_produce() {
        let produced: Vec<&str> = every_request_error()
            .iter()
            .map(RequestError::error_type)
            .collect();
        assert_eq!(produced, REQUEST_ERROR_TYPES);
    }

    #[test]
    fn statuses_and_faults_agree() {
        for e in every_request_error() {
            let status = e.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{e:?}"
            );
            let client = e.fault() == Fault::Client;
            assert_eq!(
                client,
                status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS,
                "{e:?}"
            );
        }
        for why in Unchecked::iter() {
            let e = RequestError::ModerationUnavailable(why);
            assert!(e.to_string().contains(why.error_type()));
            let expected = if why == Unchecked::QueueFull {
                429
            } else {
                503
            };
            assert_eq!(e.status().as_u16(), expected);
        }
    }

    #[test]
    fn unchecked_names_are_snake_case_and_serialize_as_named() {
        for why in Unchecked::iter() {
            let name = why.error_type();
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            assert_eq!(serde_json::to_value(why).expect("json"), name);
        }
    }

    /// The comma-separated values listed in parentheses after `` `type` `` on a metric's row
    /// of docs/metrics.md.
    fn documented_types(metric: &str) -> Vec<String> {
        let docs = include_str!("../../docs/metrics.md");
        let row = docs
            .lines()
            .find(|l| l.starts_with(&format!("| `{metric}`")))
            .unwrap_or_else(|| panic!("docs/metrics.md has no row for {metric}"));
        let (_, after) = row.split_once("`type` (").expect("a `type` label");
        let (list, _) = after.split_once(')').expect("closing parenthesis");
        list.split(',').map(|t| t.trim().to_string()).collect()
    }

    /// The codes in the first column of the docs' table whose header starts with `header`.
    fn documented_codes(header: &str) -> Vec<String> {
        let docs = include_str!("../../docs/metrics.md");
        let table = docs.split(header).nth(1).expect("the table");
        table
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with('|'))
            .filter_map(|l| l.split('`').nth(1).map(str::to_string))
            .collect()
    }

    #[test]
    fn docs_list_exactly_the_codes_the_enums_produce() {
        let unchecked: Vec<String> = Unchecked::iter()
            .map(|u| u.error_type().to_string())
            .collect();
        assert_eq!(
            documented_types("shieldgate_evaluation_errors_total"),
            unchecked
        );
        assert_eq!(documented_codes("| code | fault | meaning |"), unchecked);
        assert_eq!(
            documented_types("shieldgate_errors_total"),
            REQUEST_ERROR_TYPES
        );
        assert_eq!(
            documented_codes("| code | status | fault | meaning |"),
            REQUEST_ERROR_TYPES
        );
    }

    #[test]
    fn docs_give_each_request_error_its_status_and_fault() {
        let docs = include_str!("../../docs/metrics.md");
        for e in every_request_error() {
            let row = docs
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", e.error_type())))
                .expect("documented");
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert!(cells[2].contains(e.status().as_str()), "{row}");
            if !matches!(e, RequestError::ModerationUnavailable(_)) {
                assert_eq!(cells[3], <&str>::from(e.fault()), "{row}");
            }
        }
    }
}
