//! `shieldgate audit`: scores every turn of stored conversation logs, offline, in batches,
//! with results, errors and a summary in an output folder; resumable from a checkpoint after
//! any interruption, deterministic in its output order, shardable across machines.

pub mod checkpoint;
pub mod merge;
pub mod reader;
pub mod records;
pub mod report;
pub mod source;
pub mod summary;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::pii::{count, every_kind};
use crate::policy::{for_answers, Policy};
use crate::scorer::explain::explain;
use crate::scorer::verdict::Verdict;
use crate::scorer::{score_each, Score, ScoreRequest};

use self::checkpoint::Checkpoint;
use self::reader::{read_record, Conversation, Fields, Role};
use self::records::{Format, Item, Record, Records};
use self::summary::{summarize, Counts, Summary};

/// Why an audit stopped.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// An input or output file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The output folder holds a run with other inputs or options.
    #[error("{0}")]
    Mismatch(String),
}

/// An input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file.
    File(PathBuf),
    /// Standard input (cannot be resumed).
    Stdin,
}

impl Input {
    fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Stdin => "-".into(),
        }
    }

    /// The input's format: `forced`, else by file name (standard input: JSON lines).
    fn format(&self, forced: Option<Format>) -> Format {
        match (forced, self) {
            (Some(f), _) => f,
            (None, Self::File(p)) => Format::of(p),
            (None, Self::Stdin) => Format::Jsonl,
        }
    }
}

/// What to audit and how.
pub struct AuditOptions {
    /// The logs, read in this order.
    pub inputs: Vec<Input>,
    /// The output folder.
    pub out: PathBuf,
    /// Field names of flat records (JSON lines or CSV columns).
    pub fields: Fields,
    /// Every input's format, or `None` to tell by file name.
    pub format: Option<Format>,
    /// Policies with their thresholds.
    pub policies: Arc<[Policy]>,
    /// Turns scored per batch (and between checkpoints).
    pub batch_turns: usize,
    /// Longer turns are recorded as errors instead of scored.
    pub max_turn_chars: usize,
    /// This run's shard `(index, count)`.
    pub shard: (u64, u64),
    /// Copy each turn's text into results.jsonl.
    pub include_text: bool,
    /// Earlier turns of its conversation each turn is judged after (0: each turn alone).
    pub context_turns: usize,
    /// Which turns are explained.
    pub explain: Explain,
    /// Spans scored at most per explained turn.
    pub explain_spans: usize,
    /// Ignore an existing checkpoint and start over.
    pub restart: bool,
    /// Crash test hook: abort the process right after this many batches were written, before
    /// their checkpoint (the worst moment to be killed).
    pub abort_after_writes: Option<u64>,
}

/// Which turns get an explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Explain {
    /// None.
    Off,
    /// Turns that violate a policy.
    Flagged,
    /// Every scored turn.
    All,
}

/// Output file names inside the folder.
pub const RESULTS: &str = "results.jsonl";
/// Errors, one JSON line each.
pub const ERRORS: &str = "errors.jsonl";
/// The summary.
pub const SUMMARY: &str = "summary.json";
/// The checkpoint.
pub const CHECKPOINT: &str = "checkpoint.json";
/// The HTML report.
pub const REPORT: &str = "report.html";

/// Progress as reported after every batch.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Counts so far.
    pub counts: Counts,
    /// Input bytes handled and in all (files only).
    pub bytes: (u64, u64),
}

/// A line read and waiting for its batch.
struct Pending {
    file: String,
    line: u64,
    /// `None` when the line itself could not be read.
    conversation: Option<Conversation>,
    errors: Vec<Value>,
}

/// The run's open outputs and position.
struct Run<'a> {
    opts: &'a AuditOptions,
    scorer: &'a dyn Score,
    results: File,
    errors: File,
    state: Checkpoint,
    pending: Vec<Pending>,
    bytes_done: u64,
    writes: u64,
}

