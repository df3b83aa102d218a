//! Gateway overhead benchmark: added latency (p50/p99) and throughput of the gateway over going
//! straight to a local upstream, side by side with nginx as a plain reverse proxy, in one run
//! on the same requests. The scorer is a constant-time stand-in (no model), so this measures
//! the gateway itself: parsing, the input and output check round-trips through the scorer
//! worker, headers, decision, relaying. More rows put that in proportion: a bare hyper proxy
//! (the same accept loop and pooled client, no parsing, no checks: the floor of this stack),
//! the gateway with the verdict cache on (every check a hit, answered without the scorer
//! thread), with `parallel_input_check` (the input check's round trip overlaps the upstream
//! call), and on one work-stealing runtime instead of worker threads. Each row also gives the
//! proxy's CPU time per request (its threads' or processes' run time from /proc schedstat
//! over that target's rounds), a steadier figure than a tail latency on a shared machine, and
//! how busy that kept the proxy's CPUs. The requirement is absolute: a proxy's added p99 stays
//! far below one check's time, at most 1 ms at concurrency 8 (nginx is shown for information,
//! not as a bar). How far the machine's noise moves the added p99 is shown by resampling: the
//! rounds are drawn again with replacement (the same rounds for every target, as they ran side
//! by side) and the added p99 is computed for each draw.
//!
//! Run: `scripts/bench-gateway.sh` (installs nginx from Debian if needed), or
//! `cargo bench --bench gateway` with nginx on PATH. Environment: SHIELDGATE_BENCH_CONCURRENCY
//! (levels, "1,8"), SHIELDGATE_BENCH_REQUESTS (per target, 20000), SHIELDGATE_BENCH_ROUNDS (the
//! targets take turns in this many rounds, 20), SHIELDGATE_BENCH_WORKERS (the gateway's worker
//! threads and nginx's worker processes alike; default one per core, as both programs
//! default), SHIELDGATE_BENCH_NGINX (nginx binary), SHIELDGATE_BENCH_CONFIG (TOML appended to
//! the gateway's config, e.g. `[proxy]` settings), SHIELDGATE_BENCH_TARGETS (only these
//! targets, by name, separated by ';'; "direct" always runs), SHIELDGATE_BENCH_PIN (set: the
//! client and the upstream on one half of the CPUs, the proxies on the other, so that the load
//! does not compete with the proxy under test; the worker count defaults to the proxies' half).

