//! What the gateway tells operators beyond its counters: the drift window behind the
//! `shieldgate_window_*` gauges.

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