/// Runs (or resumes) an audit; `progress` is called after every batch.
pub fn run(
    scorer: &dyn Score,
    opts: &AuditOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<Summary, AuditError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuditError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.out).map_err(io(&opts.out))?;
    let checkpoint_path = opts.out.join(CHECKPOINT);
    let fingerprint = fingerprint(opts).map_err(io(&opts.out))?;
    let previous = if opts.restart {
        None
    } else {
        Checkpoint::load(&checkpoint_path).map_err(io(&checkpoint_path))?
    };
    let state = match previous {
        Some(c) if c.fingerprint != fingerprint => {
            return Err(AuditError::Mismatch(format!(
                "{} holds an audit of other inputs or options; pass --restart to start over there, or choose another --out",
                opts.out.display()
            )))
        }
        Some(c) if opts.inputs.contains(&Input::Stdin) && !c.complete => {
            return Err(AuditError::Mismatch(
                "a run that read standard input cannot be resumed; pass --restart".into(),
            ))
        }
        Some(c) => c,
        None => Checkpoint {
            fingerprint,
            inputs: opts.inputs.iter().map(Input::name).collect(),
            shard: opts.shard,
            ..Checkpoint::default()
        },
    };
    let open = |name: &str, len: u64| -> Result<File, AuditError> {
        let path = opts.out.join(name);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.set_len(len).map_err(io(&path))?;
        Ok(file)
    };
    // Progress in bytes only when every input's size is known in decompressed bytes.
    let sizes: Option<Vec<u64>> = opts
        .inputs
        .iter()
        .map(|i| match i {
            Input::File(p) => source::plain_size(p),
            Input::Stdin => None,
        })
        .collect();
    let total: u64 = sizes.as_ref().map_or(0, |s| s.iter().sum());
    let bytes_done = sizes.map_or(0, |s| s.iter().take(state.file).sum::<u64>() + state.offset);
    let mut run = Run {
        opts,
        scorer,
        results: open(RESULTS, state.results_len)?,
        errors: open(ERRORS, state.errors_len)?,
        bytes_done,
        writes: 0,
        state,
        pending: Vec::new(),
    };
    if !run.state.complete {
        for index in run.state.file..opts.inputs.len() {
            run.read_input(index, total, progress)?;
        }
        run.state.complete = true;
        run.state.file = opts.inputs.len();
        run.save()?;
    }
    write_summary(&opts.out, run.state.counts, &run.state.inputs)
}

/// Writes summary.json and report.html of an output folder from its results.jsonl.
pub fn write_summary(out: &Path, counts: Counts, inputs: &[String]) -> Result<Summary, AuditError> {
    let io = |path: PathBuf| move |source| AuditError::Io { path, source };
    let results = out.join(RESULTS);
    let summary = summarize(&results, counts).map_err(io(results.clone()))?;
    let path = out.join(SUMMARY);
    let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
    std::fs::write(&path, text).map_err(io(path.clone()))?;
    let path = out.join(REPORT);
    let title = format!("shieldgate audit of {}", inputs.join(", "));
    std::fs::write(&path, report::html(&summary, &title)).map_err(io(path.clone()))?;
    Ok(summary)
}

