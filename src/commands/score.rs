//! `shieldgate score`: one text (argument, file or stdin) or JSON lines, scored against the
//! selected policies, one JSON object per input on stdout.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::audit::reader::{read_record, Fields, NO_TURN};
use crate::cli::ScoreArgs;
use crate::config::ModelSettings;
use crate::injection::WithInjection;
use crate::pii::{count, every_kind, Kind};
use crate::policy::{for_answers, Policy};
use crate::prompt::{ContextTurn, Mode};
use crate::scorer::explain::{explain, Explanation};
use crate::scorer::verdict::Verdict;
use crate::scorer::{score_each, RequestScores, Score, ScoreError, ScoreRequest};

use super::{context_turns, load_engine, load_policies, Outcome};

/// One output line.
#[derive(Serialize)]
struct Output<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<serde_json::Value>,
    mode: Mode,
    model: &'a str,
    #[serde(flatten)]
    verdict: Verdict,
    /// Personal data and secrets in the prompt and response, per kind (docs/pii.md).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pii: BTreeMap<Kind, usize>,
    /// The spans that move P(Yes) most (`--explain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    explanation: Option<Explanation>,
    /// With `--context-turns`: the earlier turns the verdict was judged after.
    #[serde(skip_serializing_if = "Option::is_none")]
    context_turns: Option<usize>,
}

/// The explanation of a verdict when `--explain` asks for one.
fn explanation(
    scorer: &dyn Score,
    args: &ScoreArgs,
    request: &ScoreRequest,
    scores: &RequestScores,
) -> Result<Option<Explanation>, ScoreError> {
    if !args.explain {
        return Ok(None);
    }
    explain(scorer, request, scores, args.explain_spans, true).map(Some)
}

/// The personal data and secrets of every kind in a prompt and its response.
fn pii_counts(user: &str, response: Option<&str>) -> BTreeMap<Kind, usize> {
    count(std::iter::once(user).chain(response), &every_kind())
}

/// The output line of an input that could not be scored.
#[derive(Serialize)]
struct ErrorOutput {
    line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<serde_json::Value>,
    error: String,
}

/// One JSON line of input: a prompt with an optional response.
#[derive(Deserialize)]
struct JsonInput {
    prompt: String,
    #[serde(default)]
    response: Option<String>,
    #[serde(default)]
    id: Option<serde_json::Value>,
}

/// What one JSON line asks to score: a prompt (and response), or the last turn of a
/// `messages` list after its earlier turns.
struct Input {
    prompt: String,
    response: Option<String>,
    context: Vec<ContextTurn>,
    id: Option<serde_json::Value>,
}

impl Input {
    /// Reads a line's value: `{"prompt", "response"?}` or `{"messages": [...]}`, whose last
    /// turn is judged (an assistant turn after the user turn before it) with up to
    /// `context_turns` turns before.
    fn read(value: serde_json::Value, origin: &str, context_turns: usize) -> Result<Self, String> {
        let id = value.get("id").cloned();
        if value.get("messages").is_none() {
            let input = serde_json::from_value::<JsonInput>(value).map_err(|e| {
                format!(
                    "expected {{\"prompt\": string, \"response\"?: string}} or \
                     {{\"messages\": [...]}}: {e}"
                )
            })?;
            return Ok(Self {
                prompt: input.prompt,
                response: input.response,
                context: Vec::new(),
                id: input.id,
            });
        }
        let judged = read_record(&value, origin, &Fields::default())?
            .last_judged(context_turns)
            .ok_or(NO_TURN)?;
        Ok(Self {
            prompt: judged.prompt,
            response: judged.response,
            context: judged.context,
            id,
        })
    }
}

