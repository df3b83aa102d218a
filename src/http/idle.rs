//! Idle connections: an IO wrapper that counts the bytes a connection moves, a guard that
//! counts its open exchanges (request received, response body not yet finished), and a
//! watchdog future that resolves once the connection has moved nothing and held no exchange
//! for the limit. HTTP/1's keep-alive and HTTP/2 connections that go quiet are then closed, so
//! a client cannot hold sockets open by saying nothing.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// What one connection has done: bytes moved and exchanges open.
#[derive(Debug, Default)]
pub struct Activity {
    bytes: AtomicU64,
    open: AtomicUsize,
}

impl Activity {
    /// Counts an exchange as open until the returned guard is dropped.
    pub fn exchange(self: &Arc<Self>) -> ExchangeGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        ExchangeGuard(self.clone())
    }

    fn moved(&self, n: usize) {
        if n > 0 {
            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Resolves once nothing has moved and no exchange has been open for `limit` (checked a
    /// few times per limit, so it resolves between `limit` and 1.25 × `limit` of quiet).
    pub async fn quiet_for(&self, limit: Duration) {
        let tick = (limit / 4).max(Duration::from_millis(10));
        let mut seen = self.bytes.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = self.bytes.load(Ordering::Relaxed);
            if now != seen || self.open.load(Ordering::Relaxed) > 0 {
                seen = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= limit {
                return;
            }
        }
    }
}

/// Keeps an exchange counted as open while it lives.
#[derive(Debug)]
pub struct ExchangeGuard(Arc<Activity>);

impl Drop for ExchangeGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its exchange counted as open until it is sent or dropped; its
/// size hint is the inner body's, so whole bodies keep their Content-Length.
pub struct GuardedBody<B> {
    inner: B,
    _guard: ExchangeGuard,
}

impl<B> GuardedBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, guard: ExchangeGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An IO stream that records its traffic in an [`Activity`].
pub struct Counted<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Counted<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.activity.moved(buf.filled().len() - before);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.activity.moved(n);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.activity.moved(n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn a_guarded_body_keeps_its_length_and_the_exchange_open_until_dropped() {
        let activity = Arc::new(Activity::default());
        let body = GuardedBody::new(
            http_body_util::Full::new(bytes::Bytes::from_static(b"hello")),
            activity.exchange(),
        );
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(activity.open.load(Ordering::Relaxed), 1);
        drop(body);
        assert_eq!(activity.open.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_resolves_only_without_traffic_or_open_exchanges() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_secs(4);
        let (a, mut b) = tokio::io::duplex(64);
        let mut counted = Counted::new(a, activity.clone());

        // An open exchange keeps the connection alive however long it is quiet.
        let guard = activity.exchange();
        let waited = tokio::time::timeout(limit * 3, activity.quiet_for(limit)).await;
        assert!(waited.is_err(), "closed while an exchange was open");
        drop(guard);

        // Traffic in either direction restarts the clock.
        let started = Instant::now();
        let quiet = activity.quiet_for(limit);
        tokio::pin!(quiet);
        for _ in 0..3 {
            tokio::select! {
                () = &mut quiet => panic!("closed while bytes were moving"),
                () = tokio::time::sleep(limit / 2) => {}
            }
            counted.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            b.read_exact(&mut buf).await.expect("peer reads");
            b.write_all(b"pong").await.expect("peer writes");
            counted.read_exact(&mut buf).await.expect("read");
        }
        quiet.await;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= limit * 3 / 2 + limit && elapsed <= limit * 3 / 2 + limit * 3 / 2,
            "resolved after {elapsed:?}"
        );
        assert_eq!(activity.bytes.load(Ordering::Relaxed), 24);
    }
}