// The binary's allocator, so that the figures are the binary's.
#[global_allocator]
static ALLOC: shieldgate::allocator::Split = shieldgate::allocator::Split;

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
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde_json::json;
use shieldgate::config::Config;
use shieldgate::config::UpstreamConfig;
use shieldgate::gateway::metrics::Metrics;
use shieldgate::gateway::{route, Gateway};
use shieldgate::http::body::{full, Body};
use shieldgate::http::server::{serve, serve_on, Handler, Limits};
use shieldgate::http::upstream::Upstream;
use shieldgate::http::workers::Workers;
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
    workers: Vec<u32>,
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
    let mut nginx = Nginx {
        child,
        workers: Vec::new(),
        binary: binary.to_string(),
        dir,
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // The master listens before it forks its workers: wait for both, or the CPU column would
    // count the idle master alone.
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            nginx.workers = children(nginx.child.id());
            if nginx.workers.len() >= workers {
                return Some((nginx, addr));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Field 4 of /proc/PID/stat, after the parenthesised name.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// CPU time in nanoseconds used so far by the threads of process `pid` that `keep` accepts
/// (by thread id and name), from /proc/PID/task/TID/schedstat.
fn cpu_ns(pid: u32, keep: impl Fn(u32, &str) -> bool) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            let tid = task.file_name().to_str().and_then(|t| t.parse().ok());
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            tid.is_some_and(|tid| keep(tid, name.trim()))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The thread names of the load's runtimes, whose CPU time is not the proxy's.
const CLIENT_THREAD: &str = "bench-client";
const UPSTREAM_THREAD: &str = "bench-upstream";

/// Whose CPU time counts as the proxy's.
enum Proxy {
    /// No proxy (the direct target).
    None,
    /// These processes (nginx's master and workers).
    Processes(Vec<u32>),
    /// This process's threads, but for the main thread, the client's and the upstream's.
    Here,
}

impl Proxy {
    fn cpu_ns(&self) -> u64 {
        match self {
            Self::None => 0,
            Self::Processes(pids) => pids.iter().map(|pid| cpu_ns(*pid, |_, _| true)).sum(),
            Self::Here => {
                let me = std::process::id();
                cpu_ns(me, |tid, name| {
                    tid != me && name != CLIENT_THREAD && name != UPSTREAM_THREAD
                })
            }
        }
    }
}

/// With SHIELDGATE_BENCH_PIN set: the CPUs this process may use, split in two halves, the
/// client's and upstream's side and the proxies' side. Threads inherit the affinity of the
/// thread that starts them, so the main thread moves to a side before it starts that side's
/// threads (and nginx).
struct Sides {
    load: CpuSet,
    proxy: CpuSet,
    load_cpus: usize,
    proxy_cpus: usize,
}

impl Sides {
    fn split() -> Sides {
        let all = sched_getaffinity(Pid::from_raw(0)).expect("the CPUs of this process");
        let cpus: Vec<usize> = (0..CpuSet::count())
            .filter(|c| all.is_set(*c).unwrap_or(false))
            .collect();
        assert!(
            cpus.len() >= 2,
            "SHIELDGATE_BENCH_PIN needs at least 2 CPUs"
        );
        let (load_cpus, proxy_cpus) = cpus.split_at(cpus.len() / 2);
        let set = |cpus: &[usize]| {
            let mut set = CpuSet::new();
            for c in cpus {
                set.set(*c).expect("a CPU number");
            }
            set
        };
        Sides {
            load: set(load_cpus),
            proxy: set(proxy_cpus),
            load_cpus: load_cpus.len(),
            proxy_cpus: proxy_cpus.len(),
        }
    }
}

/// Moves the calling thread to `cpus` (nothing without pinning).
fn pin(cpus: Option<&CpuSet>) {
    if let Some(cpus) = cpus {
        sched_setaffinity(Pid::from_raw(0), cpus).expect("pinning the main thread");
    }
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

/// Where the `p` quantile of `len` sorted times stands (nearest rank).
fn rank(len: usize, p: f64) -> usize {
    ((len as f64 - 1.0) * p).round() as usize
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    sorted[rank(sorted.len(), p)] as f64 / 1000.0
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
    // Counted before any pinning narrows what this thread may use.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sides = std::env::var_os("SHIELDGATE_BENCH_PIN").map(|_| Sides::split());
    let worker_count: usize = std::env::var("SHIELDGATE_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(sides.as_ref().map_or(cores, |s| s.proxy_cpus))
        .max(1);

    pin(sides.as_ref().map(|s| &s.load));
    let upstream_rt = runtime(UPSTREAM_THREAD, 1);
    let upstream = listen(&upstream_rt, |listener| {
        serve(listener, limits(), upstream_answer, std::future::pending())
    });

    pin(sides.as_ref().map(|s| &s.proxy));
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

    pin(sides.as_ref().map(|s| &s.load));
    let client_rt = runtime(CLIENT_THREAD, 1);
    let mut targets = vec![Target::new("direct", upstream, Proxy::None)];
    if let Some((nginx, addr)) = &nginx {
        let mut pids = nginx.workers.clone();
        pids.push(nginx.child.id());
        targets.push(Target::new("nginx", *addr, Proxy::Processes(pids)));
    }
    targets.push(Target::new("hyper proxy (floor)", bare, Proxy::Here));
    targets.push(Target::new("shieldgate", gateway_addr, Proxy::Here));
    targets.push(Target::new(
        "shieldgate, cache hits",
        cache_hits,
        Proxy::Here,
    ));
    targets.push(Target::new(
        "shieldgate, parallel input check",
        parallel,
        Proxy::Here,
    ));
    targets.push(Target::new(
        "shieldgate, work-stealing runtime",
        stealing,
        Proxy::Here,
    ));
    if let Ok(only) = std::env::var("SHIELDGATE_BENCH_TARGETS") {
        let wanted: Vec<&str> = only.split(';').map(str::trim).collect();
        targets.retain(|t| t.name == "direct" || wanted.contains(&t.name));
    }
    let placement = match &sides {
        Some(sides) => format!(
            "pinned: client and upstream on {} CPUs, the proxies on the other {}",
            sides.load_cpus, sides.proxy_cpus
        ),
        None => "not pinned".to_string(),
    };
    println!(
        "gateway overhead: POST /v1/chat/completions (JSON), {requests} requests per target and concurrency, the targets taking turns in {rounds} rounds, constant-time scorer; gateway on {worker_count} worker threads + its scorer thread (as `serve` runs), bare hyper proxy on the same workers, nginx {worker_count} worker processes, upstream and client 1 thread each; {cores} cores, {placement}"
    );
    for concurrency in levels {
        measure(&client_rt, &targets, concurrency, requests, rounds);
    }
}

/// A target of the load, and whose CPU time is the proxy's.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    proxy: Proxy,
}

impl Target {
    fn new(name: &'static str, addr: SocketAddr, proxy: Proxy) -> Self {
        Self { name, addr, proxy }
    }
}

/// One target's figures at one concurrency (milliseconds; the proxy's CPU in microseconds per
/// request).
struct Row<'a> {
    name: &'a str,
    p50: f64,
    p99: f64,
    rps: f64,
    cpu_us: Option<f64>,
}

/// What one target's rounds gathered: each round's request times (µs), in order.
#[derive(Clone, Default)]
struct Samples {
    rounds: Vec<Vec<u64>>,
    wall: Duration,
    cpu_ns: u64,
}

/// Draws of the rounds for [`Resampled`].
const DRAWS: usize = 1000;

/// The most a proxy may add to the p99 (ms); a check costs seconds on CPU, milliseconds on a
/// GPU.
const ADDED_P99_LIMIT_MS: f64 = 1.0;

/// A proxy's added p99 over [`DRAWS`] draws of the rounds with replacement (each draw takes
/// the same rounds from direct and the target).
struct Resampled {
    /// The 5th and 95th percentiles of the added p99 (ms) over the draws.
    added_5_95: (f64, f64),
    /// The share of draws in which the added p99 stayed within [`ADDED_P99_LIMIT_MS`].
    held: f64,
}

/// The p99 (ms) of the given rounds' times together; `buffer` is reused between calls.
fn p99_of(samples: &Samples, picks: &[usize], buffer: &mut Vec<u64>) -> f64 {
    buffer.clear();
    for &r in picks {
        buffer.extend_from_slice(&samples.rounds[r]);
    }
    let i = rank(buffer.len(), 0.99);
    *buffer.select_nth_unstable(i).1 as f64 / 1000.0
}

/// See [`Resampled`]; the draws come from a fixed seed, so a set of samples always gives the
/// same figures.
fn resample(direct: &Samples, target: &Samples) -> Resampled {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let rounds = direct.rounds.len();
    let mut buffer = Vec::new();
    let mut added = Vec::with_capacity(DRAWS);
    for _ in 0..DRAWS {
        let picks: Vec<usize> = (0..rounds).map(|_| rng.random_range(0..rounds)).collect();
        let base = p99_of(direct, &picks, &mut buffer);
        added.push(p99_of(target, &picks, &mut buffer) - base);
    }
    added.sort_unstable_by(f64::total_cmp);
    let held = added.iter().filter(|&&a| a <= ADDED_P99_LIMIT_MS).count();
    Resampled {
        added_5_95: (added[DRAWS / 20], added[DRAWS - 1 - DRAWS / 20]),
        held: held as f64 / DRAWS as f64,
    }
}

/// One table: every target at one concurrency.
fn measure(
    client_rt: &tokio::runtime::Runtime,
    targets: &[Target],
    concurrency: usize,
    requests: usize,
    rounds: usize,
) {
    // Interleaved rounds, so that drift in the machine's load touches every target alike.
    for target in targets {
        client_rt.block_on(load(target.addr, concurrency, requests.min(400)));
    }
    let mut samples = vec![Samples::default(); targets.len()];
    for _ in 0..rounds {
        for (k, target) in targets.iter().enumerate() {
            let cpu_before = target.proxy.cpu_ns();
            let (times, wall) =
                client_rt.block_on(load(target.addr, concurrency, requests / rounds));
            samples[k].cpu_ns += target.proxy.cpu_ns().saturating_sub(cpu_before);
            samples[k].rounds.push(times);
            samples[k].wall += wall;
        }
    }
    let rows: Vec<Row> = targets
        .iter()
        .zip(&samples)
        .map(|(target, samples)| {
            let mut times = samples.rounds.concat();
            times.sort_unstable();
            let count = times.len() as f64;
            Row {
                name: target.name,
                p50: percentile(&times, 0.5),
                p99: percentile(&times, 0.99),
                rps: count / samples.wall.as_secs_f64(),
                // None for the direct target, or where /proc has no schedstat.
                cpu_us: (samples.cpu_ns > 0).then(|| samples.cpu_ns as f64 / 1000.0 / count),
            }
        })
        .collect();
    let direct = &rows[0];
    println!();
    println!("concurrency {concurrency}:");
    println!("| target | p50 ms | p99 ms | added p50 ms | added p99 ms | requests/s | proxy CPU µs/request | proxy cores busy |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0} | {} | {} |",
            row.name,
            row.p50,
            row.p99,
            row.p50 - direct.p50,
            row.p99 - direct.p99,
            row.rps,
            row.cpu_us.map_or("–".to_string(), |us| format!("{us:.0}")),
            row.cpu_us
                .map_or("–".to_string(), |us| format!("{:.2}", us * row.rps / 1e6))
        );
    }
    let nginx = rows.iter().find(|r| r.name == "nginx");
    for (row, its_samples) in rows.iter().zip(&samples) {
        if row.name == "direct" {
            continue;
        }
        let spread = resample(&samples[0], its_samples);
        let next_to_nginx = nginx
            .filter(|n| n.name != row.name)
            .map_or(String::new(), |n| {
                format!(
                "; for information, added p99 / nginx's = {:.2}, CPU per request / nginx's = {}",
                (row.p99 - direct.p99) / (n.p99 - direct.p99),
                row.cpu_us
                    .zip(n.cpu_us)
                    .map_or("–".to_string(), |(us, theirs)| format!("{:.2}", us / theirs))
            )
            });
        println!(
            "{}: added p99 {:.3} ms (requirement ≤ {ADDED_P99_LIMIT_MS} ms at concurrency 8; over {DRAWS} draws of the rounds: 5–95 % {:.3} to {:.3} ms, within it in {:.0} %){next_to_nginx}",
            row.name,
            row.p99 - direct.p99,
            spread.added_5_95.0,
            spread.added_5_95.1,
            spread.held * 100.0,
        );
    }
}
