//! HTTP/2 oddities against the real binary over h2c: header lists over the limit, CONTINUATION
//! floods, streams reset mid-body and at once (rapid reset), frames that break the protocol,
//! PING / SETTINGS / unknown-frame floods, bodies over the limit, lying content-lengths, a
//! connection that goes quiet after the preface and a reader that never opens its window.
//! Each gets a 4xx, a stream reset or a GOAWAY, never a 5xx or a hang; bodies cut by a reset
//! never reach the upstream; memory stays bounded and normal traffic is served throughout.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::hostile::{
    clean_chat, hostile_gateway, rss_kib, still_healthy, Reply, CLIENT_TIMEOUT_MS, IDLE_TIMEOUT_MS,
};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame length");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with a 7-bit prefix (no flag bits).
fn hpack_int(n: usize, out: &mut Vec<u8>) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    let mut rest = n - 127;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// A header block of literal fields (not indexed, no Huffman).
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(name.len(), &mut out);
        out.extend_from_slice(name.as_bytes());
        hpack_int(value.len(), &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn chat_head() -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/v1/chat/completions"),
        (":authority", "gateway"),
        ("content-type", "application/json"),
    ]
}

/// What the gateway did with a raw connection.
#[derive(Debug, Default)]
struct RawOutcome {
    /// GOAWAY error codes received.
    goaway: Vec<u32>,
    /// Frames received.
    frames: usize,
    /// Whether the connection ended (EOF or reset) rather than staying open until `wait`.
    closed: bool,
    /// Bytes of `frames` the gateway took before the connection broke.
    written: usize,
}

/// Sends the preface, an empty SETTINGS and `frames` on a fresh connection (stopping when the
/// gateway closes it), optionally half-closes, then reads frames for up to `wait`.
fn raw_h2(addr: SocketAddr, frames: &[Vec<u8>], close_write: bool, wait: Duration) -> RawOutcome {
    let mut stream = TcpStream::connect(addr).expect("connects");
    // A gateway that stops reading fails the write instead of blocking the test forever.
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .expect("timeout set");
    let mut outcome = RawOutcome::default();
    let mut received = Vec::new();
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    let mut broken = stream.write_all(&start).is_err();
    let all: Vec<u8> = frames.concat();
    stream
        .set_read_timeout(Some(Duration::from_millis(1)))
        .expect("timeout set");
    for chunk in all.chunks(16 * 1024) {
        if broken {
            break;
        }
        broken = stream.write_all(chunk).is_err();
        if !broken {
            outcome.written += chunk.len();
        }
        // Drain what the gateway sends back so that neither side blocks on a full buffer.
        read_some(&mut stream, &mut received, &mut outcome);
        broken |= outcome.closed;
    }
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout set");
    if close_write && !broken {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    let deadline = Instant::now() + wait;
    while !outcome.closed && Instant::now() < deadline {
        read_some(&mut stream, &mut received, &mut outcome);
    }
    let mut at = 0;
    while received.len() >= at + 9 {
        let len =
            u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
        if received.len() < at + 9 + len {
            break;
        }
        let payload = &received[at + 9..at + 9 + len];
        if received[at + 3] == GOAWAY && len >= 8 {
            outcome.goaway.push(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
        outcome.frames += 1;
        at += 9 + len;
    }
    outcome
}

fn read_some(stream: &mut TcpStream, received: &mut Vec<u8>, outcome: &mut RawOutcome) {
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                outcome.closed = true;
                return;
            }
            Ok(n) => {
                // Keep the head of the conversation only: floods answer with many frames.
                if received.len() < 1 << 20 {
                    received.extend_from_slice(&buf[..n]);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return,
            Err(_) => {
                outcome.closed = true;
                return;
            }
        }
    }
}

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const COMPRESSION_ERROR: u32 = 0x9;

/// A protocol violation: its name, its frames and the GOAWAY codes allowed.
type Violation = (&'static str, Vec<Vec<u8>>, &'static [u32]);

/// Frames that break the protocol end the connection with a GOAWAY carrying the right code.
fn protocol_violations(addr: SocketAddr) {
    let head = header_block(&chat_head());
    let cases: Vec<Violation> = vec![
        (
            "DATA on stream 0",
            vec![frame(DATA, 0, 0, b"hello")],
            &[PROTOCOL_ERROR],
        ),
        (
            "HEADERS on an even (server) stream",
            vec![frame(HEADERS, END_HEADERS | END_STREAM, 2, &head)],
            &[PROTOCOL_ERROR],
        ),
        (
            "connection window over 2^31-1",
            vec![
                frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
                frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            ],
            &[FLOW_CONTROL_ERROR],
        ),
        (
            "SETTINGS of 5 bytes",
            vec![frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 1])],
            &[FRAME_SIZE_ERROR, PROTOCOL_ERROR],
        ),
        (
            "frame over the 16 KiB maximum",
            vec![frame(DATA, 0, 1, &vec![0u8; 1 << 20])],
            &[FRAME_SIZE_ERROR, PROTOCOL_ERROR],
        ),
        (
            "header block that is not HPACK",
            vec![frame(HEADERS, END_HEADERS, 1, &[0xff; 64])],
            &[COMPRESSION_ERROR, PROTOCOL_ERROR],
        ),
    ];
    for (name, frames, codes) in cases {
        let outcome = raw_h2(addr, &frames, false, Duration::from_secs(10));
        assert!(
            outcome.closed,
            "{name}: the connection stayed open: {outcome:?}"
        );
        assert!(
            outcome.goaway.iter().any(|c| codes.contains(c)),
            "{name}: expected a GOAWAY with one of {codes:?}, got {outcome:?}"
        );
        println!("hostile h2: {name}: GOAWAY {:?}", outcome.goaway);
    }
}

