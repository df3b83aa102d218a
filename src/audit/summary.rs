//! The audit summary: counts that add up (lines read = scored + skipped + errored + other
//! shards), flag rates and score histograms per category, and the top-scoring turns, computed
//! from results.jsonl so that a resumed run summarises exactly what it wrote.

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
}

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
            }
        }
        top.push((best, v));
        if top.len() > TOP * 4 {
            keep_top(&mut top);
        }
    }
    keep_top(&mut top);
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

/// Keeps the `TOP` highest, highest first; ties keep input order.
fn keep_top(top: &mut Vec<(f64, Value)>) {
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    top.truncate(TOP);
}
