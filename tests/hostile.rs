//! Hostile HTTP against the real binary: thousands of malformed requests (random bytes,
//! truncated and corrupted JSON, invalid UTF-8, wrong content types, huge heads and bodies,
//! broken framing, HTTP/2 garbage, absolute-form targets), trickling heads and bodies. The
//! gateway never crashes or hangs, answers a 4xx (or closes the connection) where the fault is
//! the client's and never a 5xx, keeps its memory bounded, and serves normal traffic afterwards.
//!
//! `SHIELDGATE_HOSTILE_REQUESTS=N` sets how many malformed requests are sent (default 2000).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::harness::MockUpstream;
use crate::serve::spawn_serve;

const MAX_BODY: usize = 65536;
const MAX_HEAD: usize = 8192;
pub const CLIENT_TIMEOUT_MS: u64 = 1000;
pub const IDLE_TIMEOUT_MS: u64 = 2000;

/// How the gateway answered one raw exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reply {
    /// An HTTP/1 status line.
    Status(u16),
    /// The connection closed (or reset) without an HTTP/1 answer.
    Closed,
}

/// Sends `bytes` on a fresh connection (half-closing it when `close_write`), reads the answer
/// to the end; panics when nothing arrives within 10 s (a hung gateway).
pub fn exchange(addr: SocketAddr, bytes: &[u8], close_write: bool, case: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout set");
    // The gateway may answer and close before it has read everything: a broken pipe is fine.
    let _ = stream.write_all(bytes);
    if close_write {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the gateway hung on {case}: nothing more within 10 s after {raw:?}")
            }
            Err(_) => break,
        }
    }
    status_of(&raw).map_or(Reply::Closed, Reply::Status)
}

fn status_of(raw: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(raw.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn head(path: &str, content_type: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {length}\r\n{extra}\r\n"
    )
}

fn request(body: &[u8], content_type: &str, extra: &str) -> Vec<u8> {
    let mut out = head("/v1/chat/completions", content_type, body.len(), extra).into_bytes();
    out.extend_from_slice(body);
    out
}

fn chat_body(rng: &mut StdRng) -> Vec<u8> {
    let words = [
        "hello", "what", "is", "the", "weather", "like", "today", "é", "日本",
    ];
    let text: Vec<&str> = (0..rng.random_range(1..40))
        .map(|_| words[rng.random_range(0..words.len())])
        .collect();
    json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": text.join(" ")}
        ],
        "stream": rng.random_bool(0.5)
    })
    .to_string()
    .into_bytes()
}

/// One malformed exchange: its name, the bytes, whether to half-close, and the answers
/// allowed.
struct Case {
    name: &'static str,
    bytes: Vec<u8>,
    close_write: bool,
    allowed: &'static [Reply],
}

const CLOSED_OR_400: &[Reply] = &[Reply::Closed, Reply::Status(400)];

