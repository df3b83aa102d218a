//! The accept loop shared by the public and admin listeners: HTTP/1.1 and h2c on one port,
//! header-size limits, idle connections closed, graceful shutdown that lets open exchanges and
//! streams finish, and connections run on the current runtime or spread over worker threads.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;

use super::body::Body;
use super::idle::{Activity, Counted, GuardedBody};
use super::workers::Workers;
use crate::config::ServerConfig;

/// Per-listener limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head in bytes (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Time allowed for a request head to arrive.
    pub client_timeout: Duration,
    /// How long a connection may stay open with no traffic and no exchange in progress.
    pub idle_timeout: Duration,
    /// How long open connections may finish after shutdown begins.
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The limits `[server]` sets.
    pub fn from_server(server: &ServerConfig) -> Self {
        Self {
            max_header_bytes: server.max_header_bytes,
            client_timeout: Duration::from_millis(server.client_timeout_ms),
            idle_timeout: Duration::from_millis(server.idle_timeout_ms),
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
        }
    }
}

impl Default for Limits {
    /// `[server]`'s defaults.
    fn default() -> Self {
        Self::from_server(&ServerConfig::default())
    }
}

/// What serves a listener's requests: called once per request, shared by every connection.
pub trait Handler<Fut>: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static {}

impl<F, Fut> Handler<Fut> for F where F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static
{}

/// Serves connections with `handler` on the current runtime until `shutdown` resolves, then
/// drains them.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Handler<Fut>,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let here = Handle::current();
    accept_loop(listener, limits, handler, shutdown, || here.clone()).await
}

/// [`serve`], each connection handed in turn to one of `workers` and kept there.
pub async fn serve_on<F, Fut>(
    workers: &Workers,
    listener: TcpListener,
    limits: Limits,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Handler<Fut>,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    accept_loop(listener, limits, handler, shutdown, || {
        workers.next().clone()
    })
    .await
}

/// Accepts until `shutdown`, running each connection on the runtime `place` gives, then drains.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    handler: F,
    shutdown: impl Future<Output = ()>,
    place: impl Fn() -> Handle,
) -> std::io::Result<()>
where
    F: Handler<Fut>,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    // Every connection holds a receiver: it learns of the shutdown from it, and the sender sees
    // all connections gone when the last receiver is dropped.
    let (stop, stopped) = watch::channel(false);
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(limits.client_timeout);
    builder
        .http2()
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streamed bodies go out in several writes: without NODELAY, Nagle's algorithm and the
        // peer's delayed ACK add ~40 ms to each of them.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        // The stream leaves this runtime's reactor and joins that of the runtime it runs on.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot hand the connection over");
                continue;
            }
        };
        let connection = connection(
            stream,
            peer,
            builder.clone(),
            handler.clone(),
            stopped.clone(),
            limits.idle_timeout,
        );
        place().spawn(connection);
    }
    drop(listener);
    drop(stopped);
    let _ = stop.send(true);
    tokio::select! {
        () = stop.closed() => tracing::info!("all connections finished"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(grace = ?limits.shutdown_grace, "connections still open after the shutdown grace period");
        }
    }
    Ok(())
}

/// Serves one connection until it ends, it has been idle too long, or shutdown closes it.
async fn connection<F, Fut>(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    builder: Arc<Builder<TokioExecutor>>,
    handler: F,
    mut stopped: watch::Receiver<bool>,
    idle_timeout: Duration,
) where
    F: Handler<Fut>,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot register the connection");
            return;
        }
    };
    let activity = Arc::new(Activity::default());
    let counter = activity.clone();
    let service = service_fn(move |req| {
        let handler = handler.clone();
        let guard = counter.exchange();
        async move {
            let response = handler(req).await;
            // The exchange stays open until its body is sent (or dropped).
            Ok::<_, Infallible>(response.map(|body| GuardedBody::new(body, guard).boxed()))
        }
    });
    let io = TokioIo::new(Counted::new(stream, activity.clone()));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    // An idle connection closes gracefully (HTTP/2: GOAWAY, then a PING round trip), and is
    // dropped if the client does not let it finish within another idle period.
    let mut cut = None;
    let result = loop {
        tokio::select! {
            result = connection.as_mut() => break result,
            _ = stopped.wait_for(|s| *s), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.quiet_for(idle_timeout), if !closing => {
                tracing::debug!(%peer, "closing an idle connection");
                connection.as_mut().graceful_shutdown();
                closing = true;
                cut = Some(tokio::time::Instant::now() + idle_timeout);
            }
            () = async { if let Some(at) = cut { tokio::time::sleep_until(at).await } }, if cut.is_some() => {
                tracing::debug!(%peer, "dropping an idle connection that did not close");
                return;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1;

    use super::*;
    use crate::http::body::full;

    /// Answers with the name of the thread the request ran on.
    async fn thread_name(_: Request<Incoming>) -> Response<Body> {
        let name = std::thread::current().name().unwrap_or("").to_string();
        Response::new(full(bytes::Bytes::from(name)))
    }

    /// A client connection: asks `requests` times on it, returns the answers.
    async fn ask(addr: SocketAddr, requests: usize) -> Vec<String> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (mut send, conn) = http1::handshake::<_, Full<bytes::Bytes>>(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut names = Vec::new();
        for _ in 0..requests {
            let request = Request::get("/")
                .header("host", "x")
                .body(Full::default())
                .expect("request");
            let answer = send.send_request(request).await.expect("answer");
            let body = answer.into_body().collect().await.expect("body");
            names.push(String::from_utf8_lossy(&body.to_bytes()).into_owned());
        }
        names
    }

    #[tokio::test]
    async fn each_connection_keeps_to_the_worker_it_was_dealt() {
        let workers = Arc::new(Workers::start(2, "served").expect("workers"));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let on = workers.clone();
        tokio::spawn(async move {
            serve_on(
                &on,
                listener,
                Limits::default(),
                thread_name,
                std::future::pending(),
            )
            .await
        });
        let first = ask(addr, 3).await;
        let second = ask(addr, 3).await;
        assert_eq!(
            first, ["served-0"; 3],
            "every request of a connection on its worker"
        );
        assert_eq!(
            second, ["served-1"; 3],
            "the next connection on the next worker"
        );
    }
}
