//! Moderation on the request path: the public routes (chat APIs proxied to the upstream with
//! input and output checks, and `/v1/moderations`), the exchange's phases, checks, decisions,
//! the decision log, metrics and the admin routes, and the state they share, whose policies
//! and thresholds reload without a restart. Transport is `crate::http`'s.

pub mod admin;
mod check;
pub mod decision;
pub mod decision_log;
pub mod error;
mod exchange;
pub mod explain;
mod headers;
mod hot_metrics;
pub mod metrics;
pub mod moderations;
pub mod pii;
pub mod protocols;
mod routes;
pub mod trace;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_sdk::trace::SdkTracer;

use crate::config::{Config, ConfigError, InjectionSettings, ProxyConfig, TelemetryConfig};
use crate::gateway::metrics::Metrics;
use crate::scorer::worker::ScorerHandle;

use self::decision_log::DecisionLog;
use self::hot_metrics::HotMetrics;
use crate::http::upstream::{Upstream, UpstreamError};
use crate::policy::profiles::Profiles;

pub use routes::route;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The upstream client cannot be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The decision log cannot be opened.
    #[error("cannot open the decision log {path}: {source}")]
    DecisionLog {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// The settings that reload without a restart.
pub struct Settings {
    /// Proxy behaviour.
    pub proxy: ProxyConfig,
    /// Profiles with their policies.
    pub profiles: Profiles,
}

/// What every request handler shares.
pub struct Gateway {
    scorer: ScorerHandle,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// The series of `metrics` every request updates, resolved.
    hot_metrics: HotMetrics,
    /// The model name reported to clients.
    pub model_name: String,
    upstream: Option<Upstream>,
    max_body_bytes: usize,
    client_timeout: Duration,
    scorer_timeout: Duration,
    settings: RwLock<Arc<Settings>>,
    decision_log: Option<DecisionLog>,
    /// The injection classifier's settings at start (it is loaded once).
    injection: InjectionSettings,
    /// Where spans go, at start (the exporter is set up once).
    telemetry: TelemetryConfig,
    /// The tracer of `[telemetry]`, when traces are exported.
    tracer: Option<SdkTracer>,
    ids: AtomicU64,
    /// This process's id, read once (each read is a system call).
    pid: u32,
    draining: AtomicBool,
}

impl Gateway {
    /// Builds the gateway state for `config` around a running scorer.
    pub fn new(
        config: &Config,
        scorer: ScorerHandle,
        model_name: String,
        metrics: Arc<Metrics>,
    ) -> Result<Self, GatewayError> {
        let settings = Settings {
            proxy: config.proxy.clone(),
            profiles: Profiles::build(config)?,
        };
        let upstream = config.upstream.as_ref().map(Upstream::new).transpose()?;
        let decision_log = config
            .decision_log
            .path
            .as_ref()
            .map(|path| {
                DecisionLog::open(path, config.decision_log.include_content).map_err(|source| {
                    GatewayError::DecisionLog {
                        path: path.display().to_string(),
                        source,
                    }
                })
            })
            .transpose()?;
        metrics.drift.configure(&config.drift);
        Ok(Self {
            scorer,
            hot_metrics: HotMetrics::new(&metrics),
            metrics,
            model_name,
            upstream,
            max_body_bytes: config.server.max_body_bytes,
            client_timeout: Duration::from_millis(config.server.client_timeout_ms),
            scorer_timeout: Duration::from_millis(config.scorer.timeout_ms),
            settings: RwLock::new(Arc::new(settings)),
            decision_log,
            injection: config.injection.clone(),
            telemetry: config.telemetry.clone(),
            tracer: None,
            ids: AtomicU64::new(1),
            pid: std::process::id(),
            draining: AtomicBool::new(false),
        })
    }

    /// The tracer spans start from, when traces are exported.
    pub fn tracer(&self) -> Option<&SdkTracer> {
        self.tracer.as_ref()
    }

    /// The gateway with traces started by `tracer` (see `crate::telemetry::traces`).
    pub fn with_tracer(mut self, tracer: Option<SdkTracer>) -> Self {
        self.tracer = tracer;
        self
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Applies the reloadable part of `config` (policies, profiles, proxy behaviour); on error
    /// the settings in force stay. Returns the new policy-set version.
    pub fn reload(&self, config: &Config) -> Result<String, ConfigError> {
        if config.injection != self.injection {
            // Profiles built for another classifier would send its categories to ShieldGemma.
            return Err(ConfigError::Invalid {
                origin: "[injection]".into(),
                reason: "the injection classifier is loaded at start: restart the gateway to \
                         change [injection]"
                    .into(),
            });
        }
        if config.telemetry != self.telemetry {
            return Err(ConfigError::Invalid {
                origin: "[telemetry]".into(),
                reason: "the trace exporter is set up at start: restart the gateway to change \
                         [telemetry]"
                    .into(),
            });
        }
        let settings = Settings {
            proxy: config.proxy.clone(),
            profiles: Profiles::build(config)?,
        };
        let version = settings.profiles.version.clone();
        self.metrics.drift.configure(&config.drift);
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        Ok(version)
    }

    /// A process-unique request id.
    pub fn next_id(&self) -> String {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut id = String::with_capacity(48);
        id.push_str("sg-");
        push_hex(&mut id, ms);
        id.push('-');
        push_hex(&mut id, self.pid.into());
        id.push('-');
        push_hex(&mut id, self.ids.fetch_add(1, Ordering::Relaxed).into());
        id
    }

    /// Marks the gateway as shutting down (readiness turns 503).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the gateway is shutting down.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Appends `n` in lower-case hex, as `{:x}` writes it (request ids are made on every request;
/// this skips the formatting machinery).
fn push_hex(out: &mut String, mut n: u128) {
    let mut digits = [0u8; 32];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

#[cfg(test)]
mod tests {
    use super::push_hex;

    #[test]
    fn hex_is_written_as_the_formatter_writes_it() {
        for n in [
            0,
            1,
            9,
            10,
            15,
            16,
            255,
            0xdead_beef,
            u128::from(u64::MAX),
            u128::MAX,
        ] {
            let mut out = String::from("id-");
            push_hex(&mut out, n);
            assert_eq!(out, format!("id-{n:x}"));
        }
    }
}
