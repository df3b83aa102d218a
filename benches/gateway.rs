//! Gateway overhead benchmark: added latency (p50/p99) and throughput of the gateway over going
//! straight to a local upstream, side by side with nginx as a plain reverse proxy, in one run
//! on the same requests. The scorer is a constant-time stand-in (no model), so this measures
//! the gateway itself: parsing, the input and output check round-trips through the scorer
//! worker, headers, decision, relaying. More rows put that in proportion: a bare hyper proxy
//! (the same accept loop and pooled client, no parsing, no checks: the floor of this stack),
//! the gateway with the verdict cache on (every check a hit, answered without the scorer
//! thread), with `parallel_input_check` (the input check's round trip overlaps the upstream
//! call), and on one work-stealing runtime instead of worker threads.
//!
//! Run: `scripts/bench-gateway.sh` (installs nginx from Debian if needed), or
//! `cargo bench --bench gateway` with nginx on PATH. Environment: SHIELDGATE_BENCH_CONCURRENCY
//! (levels, "1,8"), SHIELDGATE_BENCH_REQUESTS (per target, 20000), SHIELDGATE_BENCH_ROUNDS (the
//! targets take turns in this many rounds, 20), SHIELDGATE_BENCH_WORKERS (the gateway's worker
//! threads and nginx's worker processes alike; default one per core, as both programs
//! default), SHIELDGATE_BENCH_NGINX (nginx binary), SHIELDGATE_BENCH_CONFIG (TOML appended to
//! the gateway's config, e.g. `[proxy]` settings).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use shieldgate::config::Config;
use shieldgate::config::UpstreamConfig;
use shieldgate::metrics::Metrics;
use shieldgate::proxy::body::{full, Body};
use shieldgate::proxy::server::{serve, serve_on, Handler, Limits};
use shieldgate::proxy::upstream::Upstream;
use shieldgate::proxy::workers::Workers;
use shieldgate::proxy::{route, Gateway};
use shieldgate::scorer::cache::CachedScorer;
use shieldgate::scorer::worker::ScorerHandle;
use shieldgate::scorer::{PolicyScore, RequestScores, Score, ScoreError, ScoreRequest};

/// Answers every request with the same low scores at once.
struct Constant;

impl Score for Constant {
    fn score(&self, requests: &[ScoreRequest]) -> Result<Vec<RequestScores>, ScoreError> {
        Ok(requests
            .iter()
            .map(|r| RequestScores {
                scores: r
                    .policies
                    .iter()
                    .map(|p| PolicyScore {
                        id: p.id.clone(),
                        p_yes: 0.01,
                        yes_logit: -2.3,
                        no_logit: 2.3,
                        tokens: 1,
                    })
                    .collect(),
                truncated: None,
            })
            .collect())
    }
}

const ANSWER: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Sure, here is a short and friendly answer to your question."},"finish_reason":"stop"}],"usage":{"prompt_tokens":20,"completion_tokens":12,"total_tokens":32}}"#;

fn runtime(name: &str, threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

fn limits() -> Limits {
    Limits {
        shutdown_grace: Duration::from_secs(1),
        ..Limits::default()
    }
}

async fn upstream_answer(_: Request<hyper::body::Incoming>) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from_static(ANSWER.as_bytes())));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("ct"));
    r
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// nginx (its master process), its binary and its folder (config, pid file).
struct Nginx {
    child: Child,
    binary: String,
    dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `-s stop`: the master stops its workers before it exits (killing it would orphan them).
        let stop = Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(self.dir.path())
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status();
        if !stop.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// nginx with `workers` worker processes as a plain reverse proxy to `upstream`.
fn start_nginx(binary: &str, upstream: SocketAddr, workers: usize) -> Option<(Nginx, SocketAddr)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let conf = format!(
        "worker_processes {workers};\nerror_log stderr error;\npid {dir}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n access_log off;\n client_body_temp_path {dir};\n proxy_temp_path {dir};\n\
         upstream up {{ server {upstream}; keepalive 64; }}\n\
         server {{ listen 127.0.0.1:{port};\n  location / {{ proxy_pass http://up; proxy_http_version 1.1;\n\
         proxy_set_header Connection \"\"; proxy_buffering off; }} }}\n}}\n",
        dir = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).expect("nginx.conf written");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    // Stopped when dropped, also when it never answers.
    let nginx = Nginx {
        child,
        binary: binary.to_string(),
        dir,
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some((nginx, addr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A gateway for `config` with `scorer` behind its scorer thread, as `serve` builds it.
fn gateway(config: &Config, scorer: Arc<dyn Score>) -> Arc<Gateway> {
    let scorer = ScorerHandle::spawn(scorer, 1024, 16).expect("scorer thread");
    Arc::new(
        Gateway::new(config, scorer, "constant".into(), Arc::new(Metrics::new())).expect("gateway"),
    )
}

/// Binds a port on `rt` and runs `server` there with its listener.
fn listen<S, Fut>(rt: &tokio::runtime::Runtime, server: S) -> SocketAddr
where
    S: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(server(listener));
        addr
    })
}

/// Serves `handler` as `serve` does: accepting on `rt`, the connections on `workers`.
fn spread<F, Fut>(rt: &tokio::runtime::Runtime, workers: Arc<Workers>, handler: F) -> SocketAddr
where
    F: Handler<Fut>,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    listen(rt, move |listener| async move {
        serve_on(
            &workers,
            listener,
            limits(),
            handler,
            std::future::pending(),
        )
        .await
    })
}

