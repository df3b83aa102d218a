//! The decision log: one JSON line per check with scores, thresholds, action, request id and
//! a SHA-256 of the scanned content; the content itself only when enabled. Nothing from
//! request headers is written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::decision::Decision;

/// An append-only JSONL file.
pub struct DecisionLog {
    file: Mutex<File>,
    include_content: bool,
}

/// What one line says besides the decision.
pub struct Entry<'a> {
    /// The request id.
    pub request_id: &'a str,
    /// The protocol adapter.
    pub protocol: &'a str,
    /// The policy-set version.
    pub policy_version: &'a str,
    /// The scanned texts.
    pub content: &'a [String],
}

#[derive(Serialize)]
struct Line<'a> {
    ts_ms: u128,
    request_id: &'a str,
    protocol: &'a str,
    policy_version: &'a str,
    content_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a [String]>,
    #[serde(flatten)]
    decision: &'a Decision,
}

impl DecisionLog {
    /// Opens (or creates) the file for appending.
    pub fn open(path: &Path, include_content: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
            include_content,
        })
    }

    /// Appends one line; a failed write is logged, never fatal to the request.
    pub fn record(&self, entry: &Entry<'_>, decision: &Decision) {
        let mut hash = Sha256::new();
        for text in entry.content {
            hash.update(text.as_bytes());
            hash.update([0x1f]);
        }
        let line = Line {
            ts_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            request_id: entry.request_id,
            protocol: entry.protocol,
            policy_version: entry.policy_version,
            content_sha256: hex::encode(hash.finalize()),
            content: self.include_content.then_some(entry.content),
            decision,
        };
        let mut text = match serde_json::to_string(&line) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a decision log line");
                return;
            }
        };
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::error!(error = %e, "cannot write the decision log");
        }
    }
}
