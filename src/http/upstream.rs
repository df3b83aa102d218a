//! The upstream client: pooled HTTP/1.1 and HTTP/2 (by ALPN) over plain TCP or rustls
//! (system roots plus an optional CA file), with connect and response-head timeouts. Each
//! thread keeps its own pool, so a request goes out on a connection whose task runs on the
//! request's own thread (see [`super::workers`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::http::uri::{self, Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thread_local::ThreadLocal;

use crate::config::UpstreamConfig;

use super::body::{full, Body};

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The client cannot be built from the configuration.
    #[error("cannot set up the upstream client: {0}")]
    Setup(String),
    /// No connection or no response head.
    #[error("the upstream is unreachable: {0}")]
    Unreachable(String),
    /// The response head did not arrive in time.
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
}

impl UpstreamError {
    /// A stable name for error bodies, metrics and logs.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::Setup(_) => "upstream_setup",
            Self::Unreachable(_) => "upstream_unreachable",
            Self::Timeout(_) => "upstream_timeout",
        }
    }
}

/// Hop-by-hop headers, never forwarded; as header names, so that removing them parses no text.
static HOP_BY_HOP: [HeaderName; 8] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    hyper::header::PROXY_AUTHENTICATE,
    hyper::header::PROXY_AUTHORIZATION,
    hyper::header::TE,
    hyper::header::TRAILER,
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header names. Most messages
/// carry none: one pass over the names finds that without hashing a name per removal.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

type Pool = Client<HttpsConnector<HttpConnector>, Body>;

/// The configured upstream.
pub struct Upstream {
    connector: HttpsConnector<HttpConnector>,
    pool_idle_timeout: Duration,
    pools: ThreadLocal<Pool>,
    scheme: Scheme,
    authority: Authority,
    /// The Host header every request carries: the URL's host and port as written. Set here,
    /// once, the client does not format it anew for each request.
    host: HeaderValue,
    /// The URL's path every request path is appended to, without a trailing slash ("" for
    /// none).
    prefix: String,
    response_timeout: Duration,
    /// Longest silence between two body pieces.
    pub idle_timeout: Duration,
}

