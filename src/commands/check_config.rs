//! `shieldgate check-config`: validates a gateway config the way `serve` would (policies,
//! profiles, model settings, the injection classifier's source, upstream TLS files) without
//! loading a model or listening.

use anyhow::Context;

use crate::cli::CheckConfigArgs;
use crate::config::Config;
use crate::http::upstream::Upstream;
use crate::model::load::loader;
use crate::policy::profiles::Profiles;

use super::Outcome;

/// Runs the command.
pub fn run(args: &CheckConfigArgs) -> anyhow::Result<Outcome> {
    let config = Config::load(&args.config)?;
    let profiles = Profiles::build(&config)?;
    loader::parse_dtype(&config.model.dtype)?;
    crate::model::parse_device(&config.model.device)?;
    if let Some(source) = &config.injection.model {
        crate::injection::check(source, &config.injection.device)
            .with_context(|| format!("[injection] model {source:?}"))?;
    }
    if let Some(upstream) = &config.upstream {
        // Building the client needs a runtime handle for its pool.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(async { Upstream::new(upstream) })?;
    }
    if args.print {
        print!("{}", config.to_toml());
    }
    println!(
        "{}: ok (policy-set version {}, profiles: {})",
        args.config.display(),
        profiles.version,
        profiles.names().join(", ")
    );
    Ok(Outcome::Clean)
}