/// The least a proxy on this stack does: the gateway's accept loop, workers and upstream
/// client, the request and the answer passed on whole, nothing parsed, nothing checked.
fn bare_proxy(
    rt: &tokio::runtime::Runtime,
    workers: Arc<Workers>,
    upstream: SocketAddr,
) -> SocketAddr {
    let upstream = Arc::new(
        Upstream::new(&UpstreamConfig::new(format!("http://{upstream}"))).expect("client"),
    );
    let forward = move |req: Request<hyper::body::Incoming>| {
        let upstream = upstream.clone();
        async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.expect("request body").to_bytes();
            let answer = upstream.send(parts, bytes).await.expect("upstream answer");
            let (head, body) = answer.into_parts();
            let bytes = body.collect().await.expect("answer body").to_bytes();
            Response::from_parts(head, full(bytes))
        }
    };
    spread(rt, workers, forward)
}

/// Latencies in microseconds and the wall time.
async fn load(addr: SocketAddr, concurrency: usize, requests: usize) -> (Vec<u64>, Duration) {
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "What is a good name for a cat?"}]})
        .to_string();
    let started = Instant::now();
    let per_task = requests / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::with_capacity(per_task);
            for _ in 0..per_task {
                let req = Request::post(format!("http://{addr}/v1/chat/completions"))
                    .header("content-type", "application/json")
                    .header("authorization", "Bearer sk-bench")
                    .body(full(body.clone()))
                    .expect("request");
                let t = Instant::now();
                let response = client.request(req).await.expect("response");
                assert!(response.status().is_success(), "{}", response.status());
                response.into_body().collect().await.expect("body");
                times.push(t.elapsed().as_micros() as u64);
            }
            times
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    (all, started.elapsed())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let levels: Vec<usize> = std::env::var("SHIELDGATE_BENCH_CONCURRENCY")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|c| *c > 0)
        .collect();
    let requests: usize = std::env::var("SHIELDGATE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let rounds: usize = std::env::var("SHIELDGATE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
        .max(1);
    let nginx_bin = std::env::var("SHIELDGATE_BENCH_NGINX").unwrap_or_else(|_| "nginx".into());
    let worker_count: usize = std::env::var("SHIELDGATE_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);

    let upstream_rt = runtime("bench-upstream", 1);
    let upstream = listen(&upstream_rt, |listener| {
        serve(listener, limits(), upstream_answer, std::future::pending())
    });

    let accept_rt = runtime("bench-accept", 1);
    let workers = Arc::new(Workers::start(worker_count, "bench-gateway-worker").expect("workers"));
    let extra = std::env::var("SHIELDGATE_BENCH_CONFIG").unwrap_or_default();
    let config = Config::parse(
        &format!("[upstream]\nurl = \"http://{upstream}\"\n{extra}"),
        "bench",
    )
    .expect("config");
    let constant: Arc<dyn Score> = Arc::new(Constant);
    let cached = CachedScorer::new(
        constant.clone(),
        NonZeroUsize::new(64).expect("nonzero"),
        "constant",
    );
    let timeout = Duration::from_secs(30);
    let plain = gateway(&config, constant.clone());
    let gateway_addr = spread(&accept_rt, workers.clone(), move |req| {
        route(plain.clone(), req, timeout)
    });
    let hits = gateway(&config, Arc::new(cached));
    let cache_hits = spread(&accept_rt, workers.clone(), move |req| {
        route(hits.clone(), req, timeout)
    });
    let mut side_by_side = config.clone();
    side_by_side.proxy.parallel_input_check = true;
    let beside = gateway(&side_by_side, constant.clone());
    let parallel = spread(&accept_rt, workers.clone(), move |req| {
        route(beside.clone(), req, timeout)
    });
    let bare = bare_proxy(&accept_rt, workers.clone(), upstream);
    // The same gateway with its connections on one work-stealing runtime of as many threads.
    let stealing_rt = runtime("bench-stealing", worker_count);
    let stolen = gateway(&config, constant);
    let stealing = listen(&stealing_rt, move |listener| {
        serve(
            listener,
            limits(),
            move |req| route(stolen.clone(), req, timeout),
            std::future::pending(),
        )
    });
    let nginx = start_nginx(&nginx_bin, upstream, worker_count);
    if nginx.is_none() {
        eprintln!(
            "nginx ({nginx_bin}) did not start: run scripts/bench-gateway.sh, which installs it"
        );
    }

    let client_rt = runtime("bench-client", 1);
    let mut targets = vec![("direct", upstream)];
    if let Some((_, addr)) = &nginx {
        targets.push(("nginx", *addr));
    }
    targets.push(("hyper proxy (floor)", bare));
    targets.push(("shieldgate", gateway_addr));
    targets.push(("shieldgate, cache hits", cache_hits));
    targets.push(("shieldgate, parallel input check", parallel));
    targets.push(("shieldgate, work-stealing runtime", stealing));
    println!(
        "gateway overhead: POST /v1/chat/completions (JSON), {requests} requests per target and concurrency, the targets taking turns in {rounds} rounds, constant-time scorer; gateway on {worker_count} worker threads + its scorer thread (as `serve` runs), bare hyper proxy on the same workers, nginx {worker_count} worker processes, upstream and client 1 thread each; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for concurrency in levels {
        measure(&client_rt, &targets, concurrency, requests, rounds);
    }
}

/// One target's figures at one concurrency (milliseconds).
struct Row<'a> {
    name: &'a str,
    p50: f64,
    p99: f64,
    rps: f64,
}

