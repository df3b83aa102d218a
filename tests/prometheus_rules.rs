//! The shipped Prometheus rules (`deploy/prometheus/`) and Grafana dashboard
//! (`deploy/grafana/`) cannot drift from the metrics: every series they read is one shieldgate
//! exports and every alert has promtool cases; with Debian's promtool the rules check and their
//! unit tests pass, and a real Prometheus scraping the real binary, with a baseline written by
//! `audit --baseline`, fires the drift alerts on shifted scores and the fail-open alert, and
//! answers every dashboard query with data.

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
    let dashboard = std::fs::read_to_string(common::root().join("deploy/grafana/shieldgate.json"))
        .expect("dashboard");
    for name in metric_names(&dashboard) {
        assert!(
            exported.contains(&name),
            "the dashboard reads {name}, not exported"
        );
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

/// Percent-encodes a form value.
fn form_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server on 127.0.0.1 scraping `admin` every second with the shipped rules
/// (their `for:` durations cut to nothing, so that alerts fire within the test) and a drift
/// baseline.
struct Prometheus {
    addr: std::net::SocketAddr,
    _process: common::KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(admin: std::net::SocketAddr, baseline: &std::path::Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(baseline, dir.path().join("baseline.yml")).expect("baseline copied");
        let rules: String = read("shieldgate-rules.yml")
            .lines()
            .map(|l| match l.trim_start().strip_prefix("for: ") {
                Some(_) => l.replace(l.trim_start(), "for: 0s"),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("rules written");
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yml, baseline.yml]\n\
                 scrape_configs:\n  - job_name: shieldgate\n    static_configs:\n      - targets: ['{admin}']\n"
            ),
        )
        .expect("config written");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let process = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus starts (scripts/apt-install.sh promtool prometheus)");
        Self {
            addr,
            _process: common::KillOnDrop(process),
            _dir: dir,
        }
    }

    fn get(&self, runtime: &tokio::runtime::Runtime, path: &str) -> serde_json::Value {
        let a = runtime.block_on(crate::harness::send(
            self.addr,
            "GET",
            path,
            &[],
            Vec::new(),
        ));
        serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null)
    }

    /// The result vector of an instant query, or why it failed.
    fn query(
        &self,
        runtime: &tokio::runtime::Runtime,
        expr: &str,
    ) -> Result<Vec<serde_json::Value>, String> {
        let v = self.get(
            runtime,
            &format!("/api/v1/query?query={}", form_value(expr)),
        );
        match v["status"].as_str() {
            Some("success") => Ok(v["data"]["result"].as_array().cloned().unwrap_or_default()),
            _ => Err(v.to_string()),
        }
    }

    /// Waits up to 60 s for `done` to hold.
    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..600 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("{what} within 60 s");
    }
}

/// Every PromQL expression of the Grafana dashboard, with its variables set to all.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = common::root().join("deploy/grafana/shieldgate.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["expr"].as_str())
                .map(|e| e.replace("$job", ".*").replace("$__rate_interval", "1m"))
                .map(move |e| (title.clone(), e))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
