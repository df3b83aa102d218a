//! Merging the output folders of `audit --shard I/N` runs into one folder that equals an
//! unsharded run: results and errors in input order, counts added up, summary and report
//! recomputed.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::checkpoint::Checkpoint;
use super::summary::{Counts, Summary};
use super::{write_summary, AuditError, CHECKPOINT, ERRORS, RESULTS};

/// Merges complete shard folders (all shards of one audit) into `out`.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<Summary, AuditError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuditError::Io { path, source }
    };
    let mut checkpoints = Vec::new();
    for dir in shards {
        let path = dir.join(CHECKPOINT);
        let c = Checkpoint::load(&path)
            .map_err(io(&path))?
            .filter(|c| c.complete)
            .ok_or_else(|| {
                AuditError::Mismatch(format!(
                    "{} holds no finished audit; run (or resume) that shard to the end first",
                    dir.display()
                ))
            })?;
        checkpoints.push(c);
    }
    let Some(first) = checkpoints.first() else {
        return Err(AuditError::Mismatch(
            "name the shard folders to merge".into(),
        ));
    };
    let count = first.shard.1;
    let mut seen: Vec<u64> = checkpoints.iter().map(|c| c.shard.0).collect();
    seen.sort_unstable();
    if checkpoints
        .iter()
        .any(|c| c.inputs != first.inputs || c.shard.1 != count)
        || seen != (0..count).collect::<Vec<_>>()
    {
        return Err(AuditError::Mismatch(format!(
            "the folders are not shards 0..{count} of one audit of the same inputs"
        )));
    }
    let order = |v: &Value| {
        let file = v.get("file").and_then(Value::as_str).unwrap_or("");
        (
            first
                .inputs
                .iter()
                .position(|i| i == file)
                .unwrap_or(usize::MAX),
            v.get("line").and_then(Value::as_u64).unwrap_or(0),
            v.get("turn").and_then(Value::as_u64).unwrap_or(0),
        )
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    for name in [RESULTS, ERRORS] {
        let mut lines: Vec<(Value, String)> = Vec::new();
        for dir in shards {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                lines.push((v, line.to_string()));
            }
        }
        lines.sort_by_key(|(v, _)| order(v));
        let mut text = String::new();
        for (_, line) in lines {
            text.push_str(&line);
            text.push('\n');
        }
        let path = out.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    let mut counts = Counts {
        lines_read: first.counts.lines_read,
        ..Counts::default()
    };
    for c in checkpoints.iter().map(|c| c.counts) {
        counts.lines_scored += c.lines_scored;
        counts.lines_skipped += c.lines_skipped;
        counts.lines_errored += c.lines_errored;
        counts.turns_scored += c.turns_scored;
        counts.turns_skipped += c.turns_skipped;
        counts.turns_errored += c.turns_errored;
        counts.turns_flagged += c.turns_flagged;
    }
    write_summary(out, counts, &first.inputs)
}
