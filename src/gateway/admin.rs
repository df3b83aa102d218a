//! The admin listener: liveness, readiness (model loaded, not draining), Prometheus metrics
//! and explanations of logged checks. It is bound to its own address so none of this is
//! reachable on the public one.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::Gateway;
use crate::http::body::{text_response, Body};

/// Answers one admin request.
pub async fn route(gw: &Gateway, req: &Request<Incoming>) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/explain") => super::explain::handle(gw, req.uri().query()).await,
        (&Method::GET, "/healthz") => text_response(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") if gw.is_draining() => {
            text_response(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET, "/readyz") => text_response(StatusCode::OK, "ready\n"),
        (&Method::GET, "/metrics") => {
            gw.metrics.queue_depth.set(gw.scorer.queued() as i64);
            let mut response = text_response(StatusCode::OK, gw.metrics.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/explain") => {
            text_response(StatusCode::METHOD_NOT_ALLOWED, "use GET\n")
        }
        (_, path) => text_response(
            StatusCode::NOT_FOUND,
            format!("no admin route {path}; try /healthz, /readyz, /metrics or /explain\n"),
        ),
    }
}