/// One table: every target at one concurrency.
fn measure(
    client_rt: &tokio::runtime::Runtime,
    targets: &[(&str, SocketAddr)],
    concurrency: usize,
    requests: usize,
    rounds: usize,
) {
    // Interleaved rounds, so that drift in the machine's load touches every target alike.
    for (_, addr) in targets {
        client_rt.block_on(load(*addr, concurrency, requests.min(400)));
    }
    let mut samples: Vec<(Vec<u64>, Duration)> = vec![(Vec::new(), Duration::ZERO); targets.len()];
    for _ in 0..rounds {
        for (k, (_, addr)) in targets.iter().enumerate() {
            let (times, wall) = client_rt.block_on(load(*addr, concurrency, requests / rounds));
            samples[k].0.extend(times);
            samples[k].1 += wall;
        }
    }
    let rows: Vec<Row> = targets
        .iter()
        .zip(samples)
        .map(|((name, _), (mut times, wall))| {
            times.sort_unstable();
            Row {
                name,
                p50: percentile(&times, 0.5),
                p99: percentile(&times, 0.99),
                rps: times.len() as f64 / wall.as_secs_f64(),
            }
        })
        .collect();
    let direct = &rows[0];
    println!();
    println!("concurrency {concurrency}:");
    println!("| target | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} |",
            row.name,
            row.p50,
            row.p99,
            row.p50 - direct.p50,
            row.p99 - direct.p99,
            row.rps
        );
    }
    let Some(nginx) = rows.iter().find(|r| r.name == "nginx") else {
        return;
    };
    for row in rows.iter().filter(|r| r.name.starts_with("shieldgate")) {
        println!(
            "{}: added p99 / nginx added p99 = {:.2} (target ≤ 2); throughput ratio to nginx = {:.2}",
            row.name,
            (row.p99 - direct.p99) / (nginx.p99 - direct.p99),
            row.rps / nginx.rps
        );
    }
}