/// Runs the command.
pub fn run(args: &ScoreArgs) -> anyhow::Result<Outcome> {
    let policies = load_policies(&args.policy)?;
    if args.jsonl {
        let reader: Box<dyn Read> = match args.file.as_deref() {
            Some(path) if path != Path::new("-") => Box::new(
                std::fs::File::open(path)
                    .with_context(|| format!("cannot open input file {}", path.display()))?,
            ),
            _ => Box::new(std::io::stdin()),
        };
        context_turns(Some(args.context_turns), 0)?;
        let (scorer, name) = load_scorer(args)?;
        return score_lines((&*scorer, &name), BufReader::new(reader), &policies, args);
    }
    let user = match (&args.text, &args.file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => read_text(Some(path))?,
        (None, None) => read_text(None)?,
    };
    let response = match (&args.response, &args.response_file) {
        (Some(text), _) => Some(text.clone()),
        (None, Some(path)) => Some(read_text(Some(path))?),
        (None, None) => None,
    };
    let (scorer, name) = load_scorer(args)?;
    let policies = checked(&policies, response.is_some());
    let request = ScoreRequest::new(user, response, policies);
    let scores = scorer.score(std::slice::from_ref(&request))?;
    let policies = request.policies.clone();
    let explanation = explanation(&*scorer, args, &request, &scores[0])?;
    let verdict = Verdict::new(&scores[0], &policies);
    let flagged = !verdict.violated.is_empty();
    let output = Output {
        line: None,
        id: None,
        mode: request.content().mode(),
        model: &name,
        verdict,
        pii: pii_counts(&request.user, request.response.as_deref()),
        explanation,
        context_turns: None,
    };
    write_json(&mut std::io::stdout().lock(), &output, args.pretty)?;
    Ok(if flagged {
        Outcome::Flagged
    } else {
        Outcome::Clean
    })
}

/// The embedded model, with the injection classifier of `--injection-model` beside it, and the
/// model's name.
fn load_scorer(args: &ScoreArgs) -> anyhow::Result<(Box<dyn Score>, String)> {
    let engine = load_engine(&args.model.apply(ModelSettings::default()))?;
    let name = engine.model_name().to_string();
    let Some(source) = &args.policy.injection_model else {
        return Ok((Box::new(engine), name));
    };
    let guard = crate::injection::load(source, "cpu")
        .with_context(|| format!("--injection-model {source:?}"))?;
    let scorer = WithInjection::new(Arc::new(engine), Arc::new(guard));
    Ok((Box::new(scorer), name))
}

/// Reads a whole text file (or stdin for `None` / `-`) as UTF-8.
fn read_text(path: Option<&Path>) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let name = match path {
        Some(p) if p != Path::new("-") => {
            bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            p.display().to_string()
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            "stdin".to_string()
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(e) => bail!(
            "{name} is not valid UTF-8 (first invalid byte at offset {}); convert it to UTF-8",
            e.utf8_error().valid_up_to()
        ),
    }
}

/// A line waiting for its batch to be scored.
enum Pending {
    Ready { line: usize, input: Input },
    Failed(ErrorOutput),
}

/// The policies a prompt (or a response, `answer`) is scored with.
fn checked(policies: &Arc<[Policy]>, answer: bool) -> Arc<[Policy]> {
    if answer {
        for_answers(policies)
    } else {
        policies.clone()
    }
}

/// A scorer and its model's name.
type Named<'a> = (&'a dyn Score, &'a str);

fn score_lines(
    scorer: Named<'_>,
    mut reader: impl BufRead,
    policies: &Arc<[Policy]>,
    args: &ScoreArgs,
) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    let mut pending: Vec<Pending> = Vec::new();
    let mut ready = 0;
    let mut totals = Totals::default();
    let mut line = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read input after line {line}"))?;
        if n == 0 {
            break;
        }
        line += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let entry = parse_line(line, &buf, args.context_turns);
        ready += usize::from(matches!(entry, Pending::Ready { .. }));
        pending.push(entry);
        if ready >= args.batch_size.max(1) {
            flush(scorer, &mut pending, policies, args, &mut out, &mut totals)?;
            ready = 0;
        }
    }
    flush(scorer, &mut pending, policies, args, &mut out, &mut totals)?;
    tracing::info!(
        scored = totals.scored,
        flagged = totals.flagged,
        errors = totals.errors,
        "done"
    );
    eprintln!(
        "shieldgate score: {} scored, {} flagged, {} errors",
        totals.scored, totals.flagged, totals.errors
    );
    Ok(if totals.errors > 0 {
        Outcome::InputErrors
    } else if totals.flagged > 0 {
        Outcome::Flagged
    } else {
        Outcome::Clean
    })
}

