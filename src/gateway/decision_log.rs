//! The decision log: one JSON line per check with scores, thresholds, action, request id and
//! a SHA-256 of the scanned content; the content itself only when enabled. Nothing from
//! request headers is written.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::decision::{Decision, Direction};
use crate::prompt::ContextTurn;

/// An append-only JSONL file.
pub struct DecisionLog {
    path: PathBuf,
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
    /// For the output check: the user turn the answers reply to.
    pub prompt: Option<&'a str>,
    /// The earlier turns the latest checked text was judged after.
    pub context: &'a [ContextTurn],
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
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a [ContextTurn]>,
    #[serde(flatten)]
    decision: &'a Decision,
}

/// What a logged check holds, as read back to explain it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Logged {
    /// The profile applied.
    pub profile: String,
    /// The checked texts, when content was logged.
    pub content: Option<Vec<String>>,
    /// The output check's user turn.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The earlier turns of the latest checked text.
    #[serde(default)]
    pub context: Vec<ContextTurn>,
}

/// The last line of the log at `path` for `request_id`'s check in `direction`, if any. Lines
/// that are not a decision (a torn last line) are passed over.
pub fn find(
    path: &Path,
    request_id: &str,
    direction: Direction,
) -> std::io::Result<Option<Logged>> {
    #[derive(Deserialize)]
    struct Key<'a> {
        #[serde(borrow)]
        request_id: std::borrow::Cow<'a, str>,
        direction: Direction,
    }
    let mut found = None;
    for line in BufReader::new(File::open(path)?).split(b'\n') {
        let line = line?;
        let line = crate::audit::reader::without_bom(&line);
        let Ok(key) = serde_json::from_slice::<Key<'_>>(line) else {
            continue;
        };
        if key.request_id == request_id && key.direction == direction {
            found = serde_json::from_slice::<Logged>(line).ok();
        }
    }
    Ok(found)
}

impl DecisionLog {
    /// Opens (or creates) the file for appending.
    pub fn open(path: &Path, include_content: bool) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
            include_content,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether lines carry the content.
    pub fn includes_content(&self) -> bool {
        self.include_content
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
            prompt: entry.prompt.filter(|_| self.include_content),
            context: (self.include_content && !entry.context.is_empty()).then_some(entry.context),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_of_a_check_is_found_past_torn_lines_and_a_byte_order_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("decisions.jsonl");
        std::fs::write(
            &path,
            "\u{feff}{\"request_id\": \"r1\", \"direction\": \"input\", \"profile\": \"a\", \"content\": [\"x\"]}\n\
             {\"request_id\": \"r1\", \"direction\": \"output\", \"profile\": \"a\", \"prompt\": \"x\", \"content\": [\"y\"]}\n\
             {\"request_id\": \"r1\", \"direction\": \"input\", \"profile\": \"b\"}\n\
             {\"request_id\": \"r1\", \"dir",
        )
        .expect("written");
        let found = |id, direction| find(&path, id, direction).expect("read");
        let input = found("r1", Direction::Input).expect("found");
        assert_eq!(input.profile, "b", "the last line of the check");
        assert_eq!(input.content, None, "logged without content");
        let output = found("r1", Direction::Output).expect("found");
        assert_eq!(output.prompt.as_deref(), Some("x"));
        assert_eq!(output.content, Some(vec!["y".to_string()]));
        assert_eq!(found("r2", Direction::Input), None);
        // The first line, behind its byte-order mark, is read too.
        std::fs::write(
            &path,
            "\u{feff}{\"request_id\": \"r3\", \"direction\": \"input\", \"profile\": \"a\"}\n",
        )
        .expect("written");
        assert!(found("r3", Direction::Input).is_some());
    }
}
