//! The HTTP server: health endpoints and the OpenAI-compatible moderation endpoint, on hyper
//! (HTTP/1.1 and h2c). Proxying chat APIs to an upstream is not built yet.

pub mod error;
pub mod moderations;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::policy::Policy;
use crate::scorer::worker::ScorerHandle;

use self::error::ApiError;

/// What every request handler shares.
pub struct AppState {
    /// The scorer worker.
    pub scorer: ScorerHandle,
    /// The policies scored, with their thresholds.
    pub policies: Arc<[Policy]>,
    /// The model name reported to clients.
    pub model_name: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    ids: AtomicU64,
}

impl AppState {
    /// State for a server.
    pub fn new(
        scorer: ScorerHandle,
        policies: Arc<[Policy]>,
        model_name: String,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            scorer,
            policies,
            model_name,
            max_body_bytes,
            ids: AtomicU64::new(1),
        }
    }

    /// A process-unique id for responses.
    pub fn next_id(&self) -> String {
        format!(
            "{:x}-{:x}",
            std::process::id(),
            self.ids.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// Serves connections from `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

async fn route(req: Request<Incoming>, state: &AppState) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let result = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        (&Method::GET, "/readyz") => Ok(text(StatusCode::OK, "ready\n")),
        (&Method::POST, "/v1/moderations") => match read_json_body(req, state).await {
            Ok(body) => moderations::handle(state, &body)
                .await
                .map(|v| json(StatusCode::OK, &v)),
            Err(e) => Err(e),
        },
        (_, "/healthz" | "/readyz" | "/v1/moderations") => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method()),
        )),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}; this server answers /v1/moderations, /healthz, /readyz"),
        )),
    };
    result.unwrap_or_else(|e| {
        tracing::info!(code = e.code, status = e.status.as_u16(), "request refused");
        json(e.status, &e.body())
    })
}

/// Reads a JSON request body: the content type must be JSON and the size within the limit.
async fn read_json_body(req: Request<Incoming>, state: &AppState) -> Result<Bytes, ApiError> {
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let limit = state.max_body_bytes;
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {limit} bytes"),
        )),
        Err(e) => Err(ApiError::invalid(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
