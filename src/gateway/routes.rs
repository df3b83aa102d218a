//! The public listener's routes: `/v1/moderations`, the protocol adapters' paths, and every
//! other path passed through to the upstream or refused, by config.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

use crate::config::UnknownPaths;

use super::error::{respond, RequestError};
use super::headers::REQUEST_ID;
use super::protocols::{self, openai_chat::OpenAiChat, Adapter};
use super::{exchange, Gateway};
use crate::http::body::{json_response, pass_through, read_json_request, read_limited, Body};
use crate::http::upstream::strip_hop_by_hop;
use crate::policy::profiles::Selector;

/// Where a request goes.
#[derive(Clone, Copy)]
enum Route {
    /// `POST /v1/moderations`.
    Moderations,
    /// A chat path: the moderated exchange in its protocol.
    Moderated(&'static dyn Adapter),
    /// Anything else: passed through or refused, by config.
    Passthrough,
}

impl Route {
    fn of(req: &Request<Incoming>) -> Self {
        let path = req.uri().path();
        match (req.method(), protocols::for_path(path)) {
            (&Method::POST, _) if path == "/v1/moderations" => Self::Moderations,
            (&Method::POST, Some(adapter)) => Self::Moderated(adapter),
            _ => Self::Passthrough,
        }
    }

    /// The `route` and `protocol` metric labels.
    fn labels(self) -> [&'static str; 2] {
        match self {
            Self::Moderations => ["moderations", "openai_moderations"],
            Self::Moderated(adapter) => ["moderated", adapter.protocol()],
            Self::Passthrough => ["passthrough", "-"],
        }
    }
}

/// Answers one request on the public listener within the request timeout.
pub async fn route(gw: Arc<Gateway>, req: Request<Incoming>, timeout: Duration) -> Response<Body> {
    let request_id = gw.next_id();
    let route = Route::of(&req);
    let work = async {
        let answer = match route {
            Route::Moderated(adapter) => {
                return exchange::handle(gw.clone(), adapter, req, request_id.clone()).await
            }
            Route::Moderations => moderations(&gw, req).await,
            Route::Passthrough => passthrough(&gw, req).await,
        };
        answer.unwrap_or_else(|e| respond(&gw, &OpenAiChat, &e, &request_id))
    };
    let mut response = match tokio::time::timeout(timeout, work).await {
        Ok(response) => response,
        Err(_) => respond(
            &gw,
            &OpenAiChat,
            &RequestError::RequestTimeout(timeout.as_millis()),
            &request_id,
        ),
    };
    if !response.headers().contains_key(REQUEST_ID) {
        if let Ok(v) = HeaderValue::try_from(request_id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
    }
    let [kind, protocol] = route.labels();
    gw.metrics
        .requests
        .with_label_values(&[kind, protocol, response.status().as_str()])
        .inc();
    response
}

async fn moderations(gw: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, RequestError> {
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
async fn passthrough(gw: &Gateway, req: Request<Incoming>) -> Result<Response<Body>, RequestError> {
    let path = req.uri().path().to_string();
    let refuse = gw.settings().proxy.unknown_paths == UnknownPaths::Refuse;
    let upstream = match &gw.upstream {
        Some(u) if !refuse => u,
        _ => {
            let message = format!(
                "{} {path} is not served here: this gateway answers POST /v1/moderations{}",
                req.method(),
                if gw.upstream.is_some() {
                    " and the moderated chat paths"
                } else {
                    ""
                }
            );
            return Err(if path == "/v1/moderations" {
                RequestError::MethodNotAllowed(message)
            } else {
                RequestError::NotFound(message)
            });
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
