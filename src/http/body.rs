//! Response bodies: one boxed type for whole and streamed bodies, a channel-fed body for
//! streams the gateway relays, and the helpers that build simple responses.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as HttpBody, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

/// Errors inside a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body of the gateway.
pub type Body = BoxBody<Bytes, BoxError>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    with_type(status, full(value.to_string()), "application/json")
}

/// A response with a plain-text body.
pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    with_type(status, full(text), "text/plain; charset=utf-8")
}

/// A response with a body and its content type.
pub fn with_type(status: StatusCode, body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A body fed by a channel (see [`relay`]).
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

/// The feeding end of a [`channel`] body.
pub type ChannelSender = mpsc::Sender<Result<Bytes, BoxError>>;

/// A streamed body and the sender that feeds it; the body ends when the sender is dropped,
/// and fails where an `Err` is sent.
pub fn channel(capacity: usize) -> (ChannelSender, Body) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody { rx }.boxed())
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|r| r.map(Frame::data)))
    }
}

/// An upstream body passed on as it is, after `prefix` (what was already read), failing when
/// the upstream falls silent for longer than the idle timeout. No task, no copy.
pub fn pass_through(upstream: Incoming, idle: Duration, prefix: Bytes) -> Body {
    IdleBody {
        inner: upstream,
        idle,
        timer: Box::pin(tokio::time::sleep(idle)),
        prefix: (!prefix.is_empty()).then_some(prefix),
    }
    .boxed()
}

struct IdleBody {
    inner: Incoming,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    prefix: Option<Bytes>,
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err("the upstream body stalled".into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = self.inner.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower() + extra);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

/// How a relayed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The upstream finished the body.
    Complete,
    /// The upstream failed or fell silent for longer than the idle timeout.
    UpstreamFailed,
    /// The client went away; the upstream body was dropped.
    ClientGone,
}

/// Relays an upstream body to the client as it arrives: each piece as `tap` gives it back (it
/// may hold some of it back), and, when the upstream finished the body, what `done` gives
/// back (told the way the body ended) after the last.
pub fn relay(
    mut upstream: Incoming,
    idle: Duration,
    mut tap: impl FnMut(Bytes) -> Bytes + Send + 'static,
    done: impl FnOnce(RelayEnd) -> Bytes + Send + 'static,
) -> Body {
    let (tx, body) = channel(16);
    tokio::spawn(async move {
        let end = loop {
            match tokio::time::timeout(idle, upstream.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        let data = tap(data);
                        if !data.is_empty() && tx.send(Ok(data)).await.is_err() {
                            break RelayEnd::ClientGone;
                        }
                    }
                }
                Ok(None) => {
                    let last = done(RelayEnd::Complete);
                    if !last.is_empty() {
                        let _ = tx.send(Ok(last)).await;
                    }
                    return;
                }
                Ok(Some(Err(e))) => {
                    let _ = tx.send(Err(Box::new(e) as BoxError)).await;
                    break RelayEnd::UpstreamFailed;
                }
                Err(_) => {
                    let _ = tx.send(Err("the upstream body stalled".into())).await;
                    break RelayEnd::UpstreamFailed;
                }
            }
        };
        // Nothing more goes to a client that is gone or to a body that broke off.
        let _ = done(end);
    });
    body
}

/// Why a body could not be read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CollectError {
    /// It is larger than the limit; what was read so far.
    TooLarge(Bytes),
    /// The peer failed.
    Failed,
    /// The peer sent nothing for longer than the idle time.
    Stalled,
}

/// Reads a whole body of at most `limit` bytes, waiting at most `idle` for each piece.
pub async fn collect<B>(body: &mut B, limit: usize, idle: Duration) -> Result<Bytes, CollectError>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                    if out.len() > limit {
                        return Err(CollectError::TooLarge(out.into()));
                    }
                }
            }
            Ok(None) => return Ok(out.into()),
            Ok(Some(Err(_))) => return Err(CollectError::Failed),
            Err(_) => return Err(CollectError::Stalled),
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The content type is not JSON.
    #[error("the body is not sent as Content-Type: application/json")]
    NotJson,
    /// More than the limit of bytes.
    #[error("the body exceeds {0} bytes")]
    TooLarge(usize),
    /// Not all there within the deadline.
    #[error("the body took longer than {0:?} to arrive")]
    Timeout(Duration),
    /// The connection broke or the framing was malformed.
    #[error("the body ended early or was malformed")]
    Broken,
}

/// Reads a JSON request body: the content type must be JSON, the size within `limit`, the
/// whole body within `deadline`.
pub async fn read_json_request(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim_start().to_ascii_lowercase();
            v.starts_with("application/json")
                || (v.starts_with("application/") && v.contains("+json"))
        });
    if !is_json {
        return Err(BodyError::NotJson);
    }
    read_limited(body, limit, deadline).await
}

/// Reads a whole request body of at most `limit` bytes within `deadline` (a client trickling
/// its body cannot hold the connection).
pub async fn read_limited(
    mut body: Incoming,
    limit: usize,
    deadline: Duration,
) -> Result<Bytes, BodyError> {
    let read = tokio::time::timeout(deadline, collect(&mut body, limit, deadline)).await;
    match read.unwrap_or(Err(CollectError::Stalled)) {
        Ok(bytes) => Ok(bytes),
        Err(CollectError::TooLarge(_)) => Err(BodyError::TooLarge(limit)),
        Err(CollectError::Stalled) => Err(BodyError::Timeout(deadline)),
        Err(CollectError::Failed) => Err(BodyError::Broken),
    }
}
