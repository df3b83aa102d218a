//! The audit's checkpoint: where reading stopped and how long the output files were at that
//! moment, written atomically after every batch. Resuming truncates the outputs to those
//! lengths and reads on from there, so nothing is scored twice and no line is duplicated.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::summary::Counts;

/// The state after the last completed batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Identifies the inputs and options; a resume with different ones is refused.
    pub fingerprint: String,
    /// Index of the input being read.
    pub file: usize,
    /// Lines of that input already handled.
    pub line: u64,
    /// Bytes of that input already handled.
    pub offset: u64,
    /// Lines handled over all inputs (for sharding).
    pub global_line: u64,
    /// Length of results.jsonl.
    pub results_len: u64,
    /// Length of errors.jsonl.
    pub errors_len: u64,
    /// Counts so far.
    pub counts: Counts,
    /// Every input was read to the end.
    pub complete: bool,
    /// The inputs' names, in reading order (what a merge of shards orders by).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// This run's shard `(index, count)`.
    #[serde(default)]
    pub shard: (u64, u64),
}

impl Checkpoint {
    /// Reads the checkpoint of an output folder, if any.
    pub fn load(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes it atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}