/// A header block that never ends (HEADERS, then CONTINUATION after CONTINUATION) is cut off
/// long before the client has sent all of it.
fn continuation_flood(addr: SocketAddr) {
    let mut frames = vec![frame(HEADERS, 0, 1, &header_block(&chat_head()))];
    let filler = header_block(&[("x-flood", &"a".repeat(8000))]);
    let total = 4000;
    frames.extend((0..total).map(|_| frame(CONTINUATION, 0, 1, &filler)));
    let outcome = raw_h2(addr, &frames, false, Duration::from_secs(10));
    assert!(outcome.closed, "the flood was not cut: {outcome:?}");
    assert!(
        outcome.written < total * filler.len() / 2,
        "the gateway took {} of {} bytes before cutting the flood",
        outcome.written,
        total * filler.len()
    );
    println!(
        "hostile h2: CONTINUATION flood cut after {} KiB, GOAWAY {:?}",
        outcome.written / 1024,
        outcome.goaway
    );
}

/// PING, SETTINGS and unknown-type floods are answered or ignored without growing memory or
/// closing the connection on the client's behalf.
fn floods(addr: SocketAddr) {
    let pings: Vec<Vec<u8>> = (0..20_000u64)
        .map(|i| frame(PING, 0, 0, &i.to_be_bytes()))
        .collect();
    let settings: Vec<Vec<u8>> = (0..20_000).map(|_| frame(SETTINGS, 0, 0, &[])).collect();
    let unknown: Vec<Vec<u8>> = (0..20_000)
        .map(|_| frame(0x42, 0xff, 1, &[7; 32]))
        .collect();
    for (name, frames) in [
        ("PING", pings),
        ("SETTINGS", settings),
        ("unknown-type", unknown),
    ] {
        let outcome = raw_h2(addr, &frames, true, Duration::from_secs(10));
        assert!(
            outcome.closed,
            "{name} flood: the connection did not end after the client closed: {outcome:?}"
        );
        println!(
            "hostile h2: {name} flood of 20000 frames: {} frames back, GOAWAY {:?}",
            outcome.frames, outcome.goaway
        );
    }
}

