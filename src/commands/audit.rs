//! `shieldgate audit`: loads the policies (from a config profile) and the model, runs the
//! audit with progress on stderr, prints the summary's counts, and maps the outcome to an exit
//! code.

use std::io::IsTerminal;
use std::path::Path;

use std::time::Instant;

use anyhow::{bail, Context};

use crate::audit::reader::Fields;
use crate::audit::summary::Summary;
use crate::audit::{self, AuditOptions, Input, Progress};
use crate::cli::{AuditArgs, AuditMergeArgs, ProgressMode};
use crate::config::Config;
use crate::proxy::profiles::Profiles;

use super::{load_engine, Outcome};

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

/// Runs the command.
pub fn run(args: &AuditArgs) -> anyhow::Result<Outcome> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let profiles = Profiles::build(&config)?;
    let profile = profiles.get(&args.profile).with_context(|| {
        format!(
            "--profile {:?}: the config has {}",
            args.profile,
            profiles.names().join(", ")
        )
    })?;
    let shard = args
        .shard
        .as_deref()
        .map(parse_shard)
        .transpose()?
        .unwrap_or((0, 1));
    if args.batch_turns == 0 {
        bail!("--batch-turns must be at least 1");
    }
    let inputs = args
        .inputs
        .iter()
        .map(|p| {
            if p.as_os_str() == "-" {
                Ok(Input::Stdin)
            } else if p.is_file() {
                Ok(Input::File(p.clone()))
            } else {
                bail!("{}: no such file", p.display())
            }
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let opts = AuditOptions {
        inputs,
        out: args.out.clone(),
        fields: Fields {
            text: args.text_field.clone(),
            response: args.response_field.clone(),
        },
        policies: profile.policies.clone(),
        batch_turns: args.batch_turns,
        max_turn_chars: args.max_turn_chars,
        shard,
        include_text: args.include_text,
        restart: args.restart,
        abort_after_writes: args.abort_after_writes,
    };
    let engine = load_engine(&args.model.apply(config.model.clone()))?;
    let started = Instant::now();
    let mode = match args.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Auto,
        ProgressMode::Auto => ProgressMode::None,
        other => other,
    };
    let mut report = |p: &Progress| report_progress(mode, p, started);
    let summary = audit::run(&engine, &opts, &mut report)?;
    if mode == ProgressMode::Auto {
        eprintln!();
    }
    Ok(finish(&opts.out, &summary, args.allow_errors))
}

/// Runs `audit-merge`.
pub fn merge(args: &AuditMergeArgs) -> anyhow::Result<Outcome> {
    let summary = audit::merge::merge(&args.shards, &args.out)?;
    Ok(finish(&args.out, &summary, args.allow_errors))
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

fn report_progress(mode: ProgressMode, p: &Progress, started: Instant) {
    let c = p.counts;
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let rate = c.turns_scored as f64 / secs;
    match mode {
        ProgressMode::Json => eprintln!(
            "{}",
            serde_json::json!({"progress": {"lines_read": c.lines_read, "turns_scored": c.turns_scored,
                "lines_errored": c.lines_errored, "bytes_done": p.bytes.0, "bytes_total": p.bytes.1,
                "turns_per_s": rate}})
        ),
        ProgressMode::Auto => {
            let (done, total) = p.bytes;
            let eta = if done > 0 && total > done {
                format!(", ETA {:.0} s", secs * (total - done) as f64 / done as f64)
            } else {
                String::new()
            };
            let pct = if total > 0 {
                format!("{:5.1}%  ", 100.0 * done as f64 / total as f64)
            } else {
                String::new()
            };
            eprint!(
                "\raudit: {pct}{} lines, {} turns scored, {} errored, {rate:.1} turns/s{eta}   ",
                c.lines_read, c.turns_scored, c.lines_errored
            );
        }
        ProgressMode::None => {}
    }
}
