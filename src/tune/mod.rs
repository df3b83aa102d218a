//! `shieldgate tune`: per-category thresholds from labelled data. Examples are scored through
//! the engine (or their scores are read), curves and suggested thresholds are computed, the
//! gateway's TOML is edited (shown as a diff, written only when asked), and a report and a
//! browser workbench show the trade-offs.

pub mod analysis;
pub mod bootstrap;
pub mod calibration;
pub mod context;
pub mod curves;
pub mod data;
pub mod pii;
pub mod report;
pub mod thresholds;
pub mod workbench;

use std::path::{Path, PathBuf};

use crate::policy::Policy;
use crate::scorer::{score_each, Score, ScoreRequest};

use self::analysis::CategoryReport;
use self::data::{Example, LineError};

/// Output file names inside the output folder.
pub const SCORED: &str = "scored.jsonl";
/// Lines that could not be used.
pub const ERRORS: &str = "errors.jsonl";
/// The analysis as JSON.
pub const SUMMARY: &str = "summary.json";
/// The HTML report.
pub const REPORT: &str = "report.html";
/// The config with the suggested thresholds.
pub const THRESHOLDS: &str = "thresholds.toml";

/// Why tuning stopped.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The config could not be edited.
    #[error(transparent)]
    Edit(#[from] thresholds::EditError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TuneError + '_ {
    move |source| TuneError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Examples that lack a score for a category they are labelled for.
pub fn unscored(examples: &[Example]) -> usize {
    examples
        .iter()
        .filter(|e| e.labels.keys().any(|id| !e.scores.contains_key(id)))
        .count()
}

/// Scores the examples that lack scores (prompt-only, or prompt-response when a response is
/// given) after up to `context_turns` of their earlier turns, `batch` at a time; an example
/// that cannot be scored becomes an error and is dropped.
pub fn score_examples(
    scorer: &dyn Score,
    examples: Vec<Example>,
    policies: &std::sync::Arc<[Policy]>,
    (batch, context_turns): (usize, usize),
    progress: &mut dyn FnMut(usize, usize),
) -> (Vec<Example>, Vec<LineError>) {
    let total = unscored(&examples);
    let answers = crate::policy::for_answers(policies);
    let (mut done, mut kept, mut errors) = (0, Vec::new(), Vec::new());
    let (mut ready, mut todo): (Vec<Example>, Vec<Example>) = examples
        .into_iter()
        .partition(|e| e.labels.keys().all(|id| e.scores.contains_key(id)));
    kept.append(&mut ready);
    while !todo.is_empty() {
        let chunk: Vec<Example> = todo.drain(..batch.min(todo.len())).collect();
        let requests: Vec<ScoreRequest> = chunk
            .iter()
            .map(|e| ScoreRequest {
                user: e.prompt.clone().unwrap_or_default(),
                response: e.response.clone(),
                policies: match e.response {
                    Some(_) => answers.clone(),
                    None => policies.clone(),
                },
                context: e.context[e.context.len().saturating_sub(context_turns)..].to_vec(),
            })
            .collect();
        for (mut example, result) in chunk.into_iter().zip(score_each(scorer, &requests)) {
            match result {
                Ok(scores) => {
                    example
                        .scores
                        .extend(scores.scores.into_iter().map(|s| (s.id, s.p_yes)));
                    kept.push(example);
                }
                Err(e) => errors.push(LineError {
                    file: example.origin.0.clone(),
                    line: example.origin.1,
                    reason: format!("cannot be scored: {e}"),
                }),
            }
            done += 1;
        }
        progress(done, total);
    }
    (kept, errors)
}

/// What the outputs hold.
pub struct Outputs<'a> {
    /// The examples with their scores.
    pub examples: &'a [Example],
    /// Lines that could not be used.
    pub errors: &'a [LineError],
    /// The analysis.
    pub reports: &'a [CategoryReport],
    /// The config text with the suggested thresholds.
    pub thresholds_toml: &'a str,
    /// Personal data and secrets found in the examples and traffic.
    pub pii: &'a [pii::KindShare],
    /// The examples scored alone and in context, compared (`--compare-context`).
    pub context: Option<&'a context::Comparison>,
    /// The report's title.
    pub title: &'a str,
}

/// Writes one JSON line per item.
fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<(), TuneError> {
    let mut text = String::new();
    for item in items {
        text.push_str(&serde_json::to_string(item).unwrap_or_default());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(io(path))
}

/// Writes scored.jsonl, errors.jsonl, summary.json, report.html and thresholds.toml.
pub fn write_outputs(out: &Path, outputs: &Outputs<'_>) -> Result<(), TuneError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_jsonl(&out.join(SCORED), outputs.examples)?;
    write_jsonl(&out.join(ERRORS), outputs.errors)?;
    let mut summary = serde_json::json!({"errors": outputs.errors.len(),
        "categories": outputs.reports, "pii": outputs.pii});
    if let Some(c) = outputs.context {
        summary["context"] = serde_json::json!(c);
    }
    for (name, text) in [
        (
            SUMMARY,
            serde_json::to_string_pretty(&summary).unwrap_or_default(),
        ),
        (
            REPORT,
            report::html(outputs.reports, outputs.pii, outputs.context, outputs.title),
        ),
        (THRESHOLDS, outputs.thresholds_toml.to_string()),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    Ok(())
}
