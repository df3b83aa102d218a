//! The audit summary: counts that add up (lines read = scored + skipped + errored + other
//! shards), flag rates, score histograms and the highest-scoring flagged turns per category,
//! and the top-scoring turns, computed from results.jsonl so that a resumed run summarises
//! exactly what it wrote.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What happened to the input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Lines read.
    pub lines_read: u64,
    /// Lines with every scorable turn scored (at least one).
    pub lines_scored: u64,
    /// Lines with nothing to score.
    pub lines_skipped: u64,
    /// Lines that could not be read, or with a turn that could not be scored.
    pub lines_errored: u64,
    /// Lines that belong to other shards.
    pub lines_other_shards: u64,
    /// Turns scored.
    pub turns_scored: u64,
    /// Turns not scored (system, tool, empty, non-text).
    pub turns_skipped: u64,
    /// Turns that could not be scored.
    pub turns_errored: u64,
    /// Scored turns with at least one violated policy.
    pub turns_flagged: u64,
}

/// One category's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CategorySummary {
    /// Turns at or above the threshold.
    pub flagged: u64,
    /// `flagged / turns_scored`.
    pub flag_rate: f64,
    /// Turns per P(Yes) decile (0–0.1, …, 0.9–1).
    pub histogram: [u64; 10],
    /// The flagged turns with the highest P(Yes) for it (at most [`EXAMPLES`]), highest
    /// first, as results.jsonl has them.
    pub examples: Vec<Value>,
}

/// How many flagged turns each category lists.
pub const EXAMPLES: usize = 5;

/// The summary file.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Counts.
    pub counts: Counts,
    /// Per category.
    pub categories: BTreeMap<String, CategorySummary>,
    /// Scored turns holding personal data or secrets, per kind (docs/pii.md).
    pub pii_turns: BTreeMap<String, u64>,
    /// The highest-scoring turns (any category), highest first.
    pub top: Vec<Value>,
}

/// How many top-scoring turns the summary lists.
pub const TOP: usize = 20;

/// Summarises results.jsonl.
pub fn summarize(results: &Path, counts: Counts) -> std::io::Result<Summary> {
    let mut categories: BTreeMap<String, CategorySummary> = BTreeMap::new();
    let mut examples: BTreeMap<String, Vec<(f64, Value)>> = BTreeMap::new();
    let mut top: Vec<(f64, Value)> = Vec::new();
    let mut pii_turns: BTreeMap<String, u64> = BTreeMap::new();
    let file = std::io::BufReader::new(std::fs::File::open(results)?);
    for line in file.lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(scores) = v.get("scores").and_then(Value::as_object) else {
            continue;
        };
        let violated: Vec<&str> = v
            .get("violated")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for kind in v
            .get("pii")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            *pii_turns.entry(kind.0.clone()).or_default() += 1;
        }
        let mut best = 0.0f64;
        for (id, score) in scores {
            let p = score.as_f64().unwrap_or(0.0);
            best = best.max(p);
            let c = categories.entry(id.clone()).or_default();
            c.histogram[((p * 10.0) as usize).min(9)] += 1;
            if violated.contains(&id.as_str()) {
                c.flagged += 1;
                let listed = examples.entry(id.clone()).or_default();
                listed.push((p, v.clone()));
                if listed.len() > EXAMPLES * 4 {
                    keep_highest(listed, EXAMPLES);
                }
            }
        }
        top.push((best, v));
        if top.len() > TOP * 4 {
            keep_highest(&mut top, TOP);
        }
    }
    keep_highest(&mut top, TOP);
    for (id, mut listed) in examples {
        keep_highest(&mut listed, EXAMPLES);
        if let Some(c) = categories.get_mut(&id) {
            c.examples = listed.into_iter().map(|(_, v)| v).collect();
        }
    }
    for c in categories.values_mut() {
        c.flag_rate = if counts.turns_scored == 0 {
            0.0
        } else {
            c.flagged as f64 / counts.turns_scored as f64
        };
    }
    Ok(Summary {
        counts,
        categories,
        pii_turns,
        top: top.into_iter().map(|(_, v)| v).collect(),
    })
}

/// Keeps the `n` highest, highest first; ties keep input order.
fn keep_highest(items: &mut Vec<(f64, Value)>, n: usize) {
    items.sort_by(|a, b| b.0.total_cmp(&a.0));
    items.truncate(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_category_lists_its_highest_flagged_turns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let results = dir.path().join("results.jsonl");
        let mut text = String::new();
        for i in 0..9 {
            let hate = f64::from(i) / 10.0;
            let violated: Vec<&str> = if hate >= 0.3 { vec!["hate"] } else { vec![] };
            let line = serde_json::json!({"turn": i, "scores": {"hate": hate, "sexual": 0.0},
                "violated": violated});
            text.push_str(&format!("{line}\n"));
        }
        std::fs::write(&results, text).expect("results");
        let summary = summarize(&results, Counts::default()).expect("summary");
        let turns: Vec<&Value> = summary.categories["hate"]
            .examples
            .iter()
            .map(|e| &e["turn"])
            .collect();
        assert_eq!(
            turns,
            [8, 7, 6, 5, 4],
            "the five highest flagged, highest first"
        );
        assert_eq!(summary.categories["hate"].flagged, 6);
        assert!(summary.categories["sexual"].examples.is_empty());
    }
}