fn case(i: usize, rng: &mut StdRng) -> Case {
    let body = chat_body(rng);
    let (name, bytes, close_write, allowed): (_, _, _, &'static [Reply]) = match i % 12 {
        0 => {
            let n = rng.random_range(1..2048);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            ("random bytes", bytes, true, CLOSED_OR_400)
        }
        1 => {
            let cut = rng.random_range(0..body.len());
            let bytes = request(&body[..cut], "application/json", "");
            ("truncated JSON", bytes, false, &[Reply::Status(400)])
        }
        2 => {
            let mut corrupt = body.clone();
            for _ in 0..rng.random_range(1..6) {
                let at = rng.random_range(0..corrupt.len());
                corrupt[at] = rng.random();
            }
            let bytes = request(&corrupt, "application/json", "");
            (
                "corrupted JSON",
                bytes,
                false,
                &[Reply::Status(200), Reply::Status(400)],
            )
        }
        3 => {
            let text = String::from_utf8_lossy(&body).into_owned();
            let at = text.rfind("\"content\":\"").map_or(0, |p| p + 11);
            let mut bytes = body[..at].to_vec();
            bytes.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
            bytes.extend_from_slice(&body[at..]);
            let bytes = request(&bytes, "application/json", "");
            ("invalid UTF-8", bytes, false, &[Reply::Status(400)])
        }
        4 => {
            let types = [
                "text/plain",
                "multipart/form-data; boundary=x",
                "application/xml",
                "",
            ];
            let kind = types[rng.random_range(0..types.len())];
            let bytes = request(&body, kind, "");
            ("wrong content type", bytes, false, &[Reply::Status(415)])
        }
        5 => {
            let size = rng.random_range(MAX_HEAD + 1..4 * MAX_HEAD);
            let extra = format!("X-Padding: {}\r\n", "a".repeat(size));
            let bytes = request(&body, "application/json", &extra);
            ("huge header", bytes, false, &[Reply::Status(431)])
        }
        6 => {
            let size = rng.random_range(MAX_BODY + 1..4 * MAX_BODY);
            let bytes = request(&vec![b' '; size], "application/json", "");
            ("huge body", bytes, false, &[Reply::Status(413)])
        }
        7 => {
            let size = rng.random_range(MAX_BODY + 1..4 * MAX_BODY);
            let mut bytes = "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n\
                 Connection: close\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n"
                .as_bytes()
                .to_vec();
            for chunk in vec![b' '; size].chunks(4096) {
                bytes.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                bytes.extend_from_slice(chunk);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
            ("huge chunked body", bytes, false, &[Reply::Status(413)])
        }
        8 => {
            let mut bytes = head(
                "/v1/chat/completions",
                "application/json",
                body.len() + 100,
                "",
            )
            .into_bytes();
            bytes.extend_from_slice(&body);
            ("body shorter than its length", bytes, true, CLOSED_OR_400)
        }
        9 => {
            let mut bytes = head(
                "/v1/chat/completions",
                "application/json",
                body.len(),
                "Transfer-Encoding: chunked\r\n",
            )
            .into_bytes();
            bytes.extend_from_slice(b"zz\r\n");
            bytes.extend_from_slice(&body);
            ("conflicting framing, bad chunk", bytes, true, CLOSED_OR_400)
        }
        10 => {
            let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            let n = rng.random_range(0..512);
            bytes.extend((0..n).map(|_| rng.random::<u8>()));
            (
                "HTTP/2 preface and garbage frames",
                bytes,
                true,
                &[Reply::Closed],
            )
        }
        _ => {
            let mut bytes = format!(
                "POST http://169.254.169.254/v1/chat/completions HTTP/1.1\r\n\
                 Host: 169.254.169.254\r\nConnection: close\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            bytes.extend_from_slice(&body);
            // Only the configured upstream is ever dialled (169.254.169.254 would be a 502).
            ("absolute-form target", bytes, false, &[Reply::Status(200)])
        }
    };
    Case {
        name,
        bytes,
        close_write,
        allowed,
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

const SECRET_KEY: &str = "sk-hostile-test-key-5150";
const SECRET_TEXT: &str = "confidential-words-8675309";

pub fn clean_chat(addr: SocketAddr) -> Reply {
    let body =
        format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{SECRET_TEXT}"}}]}}"#);
    let key = format!("Authorization: Bearer {SECRET_KEY}\r\n");
    exchange(
        addr,
        &request(body.as_bytes(), "application/json", &key),
        false,
        "clean chat",
    )
}

/// Connections that send their head (or body) one byte at a time are cut after the client
/// timeout while other clients are served.
fn trickling_clients_are_cut(addr: SocketAddr) {
    let started = Instant::now();
    let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let full = request(body, "application/json", "");
    let head_len = full.len() - body.len();
    let mut slow: Vec<(TcpStream, bool)> = (0..48)
        .map(|i| {
            let mut s = TcpStream::connect(addr).expect("connects");
            s.set_read_timeout(Some(Duration::from_millis(10)))
                .expect("timeout");
            // Half of them trickle the head, half send the head and trickle the body.
            let in_body = i % 2 == 1;
            if in_body {
                s.write_all(&full[..head_len]).expect("head");
            }
            (s, in_body)
        })
        .collect();
    let mut answers: Vec<Option<Reply>> = vec![None; slow.len()];
    let mut served_meanwhile = 0;
    let mut sent = 0;
    while answers.iter().any(Option::is_none) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "trickling connections still open after 20 s: {answers:?}"
        );
        for ((stream, in_body), answer) in slow.iter_mut().zip(&mut answers) {
            if answer.is_some() {
                continue;
            }
            let at = if *in_body { head_len + sent } else { sent };
            let _ = stream.write_all(&full[at.min(full.len() - 1)..][..1]);
            let mut buf = [0u8; 512];
            match stream.read(&mut buf) {
                Ok(n) => *answer = Some(status_of(&buf[..n]).map_or(Reply::Closed, Reply::Status)),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => *answer = Some(Reply::Closed),
            }
        }
        sent += 1;
        assert_eq!(
            clean_chat(addr),
            Reply::Status(200),
            "served while trickled"
        );
        served_meanwhile += 1;
    }
    assert!(served_meanwhile > 0);
    for ((_, in_body), answer) in slow.iter().zip(&answers) {
        let expected = if *in_body {
            Reply::Status(408)
        } else {
            Reply::Closed
        };
        let answer = answer.expect("answered");
        assert!(
            answer == expected || answer == Reply::Status(408),
            "a trickling {} got {answer:?}",
            if *in_body { "body" } else { "head" }
        );
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(CLIENT_TIMEOUT_MS),
        "cut before the client timeout: {elapsed:?}"
    );
    println!(
        "hostile: 48 trickling connections cut after {elapsed:?}, {served_meanwhile} clean requests served meanwhile"
    );
}

/// A gateway binary for hostile clients: the limits above, a mock remote scorer, the mock
/// upstream, input checks only. Returns it with its public and admin addresses; `dir` holds
/// its config.
pub fn hostile_gateway(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
) -> (
    crate::common::KillOnDrop,
    SocketAddr,
    SocketAddr,
    MockUpstream,
) {
    let scorer = crate::harness::serve_on_loopback(runtime, crate::remote::completions);
    let upstream = MockUpstream::start(runtime);
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             max_body_bytes = {MAX_BODY}\nmax_header_bytes = {MAX_HEAD}\n\
             client_timeout_ms = {CLIENT_TIMEOUT_MS}\nidle_timeout_ms = {IDLE_TIMEOUT_MS}\n\
             [model]\nsource = \"synthetic:tiny\"\ntokenizer = {:?}\n\
             [scorer.remote]\nurls = [\"http://{scorer}\"]\nmodel = \"m\"\nhealth_interval_ms = 0\n\
             [upstream]\nurl = \"http://{}\"\n\
             [proxy]\noutput_mode = \"off\"\n\
             [profiles.default.categories]\nhate = {{ threshold = 0.99, action = \"block\" }}\n",
            crate::common::tokenizer_path(),
            upstream.addr
        ),
    )
    .expect("config written");
    let (running, addr, admin) = spawn_serve(&config);
    (running, addr, admin, upstream)
}

