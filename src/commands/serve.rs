//! `shieldgate serve`: loads the config and the model, starts the scorer worker, the public
//! and admin listeners, reloads policies and thresholds on SIGHUP or file change, and drains
//! open exchanges on Ctrl-C or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use opentelemetry_sdk::trace::SdkTracer;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::ServeArgs;
use crate::config::{Config, UpstreamConfig};
use crate::gateway::metrics::Metrics;
use crate::gateway::{admin, route, Gateway};
use crate::http::server::{serve, serve_on, Limits};
use crate::http::workers::Workers;
use crate::scorer::worker::ScorerHandle;
use crate::telemetry::traces::Tracing;

use super::{load_scorer, Outcome};

/// The config file with the command-line overrides applied.
pub fn effective_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    if let Some(admin) = &args.admin_listen {
        config.server.admin_listen = admin.clone();
    }
    if let Some(url) = &args.upstream {
        match &mut config.upstream {
            Some(upstream) => upstream.url = url.clone(),
            None => config.upstream = Some(UpstreamConfig::new(url.clone())),
        }
    }
    config.model = args.model.apply(config.model);
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid settings: {e}"))?;
    Ok(config)
}

/// Runs the command.
pub fn run(args: &ServeArgs) -> anyhow::Result<Outcome> {
    let config = effective_config(args)?;
    let metrics = Arc::new(Metrics::new());
    let loaded = load_scorer(&config, &config.model)?;
    for metric in loaded.metrics {
        metrics.register(metric);
    }
    let model_name = loaded.model_name;
    let batches = metrics.batch_size.clone();
    let scorer = ScorerHandle::spawn_with_hook(
        loaded.scorer,
        config.scorer.queue,
        config.scorer.max_batch,
        Arc::new(move |n| batches.with_label_values(&[] as &[&str]).observe(n as f64)),
    )
    .context("cannot start the scorer thread")?;
    // This runtime accepts connections and serves the admin listener; the public connections
    // run on the workers.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let workers = Workers::start(config.server.workers, "shieldgate-worker")
        .context("cannot start the worker threads")?;
    let traces = Tracing::start(&config.telemetry)?;
    let served = runtime.block_on(run_servers(
        config,
        args.config.clone(),
        scorer,
        model_name,
        metrics,
        &workers,
        traces.as_ref().map(|t| t.tracer().clone()),
    ));
    if let Some(traces) = &traces {
        traces.shutdown();
    }
    served?;
    Ok(Outcome::Clean)
}

async fn run_servers(
    config: Config,
    config_path: Option<PathBuf>,
    scorer: ScorerHandle,
    model_name: String,
    metrics: Arc<Metrics>,
    workers: &Workers,
    tracer: Option<SdkTracer>,
) -> anyhow::Result<()> {
    let gw = Arc::new(Gateway::new(&config, scorer, model_name, metrics)?.with_tracer(tracer));
    let limits = Limits::from_server(&config.server);
    let public = bind(&config.server.listen).await?;
    println!(
        "shieldgate serve: listening on http://{}",
        public.local_addr()?
    );
    tracing::info!(
        workers = workers.count(),
        "public connections spread over worker threads"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if !config.server.admin_listen.is_empty() {
        let listener = bind(&config.server.admin_listen).await?;
        println!(
            "shieldgate serve: admin on http://{}",
            listener.local_addr()?
        );
        let gw = gw.clone();
        let handler = move |req| {
            let gw = gw.clone();
            async move { admin::route(&gw, &req).await }
        };
        tokio::spawn(serve(listener, limits, handler, stopped(stop_rx.clone())));
    }
    tracing::info!(version = %gw.settings().profiles.version, "gateway ready");
    {
        let gw = gw.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: draining open exchanges");
            gw.start_draining();
            let _ = stop_tx.send(true);
        });
    }
    if let Some(path) = config_path {
        tokio::spawn(watch_config(gw.clone(), path));
    }
    let timeout = Duration::from_millis(config.server.request_timeout_ms);
    let handler = move |req| route(gw.clone(), req, timeout);
    serve_on(workers, public, limits, handler, stopped(stop_rx)).await?;
    tracing::info!("shut down");
    Ok(())
}

/// Binds a listener, saying which address failed.
pub(crate) async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// Reloads on SIGHUP and whenever the file's modification time changes.
async fn watch_config(gw: Arc<Gateway>, path: PathBuf) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = modified(&path);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<()>();
        let forced = tokio::select! {
            () = hup => true,
            _ = tick.tick() => false,
        };
        let now = modified(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        match Config::load(&path).map(|c| gw.reload(&c)) {
            Ok(Ok(version)) => {
                gw.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(%version, path = %path.display(), "config reloaded");
            }
            Ok(Err(e)) | Err(e) => {
                gw.metrics.reloads.with_label_values(&["failed"]).inc();
                tracing::error!(error = %e, "config reload failed; the settings in force stay");
            }
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
