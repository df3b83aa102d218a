//! The public listener's routes: `/v1/moderations`, the protocol adapters' paths, and every
//! other path passed through to the upstream or refused, by config.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

use crate::config::UnknownPaths;

use super::adapters;
use super::body::{json_response, pass_through, read_json_request, read_limited, Body};
use super::error::ApiError;
use super::headers::REQUEST_ID;
use super::profiles::Selector;
use super::upstream::strip_hop_by_hop;
use super::{exchange, Gateway};

/// Answers one request on the public listener within the request timeout.
pub async fn route(gw: Arc<Gateway>, req: Request<Incoming>, timeout: Duration) -> Response<Body> {
    let request_id = gw.next_id();
    let path = req.uri().path();
    let (kind, protocol) = match (req.method(), adapters::for_path(path)) {
        (&Method::POST, _) if path == "/v1/moderations" => ("moderations", "openai_moderations"),
        (&Method::POST, Some(a)) => ("moderated", a.protocol()),
        _ => ("passthrough", "-"),
    };
    let work = dispatch(gw.clone(), req, request_id.clone(), kind);
    let mut response = match tokio::time::timeout(timeout, work).await {
        Ok(response) => response,
        Err(_) => error(
            &gw,
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "request_timeout",
                format!("the request took longer than {} ms", timeout.as_millis()),
            ),
        ),
    };
    if !response.headers().contains_key(REQUEST_ID) {
        if let Ok(v) = HeaderValue::try_from(request_id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
    }
    gw.metrics
        .requests
        .with_label_values(&[kind, protocol, response.status().as_str()])
        .inc();
    response
}

async fn dispatch(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    request_id: String,
    kind: &str,
) -> Response<Body> {
    match kind {
        "moderations" => moderations(&gw, req)
            .await
            .unwrap_or_else(|e| error(&gw, e)),
        "moderated" => match adapters::for_path(req.uri().path()) {
            Some(adapter) => exchange::handle(gw, adapter, req, request_id).await,
            None => error(&gw, ApiError::invalid("no adapter for this path")),
        },
        _ => passthrough(&gw, req)
            .await
            .unwrap_or_else(|e| error(&gw, e)),
    }
}

async fn moderations(gw: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let settings = gw.settings();
    let (parts, body) = req.into_parts();
    let profile = settings.profiles.select(&Selector {
        path: parts.uri.path(),
        headers: &parts.headers,
        tenant_header: &settings.proxy.tenant_header,
    });
    let body =
        read_json_request(&parts.headers, body, gw.max_body_bytes, gw.client_timeout).await?;
    let value = super::moderations::handle(gw, profile, &body).await?;
    Ok(json_response(StatusCode::OK, &value))
}

/// Forwards a request no adapter handles, untouched, when the config allows it.
async fn passthrough(gw: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let refuse = gw.settings().proxy.unknown_paths == UnknownPaths::Refuse;
    let upstream = match &gw.upstream {
        Some(u) if !refuse => u,
        _ => {
            let status = if path == "/v1/moderations" {
                StatusCode::METHOD_NOT_ALLOWED
            } else {
                StatusCode::NOT_FOUND
            };
            let code = if status == StatusCode::NOT_FOUND {
                "not_found"
            } else {
                "method_not_allowed"
            };
            return Err(ApiError::new(
                status,
                code,
                format!(
                    "{} {path} is not served here: this gateway answers POST /v1/moderations{}",
                    req.method(),
                    if gw.upstream.is_some() {
                        " and the moderated chat paths"
                    } else {
                        ""
                    }
                ),
            ));
        }
    };
    let (parts, body) = req.into_parts();
    let bytes = read_limited(body, gw.max_body_bytes, gw.client_timeout).await?;
    let response = upstream.send(parts, bytes).await?;
    let (mut head, body) = response.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let body = pass_through(body, upstream.idle_timeout, Bytes::new());
    Ok(Response::from_parts(head, body))
}

fn error(gw: &Gateway, e: ApiError) -> Response<Body> {
    gw.metrics.errors.with_label_values(&[e.code]).inc();
    tracing::info!(code = e.code, status = e.status.as_u16(), "request refused");
    json_response(e.status, &e.body())
}