/// Connections that go quiet are closed after the idle timeout: an h2c one after its preface,
/// an HTTP/1.1 one after a keep-alive exchange (there the client timeout, which bounds the
/// wait for the next head, comes first).
fn quiet_connections_are_closed(addr: SocketAddr) {
    let idle = Duration::from_millis(IDLE_TIMEOUT_MS);
    let started = Instant::now();
    let outcome = raw_h2(addr, &[], false, idle * 4);
    let elapsed = started.elapsed();
    assert!(
        outcome.closed,
        "an idle h2 connection was still open after {elapsed:?}: {outcome:?}"
    );
    assert!(
        elapsed >= idle,
        "closed before the idle timeout: {elapsed:?}"
    );
    println!(
        "hostile h2: idle h2c connection closed after {elapsed:?} (idle_timeout_ms {IDLE_TIMEOUT_MS}), GOAWAY {:?}",
        outcome.goaway
    );

    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(idle * 4))
        .expect("timeout set");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    stream.write_all(body).expect("body");
    let started = Instant::now();
    let mut answer = Vec::new();
    let closed = stream.read_to_end(&mut answer).is_ok();
    let elapsed = started.elapsed();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "keep-alive exchange: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        closed,
        "an idle keep-alive connection was still open after {elapsed:?}"
    );
    // HTTP/1's head timeout also bounds the wait for the next request.
    let bound = idle.min(Duration::from_millis(CLIENT_TIMEOUT_MS));
    assert!(elapsed >= bound, "closed before {bound:?}: {elapsed:?}");
    println!("hostile h2: idle HTTP/1.1 keep-alive connection closed after {elapsed:?}");
}

/// How a request over the h2 client ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum H2Reply {
    Status(u16),
    /// The stream (or the connection) was reset or refused.
    Reset,
}

async fn h2_client(addr: SocketAddr, window: Option<u32>) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let mut builder = h2::client::Builder::new();
    if let Some(window) = window {
        builder.initial_window_size(window);
    }
    let (client, connection) = builder.handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

fn h2_request(extra: &[(&str, String)]) -> http::Request<()> {
    let mut builder = http::Request::post("http://gateway/v1/chat/completions")
        .header("content-type", "application/json");
    for (name, value) in extra {
        builder = builder.header(*name, value);
    }
    builder.body(()).expect("request")
}

/// Sends one request with `body`; the answer's status, or Reset.
async fn h2_send(
    client: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: &[u8],
) -> H2Reply {
    let Ok(ready) = client.clone().ready().await else {
        return H2Reply::Reset;
    };
    *client = ready;
    let Ok((response, mut send)) = client.send_request(request, body.is_empty()) else {
        return H2Reply::Reset;
    };
    if !body.is_empty() && send.send_data(Bytes::copy_from_slice(body), true).is_err() {
        return H2Reply::Reset;
    }
    match response.await {
        Ok(response) => {
            let status = response.status().as_u16();
            let mut body = response.into_body();
            while let Some(chunk) = body.data().await {
                if chunk.is_err() {
                    break;
                }
            }
            H2Reply::Status(status)
        }
        Err(_) => H2Reply::Reset,
    }
}