fn parse_line(line: usize, bytes: &[u8], context_turns: usize) -> Pending {
    let failed = |error: String, id| Pending::Failed(ErrorOutput { line, id, error });
    let text = match std::str::from_utf8(crate::audit::reader::without_bom(bytes)) {
        Ok(t) => t,
        Err(e) => {
            return failed(
                format!(
                    "not valid UTF-8 (first invalid byte at column {})",
                    e.valid_up_to() + 1
                ),
                None,
            )
        }
    };
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return failed(format!("not valid JSON: {e}"), None),
    };
    let id = value.get("id").cloned();
    match Input::read(value, &format!("line {line}"), context_turns) {
        Ok(input) => Pending::Ready { line, input },
        Err(e) => failed(e, id),
    }
}

#[derive(Default)]
struct Totals {
    scored: usize,
    flagged: usize,
    errors: usize,
}

/// Scores the ready lines of `pending` as one batch and writes every pending line in order.
fn flush(
    (scorer, name): Named<'_>,
    pending: &mut Vec<Pending>,
    policies: &Arc<[Policy]>,
    args: &ScoreArgs,
    out: &mut impl Write,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let requests: Vec<ScoreRequest> = pending
        .iter()
        .filter_map(|p| match p {
            Pending::Ready { input, .. } => Some(ScoreRequest {
                user: input.prompt.clone(),
                response: input.response.clone(),
                policies: checked(policies, input.response.is_some()),
                context: input.context.clone(),
            }),
            Pending::Failed(_) => None,
        })
        .collect();
    let mut results = requests.iter().zip(score_each(scorer, &requests));
    for entry in pending.drain(..) {
        match entry {
            Pending::Failed(error) => {
                totals.errors += 1;
                write_json(out, &error, args.pretty)?;
            }
            Pending::Ready { line, input } => match results.next().map(|(request, result)| {
                let scores = result?;
                let explanation = explanation(scorer, args, request, &scores)?;
                let seen = (args.context_turns > 0).then(|| request.context_seen(&scores));
                let mode = request.content().mode();
                Ok::<_, ScoreError>((scores, explanation, seen, mode))
            }) {
                Some(Ok((scores, explanation, context_turns, mode))) => {
                    let policies = checked(policies, input.response.is_some());
                    let verdict = Verdict::new(&scores, &policies);
                    totals.scored += 1;
                    totals.flagged += usize::from(!verdict.violated.is_empty());
                    let output = Output {
                        line: Some(line),
                        id: input.id,
                        mode,
                        model: name,
                        verdict,
                        pii: pii_counts(&input.prompt, input.response.as_deref()),
                        explanation,
                        context_turns,
                    };
                    write_json(out, &output, args.pretty)?;
                }
                Some(Err(e)) => {
                    totals.errors += 1;
                    let error = ErrorOutput {
                        line,
                        id: input.id,
                        error: e.to_string(),
                    };
                    write_json(out, &error, args.pretty)?;
                }
                None => return Err(ScoreError::MissingResult.into()),
            },
        }
    }
    out.flush().context("cannot write to stdout")?;
    Ok(())
}

fn write_json(out: &mut impl Write, value: &impl Serialize, pretty: bool) -> anyhow::Result<()> {
    if pretty {
        serde_json::to_writer_pretty(&mut *out, value)?;
    } else {
        serde_json::to_writer(&mut *out, value)?;
    }
    writeln!(out).context("cannot write to stdout")?;
    Ok(())
}