#[ignore = "needs prometheus: scripts/apt-install.sh promtool prometheus (scripts/test.sh runs it)"]
fn a_real_prometheus_scrapes_the_gateway_fires_the_drift_and_fail_open_alerts_and_answers_the_dashboard(
) {
    use serde_json::json;
    let runtime = crate::harness::runtime();
    let scorer_runtime = crate::harness::runtime();
    let completions =
        crate::harness::serve_on_loopback(&scorer_runtime, crate::remote::completions);
    let upstream = crate::harness::MockUpstream::start(&runtime);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        crate::remote::gateway_config(
            upstream.addr,
            completions,
            "[drift]\nmin_checks = 3\n\
             [profiles.default.categories]\nhate = { threshold = 0.5, action = \"flag\" }\n\
             dangerous = { threshold = 0.5, action = \"block\" }\n",
        ),
    )
    .expect("config written");
    // The baseline: an audit of calm conversations (the mock scores hate low for them).
    let log = dir.path().join("calm.jsonl");
    let calm: String = (0..5)
        .map(|i| {
            format!("{{\"messages\": [{{\"role\": \"user\", \"content\": \"[calm] {i}\"}}]}}\n")
        })
        .collect();
    std::fs::write(&log, calm).expect("log written");
    let baseline = dir.path().join("baseline.yml");
    let out = dir.path().join("audit");
    let audit = crate::remote::audit(
        &log,
        &out,
        &config,
        &["--baseline", baseline.to_str().expect("utf-8")],
    );
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&audit.stderr)
    );
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&baseline)
        .output()
        .expect("promtool runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let (_gateway, addr, admin) = crate::serve::spawn_serve(&config);
    let prometheus = Prometheus::start(admin, &baseline);
    prometheus.wait_for("Prometheus ready", || {
        std::net::TcpStream::connect(prometheus.addr).is_ok()
            && prometheus.get(&runtime, "/api/v1/status/buildinfo")["status"] == "success"
    });

    let chat = |text: &str| json!({"model": "m", "messages": [{"role": "user", "content": text}]});
    for i in 0..6 {
        let a = runtime.block_on(crate::harness::post(
            addr,
            "/v1/chat/completions",
            &[],
            &chat(&format!("question {i}")),
        ));
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-shieldgate-action"), Some("flag"));
    }
    let refused = runtime.block_on(crate::harness::send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "text/plain")],
        b"hello".to_vec(),
    ));
    assert_eq!(refused.status, 415);
    prometheus.wait_for("the gateway scraped", || {
        prometheus
            .query(
                &runtime,
                "shieldgate_decisions_total{action=\"flag\",direction=\"output\"} > 0",
            )
            .is_ok_and(|r| !r.is_empty())
    });

    // Hate flags every question, against none of the calm baseline: both drift alerts fire.
    let firing = |name: &str| {
        prometheus.get(&runtime, "/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["labels"]["alertname"] == name && a["state"] == "firing")
            .map(|a| a["labels"].clone())
            .collect::<Vec<_>>()
    };
    prometheus.wait_for("the drift alerts firing", || {
        !firing("ShieldgateFlagRateDrift").is_empty() && !firing("ShieldgateScoreDrift").is_empty()
    });
    for name in ["ShieldgateFlagRateDrift", "ShieldgateScoreDrift"] {
        let alerts = firing(name);
        assert!(
            alerts
                .iter()
                .all(|l| l["category"] == "hate" && l["direction"] == "input"),
            "{name}: only hate's inputs drifted: {alerts:?}"
        );
    }

    // The scorer goes away: checks fail, fail-open passes the traffic, the alert fires.
    scorer_runtime.shutdown_background();
    for i in 0..4 {
        let a = runtime.block_on(crate::harness::post(
            addr,
            "/v1/chat/completions",
            &[],
            &chat(&format!("unchecked {i}")),
        ));
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(
            a.header("x-shieldgate-evaluation-error"),
            Some("scoring_failed,scoring_failed")
        );
    }
    // Counters rise while checks keep failing (a rate needs two samples that differ).
    prometheus.wait_for("ShieldgateFailOpenPassingUnchecked firing", || {
        runtime.block_on(crate::harness::post(
            addr,
            "/v1/chat/completions",
            &[],
            &chat("still unchecked"),
        ));
        prometheus.get(&runtime, "/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| {
                a["labels"]["alertname"] == "ShieldgateFailOpenPassingUnchecked"
                    && a["state"] == "firing"
            })
    });
    let firing = prometheus.get(&runtime, "/api/v1/alerts");
    let names: Vec<&str> = firing["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    assert!(
        !names.contains(&"ShieldgateModerationUnavailable"),
        "fail-open refuses nothing: {names:?}"
    );

    for (panel, expr) in dashboard_queries() {
        let result = prometheus
            .query(&runtime, &expr)
            .unwrap_or_else(|e| panic!("{panel}: {expr} fails: {e}"));
        assert!(
            !result.is_empty(),
            "{panel}: {expr} returns nothing after traffic"
        );
    }
}
