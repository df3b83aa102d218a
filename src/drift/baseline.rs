//! Baselines: the checks counted, flag ratio and score quantiles per direction and category
//! of an audit's results, written as a Prometheus rules file of constant series
//! (`shieldgate:baseline_*`) for the drift alerts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde_json::Value;

use super::{Summary, QUANTILES};

/// A Prometheus rules file holding `summaries` as constant series (`shieldgate:baseline_*`,
/// labelled by direction and category) for the drift alerts of shieldgate-rules.yml; `source`
/// says in its header comment where the data came from.
pub fn baseline_rules(summaries: &BTreeMap<(String, String), Summary>, source: &str) -> String {
    let mut out = format!(
        "# shieldgate baseline: per direction and category, the checks counted, the share flagged\n\
         # and score quantiles, from {source}.\n\
         # Load it in Prometheus's rule_files beside shieldgate-rules.yml: the drift alerts\n\
         # compare the gateway's shieldgate_window_* gauges with these series.\n\
         groups:\n  - name: shieldgate-baseline\n    rules:\n"
    );
    let mut rule = |record: &str, value: f64, labels: &str| {
        out.push_str(&format!(
            "      - record: shieldgate:baseline_{record}\n        expr: vector({value})\n        labels: {{{labels}}}\n"
        ));
    };
    for ((direction, category), s) in summaries {
        let labels = format!("direction: \"{direction}\", category: \"{category}\"");
        rule("checks", s.checks as f64, &labels);
        rule("flag_ratio", s.flag_ratio, &labels);
        for (q, value) in QUANTILES.iter().zip(s.quantiles) {
            rule("score", value, &format!("{labels}, quantile: \"{q}\""));
        }
    }
    out
}

/// The summaries of an audit's results (`results.jsonl`): user turns are the `input`
/// direction, assistant turns `output`, as in the gateway.
pub fn from_results(path: &Path) -> std::io::Result<BTreeMap<(String, String), Summary>> {
    let mut samples: BTreeMap<(String, String), Vec<(f64, bool)>> = BTreeMap::new();
    for line in BufReader::new(std::fs::File::open(path)?).lines() {
        let line = line?;
        let Ok(record) = serde_json::from_str::<Value>(line.trim_start_matches('\u{feff}')) else {
            continue;
        };
        let direction = match record["role"].as_str() {
            Some("assistant") => "output",
            _ => "input",
        };
        let violated = |id: &str| {
            record["violated"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == id))
        };
        for (id, score) in record["scores"].as_object().into_iter().flatten() {
            if let Some(score) = score.as_f64() {
                samples
                    .entry((direction.to_string(), id.clone()))
                    .or_default()
                    .push((score, violated(id)));
            }
        }
    }
    Ok(samples
        .into_iter()
        .filter_map(|(key, s)| Some((key, Summary::of(s.into_iter())?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_is_a_rules_file_of_constant_series() {
        let summaries = BTreeMap::from([(
            ("input".to_string(), "hate".to_string()),
            Summary::of((1..=100).map(|i| (f64::from(i) / 100.0, i > 95))).expect("some"),
        )]);
        let text = baseline_rules(&summaries, "an audit of 100 turns");
        assert!(text.contains("# shieldgate baseline"));
        assert!(text.contains(
            "      - record: shieldgate:baseline_flag_ratio\n        expr: vector(0.05)\n        \
             labels: {direction: \"input\", category: \"hate\"}\n"
        ), "{text}");
        assert!(text.contains(
            "expr: vector(0.99)\n        labels: {direction: \"input\", category: \"hate\", quantile: \"0.99\"}"
        ), "{text}");
        let parsed = yaml_rust2::YamlLoader::load_from_str(&text).expect("YAML");
        let rules = &parsed[0]["groups"][0]["rules"];
        assert_eq!(rules.as_vec().map(Vec::len), Some(5));
    }
}