/// Asserts the gateway still runs, answered no 5xx (by its metrics) and holds no secret in
/// them, and serves clean requests.
pub fn still_healthy(running: &mut crate::common::KillOnDrop, addr: SocketAddr, admin: SocketAddr) {
    assert!(
        running.0.try_wait().expect("wait").is_none(),
        "the gateway exited"
    );
    for _ in 0..20 {
        assert_eq!(clean_chat(addr), Reply::Status(200), "served afterwards");
    }
    let (status, metrics) = crate::serve::http(admin, "GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    let server_errors: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("shieldgate_requests_total") && l.contains("status=\"5"))
        .collect();
    assert!(server_errors.is_empty(), "5xx answered: {server_errors:?}");
    assert!(
        !metrics.contains(SECRET_KEY) && !metrics.contains(SECRET_TEXT),
        "the metrics hold an API key or content"
    );
}

#[test]
fn hostile_clients_get_4xx_or_closed_and_the_gateway_keeps_serving() {
    let runtime = crate::harness::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut running, addr, admin, _upstream) = hostile_gateway(&runtime, dir.path());
    let pid = running.0.id();
    for _ in 0..50 {
        assert_eq!(clean_chat(addr), Reply::Status(200), "warm-up");
    }
    let before = rss_kib(pid);

    let total: usize = std::env::var("SHIELDGATE_HOSTILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let threads = 4;
    let tallies: Vec<BTreeMap<(&'static str, Reply), usize>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(0x5eed + t as u64);
                    let mut tally = BTreeMap::new();
                    for i in (t..total).step_by(threads) {
                        let case = case(i, &mut rng);
                        let reply = exchange(addr, &case.bytes, case.close_write, case.name);
                        assert!(
                            case.allowed.contains(&reply),
                            "{} got {reply:?}, allowed {:?}: {:?}",
                            case.name,
                            case.allowed,
                            String::from_utf8_lossy(&case.bytes[..case.bytes.len().min(300)])
                        );
                        *tally.entry((case.name, reply)).or_insert(0) += 1;
                    }
                    tally
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let mut tally: BTreeMap<(&str, Reply), usize> = BTreeMap::new();
    for t in tallies {
        for (k, n) in t {
            *tally.entry(k).or_insert(0) += n;
        }
    }
    trickling_clients_are_cut(addr);

    let after = rss_kib(pid);
    still_healthy(&mut running, addr, admin);
    println!("hostile: {total} malformed requests, answers by case:");
    for ((name, reply), n) in &tally {
        println!("  {name:<36} {reply:?}: {n}");
    }
    println!(
        "hostile: gateway RSS {} MiB before, {} MiB after (+{} KiB)",
        before / 1024,
        after / 1024,
        after.saturating_sub(before)
    );
    assert!(
        after < before + 64 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
}
