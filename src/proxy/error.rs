//! Request-path errors, rendered in OpenAI's error envelope with a stable `error_type()`.

use hyper::StatusCode;
use serde_json::json;

use crate::scorer::worker::WorkerError;

use super::upstream::UpstreamError;

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code (the JSON `code`, log field and metric label).
    pub code: &'static str,
    /// Human-readable message saying what to do.
    pub message: String,
}

impl ApiError {
    /// 400: the request is malformed.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            message: message.into(),
        }
    }

    /// Any status with a code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let kind = if self.status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        json!({"error": {"message": self.message, "type": kind, "code": self.code, "param": null}})
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        let status = match e {
            WorkerError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            WorkerError::Stopped | WorkerError::Score(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = match &e {
            WorkerError::QueueFull => "the moderation queue is full; retry shortly".to_string(),
            other => format!("moderation is unavailable: {other}"),
        };
        Self::new(status, e.error_type(), message)
    }
}

impl From<UpstreamError> for ApiError {
    fn from(e: UpstreamError) -> Self {
        let status = match e {
            UpstreamError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        Self::new(status, e.error_type(), e.to_string())
    }
}
