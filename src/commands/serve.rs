//! `shieldgate serve`: loads the model, starts the scorer worker and serves HTTP until Ctrl-C
//! or SIGTERM.

use std::sync::Arc;

use anyhow::Context;

use crate::cli::ServeArgs;
use crate::proxy::{serve, AppState};
use crate::scorer::worker::ScorerHandle;

use super::{load_engine, load_policies, Outcome};

/// Runs the command.
pub fn run(args: &ServeArgs) -> anyhow::Result<Outcome> {
    let policies = load_policies(&args.policy)?;
    let engine = load_engine(&args.model)?;
    let model_name = engine.model_name().to_string();
    let scorer = ScorerHandle::spawn(Arc::new(engine), args.queue, args.max_batch)
        .context("cannot start the scorer thread")?;
    let state = Arc::new(AppState::new(
        scorer,
        policies,
        model_name,
        args.max_body_bytes,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        println!("shieldgate serve: listening on http://{addr}");
        tracing::info!(%addr, "listening");
        serve(listener, state, shutdown_signal()).await?;
        tracing::info!("shut down");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Outcome::Clean)
}

async fn shutdown_signal() {
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