impl Run<'_> {
    fn read_input(
        &mut self,
        index: usize,
        total: u64,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<(), AuditError> {
        let input = &self.opts.inputs[index];
        let name = input.name();
        let io = |source| AuditError::Io {
            path: PathBuf::from(&name),
            source,
        };
        let resume = self.state.file == index;
        let (line, offset) = if resume {
            (self.state.line, self.state.offset)
        } else {
            (0, 0)
        };
        let open = |offset: u64| -> std::io::Result<Box<dyn BufRead>> {
            match input {
                Input::File(path) => Ok(source::open(path, offset)?.0),
                Input::Stdin => Ok(Box::new(BufReader::new(std::io::stdin()))),
            }
        };
        let mut records = match input.format(self.opts.format) {
            Format::Jsonl => Records::jsonl(open(offset).map_err(io)?, line, offset),
            Format::Csv => Records::csv(open, line, offset, &self.opts.fields).map_err(io)?,
        };
        let mut done = offset;
        let (shard, shards) = self.opts.shard;
        while let Some(record) = records.next_record().map_err(io)? {
            self.bytes_done += record.offset - done;
            done = record.offset;
            let (lines_through, offset) = (record.lines_through, record.offset);
            let global = self.state.global_line;
            self.state.global_line += 1;
            self.state.counts.lines_read += 1;
            if global % shards != shard {
                self.state.counts.lines_other_shards += 1;
            } else {
                self.take_record(&name, record);
            }
            let turns: usize = self
                .pending
                .iter()
                .filter_map(|p| p.conversation.as_ref())
                .map(|c| c.turns.len())
                .sum();
            if turns >= self.opts.batch_turns {
                self.flush(index, lines_through, offset)?;
                progress(&Progress {
                    counts: self.state.counts,
                    bytes: (self.bytes_done, total),
                });
            }
        }
        self.flush(index + 1, 0, 0)?;
        progress(&Progress {
            counts: self.state.counts,
            bytes: (self.bytes_done, total),
        });
        Ok(())
    }

    /// Reads one record into the pending batch (or records why it cannot be read).
    fn take_record(&mut self, file: &str, record: Record) {
        let line = record.line;
        let value = match record.item {
            Item::Blank => {
                self.state.counts.lines_skipped += 1;
                return;
            }
            Item::Unreadable(reason) => Err(reason),
            Item::Value(value) => read_record(&value, &format!("{file}:{line}"), &self.opts.fields),
        };
        match value {
            Ok(conversation) => {
                let mut errors = Vec::new();
                let max = self.opts.max_turn_chars;
                let (ok, long): (Vec<_>, Vec<_>) = conversation
                    .turns
                    .clone()
                    .into_iter()
                    .partition(|t| t.text.chars().count() <= max);
                for t in long {
                    errors.push(json!({"file": file, "line": line, "turn": t.index,
                        "reason": format!("turn longer than {max} characters (--max-turn-chars)")}));
                }
                self.state.counts.turns_skipped += conversation.skipped.len() as u64;
                self.pending.push(Pending {
                    file: file.to_string(),
                    line,
                    conversation: Some(Conversation {
                        turns: ok,
                        ..conversation
                    }),
                    errors,
                });
            }
            Err(reason) => self.pending.push(Pending {
                file: file.to_string(),
                line,
                conversation: None,
                errors: vec![json!({"file": file, "line": line, "reason": reason})],
            }),
        }
    }

    /// Scores the pending lines, writes their results and errors in input order, then saves
    /// the checkpoint at (`file`, `line`, `offset`).
    fn flush(&mut self, file: usize, line: u64, offset: u64) -> Result<(), AuditError> {
        let pending = std::mem::take(&mut self.pending);
        let answers = for_answers(&self.opts.policies);
        let requests: Vec<ScoreRequest> = pending
            .iter()
            .filter_map(|p| p.conversation.as_ref())
            .flat_map(|c| c.turns.iter().enumerate().map(move |(k, t)| (c, k, t)))
            .map(|(c, k, t)| ScoreRequest {
                user: t.prompt.clone().unwrap_or_else(|| t.text.clone()),
                response: (t.role == Role::Assistant).then(|| t.text.clone()),
                policies: match t.role {
                    Role::User => self.opts.policies.clone(),
                    Role::Assistant => answers.clone(),
                },
                context: c.context_of(k, self.opts.context_turns),
            })
            .collect();
        let mut scores = requests.iter().zip(score_each(self.scorer, &requests));
        let mut results = String::new();
        let mut errors = String::new();
        for p in pending {
            for e in &p.errors {
                errors.push_str(&e.to_string());
                errors.push('\n');
            }
            let Some(conversation) = &p.conversation else {
                self.state.counts.lines_errored += 1;
                continue;
            };
            let mut turn_errors = p.errors.len();
            for turn in &conversation.turns {
                match scores.next() {
                    Some((request, Ok(s))) => {
                        let verdict = Verdict::new(&s, &request.policies);
                        let mut map = Map::new();
                        let mut raw = Map::new();
                        for v in &verdict.policies {
                            map.insert(v.score.id.clone(), json!(v.score.p_yes));
                            if let Some(p) = v.raw_p_yes {
                                raw.insert(v.score.id.clone(), json!(p));
                            }
                        }
                        let violated = verdict.violated;
                        self.state.counts.turns_scored += 1;
                        if !violated.is_empty() {
                            self.state.counts.turns_flagged += 1;
                        }
                        let mut r = json!({"file": p.file, "line": p.line, "conversation": conversation.id,
                            "turn": turn.index, "role": turn.role, "scores": map, "violated": violated});
                        if !raw.is_empty() {
                            r["raw_scores"] = Value::Object(raw);
                        }
                        let cut = s.truncated.unwrap_or_default();
                        if cut.user.is_some() || cut.response.is_some() {
                            r["truncated"] = json!(true);
                        }
                        if self.opts.context_turns > 0 {
                            r["context_turns"] = json!(request.context_seen(&s));
                        }
                        let pii = count([turn.text.as_str()], &every_kind());
                        if !pii.is_empty() {
                            r["pii"] = json!(pii);
                        }
                        if self.opts.include_text {
                            r["text"] = json!(turn.text);
                        }
                        let explained = match self.opts.explain {
                            Explain::Off => false,
                            Explain::Flagged => !violated.is_empty(),
                            Explain::All => true,
                        };
                        if explained {
                            let spans = self.opts.explain_spans;
                            let text = self.opts.include_text;
                            match explain(self.scorer, request, &s, spans, text) {
                                Ok(e) => r["explanation"] = json!(e),
                                Err(e) => r["explanation_error"] = json!(e.to_string()),
                            }
                        }
                        results.push_str(&r.to_string());
                        results.push('\n');
                    }
                    Some((_, Err(e))) => {
                        turn_errors += 1;
                        errors.push_str(
                            &json!({"file": p.file, "line": p.line, "turn": turn.index,
                            "reason": e.to_string()})
                            .to_string(),
                        );
                        errors.push('\n');
                    }
                    None => {}
                }
            }
            self.state.counts.turns_errored += turn_errors as u64;
            if turn_errors > 0 {
                self.state.counts.lines_errored += 1;
            } else if conversation.turns.is_empty() {
                self.state.counts.lines_skipped += 1;
            } else {
                self.state.counts.lines_scored += 1;
            }
        }
        let path = self.opts.out.join(RESULTS);
        let io = |path: PathBuf| move |source| AuditError::Io { path, source };
        self.results
            .write_all(results.as_bytes())
            .map_err(io(path.clone()))?;
        self.results.sync_data().map_err(io(path.clone()))?;
        let epath = self.opts.out.join(ERRORS);
        self.errors
            .write_all(errors.as_bytes())
            .map_err(io(epath.clone()))?;
        self.errors.sync_data().map_err(io(epath))?;
        self.writes += 1;
        if self.opts.abort_after_writes == Some(self.writes) {
            std::process::abort();
        }
        self.state.results_len = self.results.metadata().map_err(io(path))?.len();
        self.state.errors_len = self.errors.metadata().map(|m| m.len()).unwrap_or(0);
        self.state.file = file;
        self.state.line = line;
        self.state.offset = offset;
        self.save()
    }

    fn save(&self) -> Result<(), AuditError> {
        let path = self.opts.out.join(CHECKPOINT);
        self.state
            .save(&path)
            .map_err(|source| AuditError::Io { path, source })
    }
}

/// Identifies the inputs (names, sizes, modification times) and the options that shape the
/// output.
fn fingerprint(opts: &AuditOptions) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for input in &opts.inputs {
        h.update(input.name().as_bytes());
        if let Input::File(p) = input {
            let m = std::fs::metadata(p)?;
            h.update(m.len().to_le_bytes());
            if let Ok(t) = m.modified() {
                h.update(format!("{t:?}").as_bytes());
            }
        }
        h.update([0]);
    }
    for p in opts.policies.iter() {
        h.update(format!(
            "{}\0{}\0{}\0{}\0{:?}\0",
            p.id, p.threshold, p.guideline.prompt, p.guideline.response, p.calibration
        ));
    }
    h.update(format!(
        "{:?}\0{:?}\0{:?}\0{}\0{:?}\0{}",
        opts.fields.text,
        opts.fields.response,
        opts.format,
        opts.max_turn_chars,
        opts.shard,
        opts.include_text
    ));
    h.update(format!(
        "\0{:?}\0{}\0{}",
        opts.explain, opts.explain_spans, opts.context_turns
    ));
    Ok(hex::encode(h.finalize()))
}