/// Well-formed frames with hostile content, through a real h2 client.
async fn h2_client_cases(addr: SocketAddr, upstream: &crate::harness::MockUpstream) {
    let chat = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let mut client = h2_client(addr, None).await;
    assert_eq!(
        h2_send(&mut client, h2_request(&[]), chat).await,
        H2Reply::Status(200),
        "a clean chat over h2"
    );

    let pads: Vec<(&str, String)> = (0..200).map(|_| ("x-pad", "p".repeat(200))).collect();
    let reply = h2_send(&mut client, h2_request(&pads), chat).await;
    assert!(
        matches!(reply, H2Reply::Status(431) | H2Reply::Reset),
        "a 40 kB header list: {reply:?}"
    );
    println!("hostile h2: 40 kB header list: {reply:?}");

    let mut client = h2_client(addr, None).await;
    let huge = vec![b'x'; 200_000];
    let reply = h2_send(&mut client, h2_request(&[]), &huge).await;
    assert!(
        matches!(reply, H2Reply::Status(413) | H2Reply::Reset),
        "a 200 kB body without content-length: {reply:?}"
    );
    let reply = h2_send(
        &mut client,
        h2_request(&[("content-length", huge.len().to_string())]),
        &huge,
    )
    .await;
    assert!(
        matches!(reply, H2Reply::Status(413) | H2Reply::Reset),
        "a 200 kB body with its content-length: {reply:?}"
    );
    let reply = h2_send(&mut client, h2_request(&[]), b"{\"messages\": [").await;
    assert_eq!(reply, H2Reply::Status(400), "truncated JSON over h2");
    let reply = h2_send(
        &mut client,
        h2_request(&[("content-length", "10".to_string())]),
        chat,
    )
    .await;
    assert!(
        matches!(reply, H2Reply::Status(400) | H2Reply::Reset),
        "a body longer than its content-length: {reply:?}"
    );

    // Streams reset half-way through their bodies: nothing of them reaches the upstream.
    let before = upstream.count();
    let mut client = h2_client(addr, None).await;
    let mut resets = 0;
    for _ in 0..300 {
        let request = h2_request(&[("content-length", chat.len().to_string())]);
        let Ok(ready) = client.clone().ready().await else {
            client = h2_client(addr, None).await;
            continue;
        };
        client = ready;
        let Ok((_response, mut send)) = client.send_request(request, false) else {
            client = h2_client(addr, None).await;
            continue;
        };
        let _ = send.send_data(Bytes::copy_from_slice(&chat[..chat.len() / 2]), false);
        send.send_reset(h2::Reason::CANCEL);
        resets += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        upstream.count(),
        before,
        "a request reset mid-body reached the upstream"
    );
    println!("hostile h2: {resets} streams reset mid-body, none forwarded");

    // Rapid reset: whole requests opened and cancelled at once, thousands of them.
    let mut client = h2_client(addr, None).await;
    let mut reconnects = 0;
    for _ in 0..3000 {
        let ready = match client.clone().ready().await {
            Ok(ready) => ready,
            Err(_) => {
                reconnects += 1;
                h2_client(addr, None).await
            }
        };
        client = ready;
        if let Ok((_response, mut send)) = client.send_request(h2_request(&[]), false) {
            let _ = send.send_data(Bytes::from_static(chat), true);
            send.send_reset(h2::Reason::CANCEL);
        }
    }
    println!("hostile h2: 3000 rapid resets, {reconnects} connections refused by GOAWAY");

    // A reader that never opens its flow-control window holds only its own stream.
    let mut stuck = h2_client(addr, Some(0)).await;
    let request = h2_request(&[]);
    let stuck_reply = tokio::spawn(async move {
        let (response, mut send) = stuck.send_request(request, false).expect("sent");
        send.send_data(Bytes::from_static(chat), true)
            .expect("body");
        response.await.map(|r| r.status().as_u16())
    });
    let mut client = h2_client(addr, None).await;
    for _ in 0..10 {
        assert_eq!(
            h2_send(&mut client, h2_request(&[]), chat).await,
            H2Reply::Status(200),
            "served beside a stuck reader"
        );
    }
    let status = tokio::time::timeout(Duration::from_secs(10), stuck_reply)
        .await
        .expect("the stuck reader's head arrives (heads are not flow-controlled)")
        .expect("task");
    assert_eq!(status.ok(), Some(200));
}

#[test]
fn http2_oddities_get_resets_or_goaways_and_the_gateway_keeps_serving() {
    let runtime = crate::harness::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut running, addr, admin, upstream) = hostile_gateway(&runtime, dir.path());
    for _ in 0..20 {
        assert_eq!(clean_chat(addr), Reply::Status(200), "warm-up");
    }
    let before = rss_kib(running.0.id());
    protocol_violations(addr);
    continuation_flood(addr);
    floods(addr);
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), h2_client_cases(addr, &upstream))
            .await
            .expect("the h2 client cases finish within 2 minutes")
    });
    quiet_connections_are_closed(addr);
    let after = rss_kib(running.0.id());
    still_healthy(&mut running, addr, admin);
    println!(
        "hostile h2: gateway RSS {} MiB before, {} MiB after",
        before / 1024,
        after / 1024
    );
    assert!(
        after < before + 64 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
}
