//! The shipped Prometheus rules (`deploy/prometheus/`) cannot drift from the metrics: every
//! series they read is one shieldgate exports, every alert has promtool cases, and (with
//! Debian's promtool) the rules check and their unit tests pass.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use crate::common;

fn folder() -> PathBuf {
    common::root().join("deploy/prometheus")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(folder().join(name)).expect("rules file")
}

/// The `shieldgate_*` metric names a text mentions, histogram suffixes taken off.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("shieldgate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name);
        names.insert(base.to_string());
    }
    names
}

/// The values of `key: NAME` lines.
fn values_of(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| {
            l.trim()
                .trim_start_matches("- ")
                .trim_start_matches('{')
                .strip_prefix(key)
        })
        .map(|v| v.split([',', '}']).next().unwrap_or(v).trim().to_string())
        .collect()
}

#[test]
fn the_rules_read_only_exported_metrics_and_every_alert_is_tested() {
    let rules = read("shieldgate-rules.yml");
    let metrics = std::fs::read_to_string(common::root().join("docs/metrics.md")).expect("docs");
    let exported = metric_names(&metrics);
    let used = metric_names(&rules);
    assert!(used.len() >= 6, "{used:?}");
    for name in &used {
        assert!(exported.contains(name), "{name} is not an exported metric");
    }
    let alerts = values_of(&rules, "alert: ");
    let tested = values_of(&read("shieldgate-rules.test.yml"), "alertname: ");
    assert!(alerts.len() >= 6, "{alerts:?}");
    assert_eq!(alerts, tested, "every alert needs promtool cases");
}

#[test]
#[ignore = "needs promtool: scripts/apt-install.sh promtool prometheus (scripts/test.sh runs it)"]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    for args in [
        ["check", "rules", "shieldgate-rules.yml"],
        ["test", "rules", "shieldgate-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(folder())
            .output()
            .expect("promtool runs (scripts/apt-install.sh promtool prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
