//! Load and soak on 127.0.0.1 with wrk (Debian's package): the real binary at fixed
//! concurrency for a fixed time, first with a constant-time scorer (a completions server that
//! answers at once) beside the same load sent straight to the upstream, then with the tiny real
//! model, whose worker batches checks from concurrent requests. Zero errors, added latency,
//! and resident memory sampled through the run.
//!
//! `SHIELDGATE_SOAK_SECS=N` sets each run's length (default 4 s); `scripts/soak.sh` runs the
//! long version.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::MockUpstream;
use crate::serve::{http, spawn_serve};

/// What one wrk run reported.
#[derive(Debug, Default)]
struct Run {
    requests: u64,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Non-2xx answers plus connect, read, write and timeout errors.
    errors: u64,
}

fn soak_secs() -> u64 {
    std::env::var("SHIELDGATE_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

/// A duration as wrk prints it (`812.00us`, `1.25ms`, `2.00s`), in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().ok()?;
    Some(match unit {
        "us" => value / 1000.0,
        "ms" => value,
        "s" => value * 1000.0,
        "m" => value * 60_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Run {
    let mut run = Run::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => run.p50_ms = millis(v).unwrap_or(f64::NAN),
            ["99%", v] => run.p99_ms = millis(v).unwrap_or(f64::NAN),
            ["Requests/sec:", v] => run.per_second = v.parse().unwrap_or(f64::NAN),
            [n, "requests", "in", ..] => run.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors += n.parse().unwrap_or(1),
            ["Socket", "errors:", rest @ ..] => {
                run.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    run
}

/// Runs wrk with `connections` for `secs` seconds, POSTing a chat request to `addr`.
fn wrk(addr: SocketAddr, connections: u32, secs: u64, dir: &Path) -> Run {
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.body = '{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"What is the capital of France?\"}]}'\n",
    )
    .expect("script written");
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string()])
        .args([
            "-d",
            &format!("{secs}s"),
            "--timeout",
            "60s",
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://{addr}/v1/chat/completions"))
        .output()
        .expect("wrk runs: install Debian's wrk (scripts/test.sh does)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed: {text}");
    let run = parse_wrk(&text);
    assert!(run.requests > 0, "wrk sent nothing: {text}");
    run
}

/// Samples a process's resident memory (KiB) every 250 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples: Arc<Mutex<Vec<u64>>> = Arc::default();
        let (s, out) = (stop.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                out.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(crate::hostile::rss_kib(pid));
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    /// The samples taken.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("sampler");
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Memory through a run: (after the first quarter, at the end, highest), in MiB.
fn memory(samples: &[u64]) -> (u64, u64, u64) {
    let early = samples[samples.len() / 4];
    let last = *samples.last().expect("samples");
    let peak = *samples.iter().max().expect("samples");
    (early / 1024, last / 1024, peak / 1024)
}

fn config(dir: &Path, upstream: SocketAddr, scorer: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://{upstream}\"\n{scorer}"
        ),
    )
    .expect("config written");
    path
}

#[test]
#[ignore = "needs wrk: scripts/apt-install.sh wrk wrk (scripts/test.sh runs it)"]
fn sustained_load_has_no_errors_and_flat_memory() {
    let secs = soak_secs();
    let runtime = crate::harness::runtime();
    let completions = crate::harness::serve_on_loopback(&runtime, crate::remote::completions);
    let upstream = MockUpstream::start(&runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        upstream.addr,
        &format!(
            "[model]\nsource = \"synthetic:tiny\"\ntokenizer = {:?}\n\
             [scorer.remote]\nurls = [\"http://{completions}\"]\nmodel = \"m\"\nhealth_interval_ms = 0\n\
             [profiles.default.categories]\nhate = {{ threshold = 0.99, action = \"block\" }}\n",
            crate::common::tokenizer_path()
        ),
    );
    let (running, addr, _) = spawn_serve(&config);
    // Warm-up: the first exchange opens the pooled connections (over a second against these
    // in-test mock servers).
    let first = runtime.block_on(crate::harness::post(
        addr,
        "/v1/chat/completions",
        &[],
        &serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "warm up"}]}),
    ));
    assert_eq!(first.status, 200, "{}", first.body);
    let direct = wrk(upstream.addr, 8, secs, dir.path());
    let sampler = Sampler::start(running.0.id());
    let through = wrk(addr, 8, secs, dir.path());
    let (early, last, peak) = memory(&sampler.finish());
    println!(
        "load (constant-time scorer, 8 connections, {secs}s): {} requests, {:.0}/s, {} errors; \
         direct p50 {:.3} ms p99 {:.3} ms; through the gateway p50 {:.3} ms p99 {:.3} ms \
         (added {:.3} / {:.3}); RSS {early} MiB after a quarter, {last} MiB at the end, peak {peak}",
        through.requests,
        through.per_second,
        through.errors,
        direct.p50_ms,
        direct.p99_ms,
        through.p50_ms,
        through.p99_ms,
        through.p50_ms - direct.p50_ms,
        through.p99_ms - direct.p99_ms,
    );
    assert_eq!(through.errors, 0, "{through:?}");
    assert_eq!(direct.errors, 0, "{direct:?}");
    assert!(
        last <= early + 32,
        "memory grew under steady load: {early} → {last} MiB"
    );
}

#[test]
#[ignore = "needs wrk: scripts/apt-install.sh wrk wrk (scripts/test.sh runs it)"]
fn the_tiny_model_batches_under_contention_without_errors() {
    let secs = soak_secs();
    let runtime = crate::harness::runtime();
    let upstream = MockUpstream::start(&runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let model = crate::common::assets().join("tiny");
    let config = config(
        dir.path(),
        upstream.addr,
        &format!(
            "[model]\nsource = {:?}\n[profiles.default.categories]\n\
             dangerous = {{ threshold = 0.5, action = \"shadow\" }}\n\
             harassment = {{ threshold = 0.5, action = \"shadow\" }}\n\
             hate = {{ threshold = 0.5, action = \"shadow\" }}\n\
             sexual = {{ threshold = 0.5, action = \"shadow\" }}\n",
            model.display().to_string()
        ),
    );
    let (running, addr, admin) = spawn_serve(&config);
    let sampler = Sampler::start(running.0.id());
    let run = wrk(addr, 16, secs, dir.path());
    let (early, last, peak) = memory(&sampler.finish());
    let (status, metrics) = http(admin, "GET", "/metrics", None, b"");
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let batches = value("shieldgate_scorer_batch_texts_count");
    let texts = value("shieldgate_scorer_batch_texts_sum");
    println!(
        "load (tiny model, 16 connections, {secs}s): {} requests, {:.1}/s, {} errors, p50 {:.1} ms, \
         p99 {:.1} ms; {texts} texts in {batches} batches ({:.2} per batch); RSS {early} MiB after \
         a quarter, {last} MiB at the end, peak {peak}",
        run.requests,
        run.per_second,
        run.errors,
        run.p50_ms,
        run.p99_ms,
        texts / batches.max(1.0),
    );
    assert_eq!(run.errors, 0, "{run:?}");
    assert!(
        texts > batches,
        "concurrent checks were batched together ({texts} texts in {batches} batches)"
    );
    assert!(
        last <= early + 64,
        "memory grew under steady load: {early} → {last} MiB"
    );
}
