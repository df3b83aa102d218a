//! What the gateway tells operators beyond its counters: the drift window behind the
//! `shieldgate_window_*` gauges, and OpenTelemetry traces.

use serde::{Deserialize, Serialize};

/// The sliding window of recent checks whose score quantiles and flag ratios are exported for
/// the drift alerts; reloadable.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// How far back the window reaches, in seconds.
    pub window_seconds: u64,
    /// Checks a direction and category needs in the window before its gauges are exported
    /// (fewer say little about a distribution).
    pub min_checks: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            window_seconds: 3600,
            min_checks: 100,
        }
    }
}

impl DriftConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.window_seconds == 0 {
            return Err("[drift] window_seconds must be greater than 0".into());
        }
        if self.min_checks == 0 {
            return Err("[drift] min_checks must be at least 1".into());
        }
        Ok(())
    }
}

/// OpenTelemetry traces: one span per exchange with child spans for its checks and the
/// upstream call, exported over OTLP/HTTP; off unless `otlp_endpoint` is set. Read at start.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`): spans go to its
    /// `/v1/traces`. Absent: no traces.
    pub otlp_endpoint: Option<String>,
    /// The OTLP/HTTP encoding.
    pub protocol: OtlpProtocol,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// Share of new traces recorded (a client's sampled `traceparent` is always followed).
    pub sample_ratio: f64,
    /// Headers sent to the collector (its credentials, for one).
    pub headers: std::collections::BTreeMap<String, String>,
    /// How long one export may take, in milliseconds.
    pub timeout_ms: u64,
    /// How long finished spans wait to be sent in a batch, in milliseconds.
    pub batch_delay_ms: u64,
}

/// How spans are encoded for the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum OtlpProtocol {
    /// Protocol buffers (`application/x-protobuf`), what collectors expect by default.
    #[default]
    #[serde(rename = "http/protobuf")]
    Protobuf,
    /// JSON (`application/json`).
    #[serde(rename = "http/json")]
    Json,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            protocol: OtlpProtocol::default(),
            service_name: "shieldgate".into(),
            sample_ratio: 1.0,
            headers: Default::default(),
            timeout_ms: 10_000,
            batch_delay_ms: 5_000,
        }
    }
}

impl TelemetryConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.otlp_endpoint {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| format!("[telemetry] otlp_endpoint {url:?} is not a URL: {e}"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "[telemetry] otlp_endpoint {url:?} must be an http:// or https:// URL \
                     (the collector's OTLP/HTTP port, usually 4318)"
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(format!(
                "[telemetry] sample_ratio {} must be between 0 and 1",
                self.sample_ratio
            ));
        }
        if self.timeout_ms == 0 {
            return Err("[telemetry] timeout_ms must be greater than 0".into());
        }
        Ok(())
    }

    /// Where spans are posted: the endpoint's `/v1/traces`.
    pub fn traces_url(&self) -> Option<String> {
        self.otlp_endpoint.as_ref().map(|url| {
            let base = url.trim_end_matches('/');
            match base.ends_with("/v1/traces") {
                true => base.to_string(),
                false => format!("{base}/v1/traces"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_go_to_the_collectors_v1_traces_and_bad_settings_say_why() {
        let with = |url: &str| TelemetryConfig {
            otlp_endpoint: Some(url.into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(TelemetryConfig::default().traces_url(), None);
        for url in ["http://c:4318", "http://c:4318/", "http://c:4318/v1/traces"] {
            assert_eq!(
                with(url).traces_url().as_deref(),
                Some("http://c:4318/v1/traces")
            );
            assert_eq!(with(url).validate(), Ok(()));
        }
        for (bad, says) in [
            (with("c:4318"), "must be an http:// or https:// URL"),
            (with("ftp://c/"), "must be an http:// or https:// URL"),
            (with("http://a b"), "is not a URL"),
            (
                TelemetryConfig {
                    sample_ratio: 1.5,
                    ..TelemetryConfig::default()
                },
                "sample_ratio",
            ),
        ] {
            let e = bad.validate().expect_err("refused");
            assert!(e.contains(says), "{e}");
        }
        let drift = DriftConfig {
            window_seconds: 0,
            ..DriftConfig::default()
        };
        assert!(drift.validate().is_err());
    }
}
