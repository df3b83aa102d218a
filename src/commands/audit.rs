//! `shieldgate audit`: loads the policies (from a config profile) and the model, runs the
//! audit with progress on stderr, prints the summary's counts, and maps the outcome to an exit
//! code.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::audit::reader::Fields;
use crate::audit::summary::Summary;
use crate::audit::{self, AuditOptions, Input, Progress};
use crate::cli::{AuditArgs, AuditMergeArgs, ProgressMode};
use crate::drift::baseline;

use super::{context_turns, load_scorer, profile, Outcome};

/// Parses `I/N`.
fn parse_shard(spec: &str) -> anyhow::Result<(u64, u64)> {
    let (i, n) = spec
        .split_once('/')
        .with_context(|| format!("--shard {spec:?}: expected I/N, e.g. 0/4"))?;
    let (i, n): (u64, u64) = (
        i.trim()
            .parse()
            .with_context(|| format!("--shard {spec:?}: {i:?} is not a number"))?,
        n.trim()
            .parse()
            .with_context(|| format!("--shard {spec:?}: {n:?} is not a number"))?,
    );
    if n == 0 || i >= n {
        bail!("--shard {spec:?}: I must be below N (shards are numbered 0 to N-1)");
    }
    Ok((i, n))
}

/// Files as named, quoted globs expanded (sorted), `-` as standard input; a name that
/// matches nothing is an error.
fn expand_inputs(names: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for name in names {
        let text = name.to_string_lossy();
        if text == "-" {
            inputs.push(Input::Stdin);
        } else if name.is_file() {
            inputs.push(Input::File(name.clone()));
        } else if text.contains(['*', '?', '[']) {
            let mut matched = glob::glob(&text)
                .with_context(|| format!("{text}: not a valid glob"))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("{text}: cannot list the matches"))?;
            matched.retain(|p| p.is_file());
            if matched.is_empty() {
                bail!("{text}: no file matches");
            }
            matched.sort();
            inputs.extend(matched.into_iter().map(Input::File));
        } else {
            bail!("{}: no such file", name.display());
        }
    }
    Ok(inputs)
}

/// Runs the command.
pub fn run(args: &AuditArgs) -> anyhow::Result<Outcome> {
    let (config, profile) = profile(args.config.as_deref(), &args.profile)?;
    // Logs hold user and assistant turns: no tool results to look for indirect injection in.
    let policies = profile.for_user_turns.clone();
    let shard = args
        .shard
        .as_deref()
        .map(parse_shard)
        .transpose()?
        .unwrap_or((0, 1));
    if args.batch_turns == 0 {
        bail!("--batch-turns must be at least 1");
    }
    let inputs = expand_inputs(&args.inputs)?;
    let opts = AuditOptions {
        inputs,
        out: args.out.clone(),
        fields: Fields {
            text: args.text_field.clone(),
            response: args.response_field.clone(),
        },
        format: args.format,
        policies,
        batch_turns: args.batch_turns,
        max_turn_chars: args.max_turn_chars,
        shard,
        include_text: args.include_text,
        context_turns: context_turns(args.context_turns, config.proxy.context_turns)?,
        explain: args.explain,
        explain_spans: args.explain_spans,
        restart: args.restart,
        abort_after_writes: args.abort_after_writes,
    };
    let scorer = load_scorer(&config, &args.model.apply(config.model.clone()))?.scorer;
    let mode = match args.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Auto,
        ProgressMode::Auto => ProgressMode::None,
        other => other,
    };
    let mut reporter = Reporter::new(mode);
    let summary = audit::run(scorer.as_ref(), &opts, &mut |p| reporter.report(p))?;
    reporter.finish();
    write_baseline(args.baseline.as_deref(), &opts.out, &summary)?;
    Ok(finish(&opts.out, &summary, args.allow_errors))
}

/// Runs `audit-merge`.
pub fn merge(args: &AuditMergeArgs) -> anyhow::Result<Outcome> {
    let summary = audit::merge::merge(&args.shards, &args.out)?;
    write_baseline(args.baseline.as_deref(), &args.out, &summary)?;
    Ok(finish(&args.out, &summary, args.allow_errors))
}

/// Writes the drift baseline of the results in `out` to `path`, when asked.
fn write_baseline(path: Option<&Path>, out: &Path, summary: &Summary) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let results = out.join(audit::RESULTS);
    let summaries = baseline::from_results(&results)
        .with_context(|| format!("cannot read {} for the baseline", results.display()))?;
    let source = format!(
        "an audit of {} turns ({})",
        summary.counts.turns_scored,
        results.display()
    );
    std::fs::write(path, baseline::baseline_rules(&summaries, &source))
        .with_context(|| format!("cannot write the baseline {}", path.display()))?;
    eprintln!("audit: wrote the drift baseline {}", path.display());
    Ok(())
}

/// Prints the counts and maps them to the exit code.
fn finish(out: &Path, summary: &Summary, allow_errors: bool) -> Outcome {
    let c = summary.counts;
    println!(
        "{}",
        serde_json::json!({"out": out, "counts": c, "summary": out.join(audit::SUMMARY)})
    );
    if c.lines_errored > 0 && !allow_errors {
        Outcome::InputErrors
    } else if c.turns_flagged > 0 {
        Outcome::Flagged
    } else {
        Outcome::Clean
    }
}

/// Progress on stderr: a bar with rate and ETA on a terminal, JSON lines for machines.
enum Reporter {
    Bar(ProgressBar, Instant),
    Json(Instant),
    Quiet,
}

impl Reporter {
    fn new(mode: ProgressMode) -> Self {
        match mode {
            ProgressMode::Auto => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                bar.set_style(style("audit {spinner} [{elapsed_precise}] {msg}"));
                bar.enable_steady_tick(std::time::Duration::from_millis(250));
                Self::Bar(bar, Instant::now())
            }
            ProgressMode::Json => Self::Json(Instant::now()),
            ProgressMode::None => Self::Quiet,
        }
    }

    fn report(&mut self, p: &Progress) {
        let c = p.counts;
        let (done, total) = p.bytes;
        match self {
            Self::Bar(bar, started) => {
                if total > 0 {
                    if bar.length().is_none() {
                        bar.set_style(style(
                            "audit [{elapsed_precise}] {wide_bar} {percent:>3}% {msg}, ETA {eta}",
                        ));
                    }
                    bar.set_length(total);
                    bar.set_position(done);
                }
                let rate = c.turns_scored as f64 / started.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "{} lines, {} turns, {} errored, {rate:.1} turns/s",
                    c.lines_read, c.turns_scored, c.lines_errored
                ));
            }
            Self::Json(started) => {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                let eta =
                    (done > 0 && total > done).then(|| secs * (total - done) as f64 / done as f64);
                eprintln!(
                    "{}",
                    serde_json::json!({"progress": {"lines_read": c.lines_read,
                        "turns_scored": c.turns_scored, "lines_errored": c.lines_errored,
                        "bytes_done": done, "bytes_total": total,
                        "turns_per_s": c.turns_scored as f64 / secs, "eta_s": eta}})
                );
            }
            Self::Quiet => {}
        }
    }

    fn finish(&self) {
        if let Self::Bar(bar, _) = self {
            bar.finish();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