impl Upstream {
    /// Builds the client; fails on an unreadable CA file.
    pub fn new(config: &UpstreamConfig) -> Result<Self, UpstreamError> {
        let base: Uri = config
            .url
            .trim_end_matches('/')
            .parse()
            .map_err(|e| UpstreamError::Setup(format!("url {:?}: {e}", config.url)))?;
        let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned())
        else {
            return Err(UpstreamError::Setup(format!(
                "url {:?} needs a scheme and a host",
                config.url
            )));
        };
        let prefix = base.path().trim_end_matches('/').to_string();
        let without_userinfo = authority.as_str().rsplit('@').next().unwrap_or_default();
        let host = HeaderValue::from_str(without_userinfo)
            .map_err(|e| UpstreamError::Setup(format!("url {:?}: {e}", config.url)))?;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = &config.ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| UpstreamError::Setup(format!("CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(UpstreamError::Setup(format!(
                    "CA file {} holds no PEM certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    UpstreamError::Setup(format!("CA file {}: {e}", path.display()))
                })?;
            }
        }
        tracing::debug!(system_roots = added, "upstream TLS roots loaded");
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            connector,
            pool_idle_timeout: Duration::from_millis(config.pool_idle_timeout_ms),
            pools: ThreadLocal::new(),
            scheme,
            authority,
            host,
            prefix,
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
        })
    }

    /// This thread's pool.
    fn pool(&self) -> &Pool {
        self.pools.get_or(|| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(self.pool_idle_timeout)
                .build(self.connector.clone())
        })
    }

    /// The upstream URI for a request's path and query. Without a prefix the request's own,
    /// already parsed, path and query is reused as it is.
    fn target(&self, path_and_query: Option<&PathAndQuery>) -> Result<Uri, UpstreamError> {
        let path_and_query = match path_and_query {
            Some(p) if self.prefix.is_empty() => p.clone(),
            p => PathAndQuery::try_from(format!(
                "{}{}",
                self.prefix,
                p.map_or("/", PathAndQuery::as_str)
            ))
            .map_err(|e| UpstreamError::Unreachable(format!("bad target path: {e}")))?,
        };
        let mut parts = uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts)
            .map_err(|e| UpstreamError::Unreachable(format!("bad target path: {e}")))
    }

    /// Sends a request with `body` to the upstream; headers are forwarded without hop-by-hop
    /// ones and with the upstream's Host.
    pub async fn send(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = self.target(parts.uri.path_and_query())?;
        let length = body.len();
        let mut request = Request::new(full(body));
        *request.method_mut() = parts.method;
        *request.uri_mut() = target;
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        *headers = parts.headers;
        strip_hop_by_hop(headers);
        headers.insert(HOST, self.host.clone());
        headers.insert(hyper::header::CONTENT_LENGTH, length.into());
        match tokio::time::timeout(self.response_timeout, self.pool().request(request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(UpstreamError::Unreachable(error_chain(&e))),
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "keep-alive, x-private".parse().expect("value"),
        );
        h.insert("x-private", "1".parse().expect("value"));
        h.insert("transfer-encoding", "chunked".parse().expect("value"));
        h.insert("authorization", "Bearer k".parse().expect("value"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("authorization"));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_dropped_and_others_are_kept() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert("content-type", "application/json".parse().expect("value"));
            h.insert(name.clone(), "x".parse().expect("value"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} was kept");
            assert!(h.contains_key("content-type"));
        }
    }

    #[test]
    fn requests_carry_the_upstream_host_not_the_client_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let head = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let upstream = tokio::spawn(async move {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await.expect("read");
                    assert!(n > 0, "the request ended early");
                    head.extend_from_slice(&buf[..n]);
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                stream.write_all(answer).await.expect("write");
                String::from_utf8(head).expect("utf-8")
            });
            let u = Upstream::new(&UpstreamConfig::new(format!("http://{addr}/base")))
                .expect("upstream");
            let (mut parts, ()) = Request::new(()).into_parts();
            parts.uri = "/v1/x".parse().expect("uri");
            parts
                .headers
                .insert(HOST, "gateway.example".parse().expect("host"));
            let answer = u.send(parts, Bytes::new()).await.expect("answer");
            assert_eq!(answer.status(), 200);
            (addr, upstream.await.expect("upstream task"))
        });
        let (addr, head) = head;
        let lines: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
        assert_eq!(lines[0], "get /base/v1/x http/1.1");
        assert!(lines.contains(&format!("host: {addr}")), "{head}");
        assert_eq!(lines.iter().filter(|l| l.starts_with("host:")).count(), 1);
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_setup_error() {
        let mut config = UpstreamConfig::new("https://example.invalid");
        config.ca_file = Some("/nonexistent/ca.pem".into());
        let e = Upstream::new(&config).err().expect("fails");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn each_thread_sends_on_its_own_pooled_connection() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use hyper_util::rt::TokioIo;

        use crate::http::workers::Workers;

        // An upstream that counts the connections it accepts.
        let accepted = Arc::new(AtomicUsize::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let counter = accepted.clone();
        let server = Workers::start(1, "upstream").expect("upstream thread");
        server.next().spawn(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(Response::new(full(Bytes::from("ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        let upstream = Arc::new(
            Upstream::new(&UpstreamConfig::new(format!("http://{addr}"))).expect("client"),
        );
        let workers = Workers::start(2, "sender").expect("workers");
        // Each worker in turn sends three requests one after another; the first worker's
        // connection is idle in a pool when the second starts (a shared pool would hand it
        // over).
        for _ in 0..2 {
            let (done, finished) = std::sync::mpsc::channel();
            let upstream = upstream.clone();
            workers.next().spawn(async move {
                for _ in 0..3 {
                    let (parts, ()) = Request::get("/").body(()).expect("request").into_parts();
                    let answer = upstream.send(parts, Bytes::new()).await.expect("answer");
                    let _ = http_body_util::BodyExt::collect(answer.into_body()).await;
                    // Lets the connection go back to its pool before the next request.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = done.send(());
            });
            finished.recv().expect("the worker sent its requests");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "one connection per thread, reused by that thread's later requests"
        );
    }

    #[test]
    fn paths_join_the_base() {
        let target = |base: &str, path: Option<&str>| {
            let u = Upstream::new(&UpstreamConfig::new(base)).expect("ok");
            let path = path.map(|p| PathAndQuery::try_from(p).expect("path"));
            u.target(path.as_ref()).expect("uri").to_string()
        };
        let chat = Some("/v1/chat/completions?x=1");
        for (base, path, joined) in [
            (
                "http://127.0.0.1:9/openai/",
                chat,
                "http://127.0.0.1:9/openai/v1/chat/completions?x=1",
            ),
            (
                "http://127.0.0.1:9/openai",
                chat,
                "http://127.0.0.1:9/openai/v1/chat/completions?x=1",
            ),
            (
                "https://api.example.com",
                chat,
                "https://api.example.com/v1/chat/completions?x=1",
            ),
            (
                "https://api.example.com/",
                chat,
                "https://api.example.com/v1/chat/completions?x=1",
            ),
            (
                "http://[::1]:8080",
                Some("/v1/messages"),
                "http://[::1]:8080/v1/messages",
            ),
            (
                "http://127.0.0.1:9/openai",
                None,
                "http://127.0.0.1:9/openai/",
            ),
            ("http://127.0.0.1:9", None, "http://127.0.0.1:9/"),
        ] {
            assert_eq!(target(base, path), joined, "{base} + {path:?}");
        }
    }
}
