//! `shieldgate tune`: reads labelled examples and traffic, scores what has no scores, analyses
//! each category, prints the suggested thresholds and the config diff, writes the outputs (and
//! the config with `--write`), and serves the workbench with `--serve`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cli::TuneArgs;
use crate::config::Config;
use crate::http::server::{serve, Limits};
use crate::tune::analysis::{analyse, CategoryReport, Current, Settings};
use crate::tune::context::{self as context_comparison, compare};
use crate::tune::curves::Target;
use crate::tune::data::Example;
use crate::tune::data::{read_examples, read_traffic, ExampleFields};
use crate::tune::pii::{shares, KindShare};
use crate::tune::report::num;
use crate::tune::thresholds::{diff, Tuned};
use crate::tune::workbench::{Explainer, LoadScorer, Workbench};
use crate::tune::{self, score_examples, unscored, Outputs};

use super::serve::{bind, shutdown_signal};
use super::{context_turns, load_scorer, profile, Outcome};

/// Splits the `--target` flags into per-category targets and the default.
fn parse_targets(
    flags: &[String],
    ids: &[String],
) -> anyhow::Result<(BTreeMap<String, Target>, Target)> {
    let mut per = BTreeMap::new();
    let mut default = Target::BestF1;
    for flag in flags {
        let parse = |t: &str| Target::parse(t).map_err(|e| anyhow::anyhow!("--target {e}"));
        match flag.split_once(':') {
            Some((id, t)) => {
                if !ids.iter().any(|i| i == id) {
                    bail!(
                        "--target {flag:?}: {id:?} is not a category (categories: {})",
                        ids.join(", ")
                    );
                }
                per.insert(id.to_string(), parse(t)?);
            }
            None => default = parse(flag)?,
        }
    }
    Ok((per, default))
}

/// The calibrated probability each calibrated category's suggested threshold is written as.
fn print_calibrated(suggested: &[(String, f64)], tuned: &Tuned) {
    let lines: Vec<String> = suggested
        .iter()
        .filter_map(|(id, raw)| {
            let c = tuned.calibrations.get(id)?;
            Some(format!(
                "  {id}: P(Yes) {raw:.4} = calibrated {:.4}",
                c.apply(*raw)
            ))
        })
        .collect();
    if !lines.is_empty() {
        println!(
            "\nThresholds above are raw P(Yes); the config holds calibrated categories' \
             thresholds as calibrated probabilities:\n{}",
            lines.join("\n")
        );
    }
}

/// One line per kind of personal data or secret found, after the thresholds table.
fn print_pii(shares: &[KindShare]) {
    if !shares.is_empty() {
        println!("\nPersonal data and secrets (items holding each kind; the profile's action):");
    }
    for s in shares {
        let share = s.percent().map(|p| format!(" ({p})")).unwrap_or_default();
        println!(
            "  {}: {} labelled examples, {} traffic items{share}; requests {}, answers {}",
            s.kind.name(),
            s.examples,
            s.traffic,
            s.input.as_str(),
            s.output.as_str()
        );
    }
}

fn print_table(reports: &[CategoryReport]) {
    println!("| category | labelled (violations) | ROC-AUC | AU-PRC | target | threshold now → suggested | F1 now → suggested |");
    println!("|---|---|---|---|---|---|---|");
    for r in reports {
        let (t, f1) = match &r.suggested {
            Some(s) => (format!("{:.4}", s.threshold), num(s.f1)),
            None => ("(none meets the target)".into(), "–".into()),
        };
        println!(
            "| {} | {} ({}) | {} | {} | {} | {:.4} → {t} | {} → {f1} |",
            r.id,
            r.labelled,
            r.positives,
            num(r.roc_auc),
            num(r.average_precision),
            r.target,
            r.current.threshold,
            num(r.current.f1)
        );
    }
}

/// Writes a file through a temporary neighbour and a rename, so a crash leaves the old or the
/// new text, never half of one.
fn replace_file(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.tune-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Runs the command.
pub fn run(args: &TuneArgs) -> anyhow::Result<Outcome> {
    if args.labelled.is_empty() && args.traffic.is_empty() {
        bail!("nothing to tune on: give labelled JSONL files and/or --traffic");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (config, profile) = profile(args.config.as_deref(), &args.profile)?;
    let policies = profile.policies.clone();
    let config_text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => Config::default().to_toml(),
    };
    let ids: Vec<String> = policies.iter().map(|p| p.id.clone()).collect();
    let (targets, default_target) = parse_targets(&args.target, &ids)?;
    let fields = ExampleFields {
        prompt: args.prompt_field.clone(),
        response: args.response_field.clone(),
    };
    let (mut examples, mut errors) = (Vec::new(), Vec::new());
    for path in &args.labelled {
        let loaded = read_examples(path, &fields, &ids)
            .with_context(|| format!("cannot read {}", path.display()))?;
        examples.extend(loaded.items);
        errors.extend(loaded.errors);
    }
    let (mut traffic, mut traffic_pii) = (Vec::new(), Vec::new());
    for path in &args.traffic {
        let loaded =
            read_traffic(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (scores, found): (Vec<_>, Vec<_>) = loaded.items.into_iter().unzip();
        traffic.extend(scores);
        traffic_pii.extend(found);
        errors.extend(loaded.errors);
    }
    // Tuning works on raw P(Yes): a calibrated threshold is taken back to its raw equal.
    let current: Vec<Current> = policies
        .iter()
        .map(|p| Current {
            id: p.id.clone(),
            threshold: p
                .calibration
                .as_ref()
                .map_or(p.threshold, |c| c.raw_threshold(p.threshold)),
        })
        .collect();
    let settings = Settings {
        targets,
        default_target,
        bootstrap_rounds: args.bootstrap,
        seed: args.seed,
    };
    let turns = context_turns(args.context_turns, config.proxy.context_turns)?;
    let compared = args
        .compare_context
        .map(|n| context_turns(Some(n), 0))
        .transpose()?;
    let missing = unscored(&examples);
    let mut comparison = None;
    let mut loaded = None;
    if missing > 0 || compared.is_some() {
        let why = match compared {
            Some(_) => "--compare-context scores every example".to_string(),
            None => format!("{missing} labelled examples have no scores"),
        };
        let scorer = load_scorer(&config, &args.model.apply(config.model.clone()))
            .with_context(|| format!("{why}, so it needs the model"))?
            .scorer;
        loaded = Some(scorer.clone());
        let score = |examples: Vec<_>, turns: usize, what: &str| {
            let mut progress =
                |done: usize, total: usize| eprint!("\rtune: scored {done}/{total}{what}");
            let scored = score_examples(
                scorer.as_ref(),
                examples,
                &policies,
                (args.batch, turns),
                &mut progress,
            );
            eprintln!();
            scored
        };
        if let Some(n) = compared {
            let texts = examples.iter().filter(|e| e.prompt.is_some()).count();
            if texts < examples.len() {
                bail!(
                    "--compare-context scores every example, but {} have scores and no text",
                    examples.len() - texts
                );
            }
            let rescore = |examples: &[Example]| -> Vec<Example> {
                let mut fresh = examples.to_vec();
                fresh.iter_mut().for_each(|e| e.scores.clear());
                fresh
            };
            let (alone, errs) = score(rescore(&examples), 0, " alone");
            errors.extend(errs);
            let (in_context, errs) = score(rescore(&examples), n, " in context");
            // Both scorings read the same examples: an example fails in both or in neither.
            let new: Vec<_> = errs.into_iter().filter(|e| !errors.contains(e)).collect();
            errors.extend(new);
            let analysed = |examples: &[Example]| analyse(examples, &[], &current, &settings);
            comparison = Some(compare(
                &analysed(&alone),
                &analysed(&in_context),
                &in_context,
                n,
            ));
            // The thresholds are suggested for the context the config (or --context-turns)
            // asks for; the same examples failed above already.
            examples = match turns {
                0 => alone,
                t if t == n => in_context,
                _ => score(rescore(&examples), turns, "").0,
            };
        } else {
            let (scored, errs) = score(examples, turns, "");
            examples = scored;
            errors.extend(errs);
        }
    }
    let reports = analyse(&examples, &traffic, &current, &settings);
    let suggested: Vec<(String, f64)> = reports
        .iter()
        .filter_map(|r| Some((r.id.clone(), r.suggested?.threshold)))
        .collect();
    let fitted: Vec<_> = reports
        .iter()
        .filter(|_| args.calibrate)
        .filter_map(|r| Some((r.id.clone(), r.calibration.as_ref()?.fitted.clone())))
        .collect();
    let tuned = Tuned::new(&config_text, &args.profile, &config.calibration, &fitted)?;
    let new_text = tuned.with_thresholds(&suggested)?;
    Config::parse(&new_text, "the suggested config")
        .context("the suggested config does not load; this is a bug, please report it")?;
    let title = format!("shieldgate threshold tuning (profile {})", args.profile);
    let pii = shares(&examples, &traffic_pii, &profile);
    tune::write_outputs(
        &args.out,
        &Outputs {
            examples: &examples,
            errors: &errors,
            reports: &reports,
            thresholds_toml: &new_text,
            pii: &pii,
            context: comparison.as_ref(),
            title: &title,
        },
    )?;
    print_table(&reports);
    print_calibrated(&suggested, &tuned);
    print_pii(&pii);
    if let Some(c) = &comparison {
        println!("\n{}", context_comparison::table(c));
    }
    let current_name = args
        .config
        .as_ref()
        .map_or_else(|| "defaults".into(), |p| p.display().to_string());
    let changes = diff(&config_text, &new_text, &current_name, "suggested");
    println!();
    if changes.is_empty() {
        println!("The suggested thresholds equal the current ones.");
    } else {
        print!("{changes}");
    }
    match (&args.config, args.write) {
        (Some(path), true) if !changes.is_empty() => {
            replace_file(path, &new_text)?;
            println!("\nWrote the suggested thresholds to {}.", path.display());
        }
        _ if !changes.is_empty() => println!(
            "\nNothing was changed: {} holds the suggested config; pass --config FILE --write to apply it.",
            args.out.join(tune::THRESHOLDS).display()
        ),
        _ => {}
    }
    if !errors.is_empty() {
        eprintln!(
            "tune: {} lines could not be used; see {}",
            errors.len(),
            args.out.join(tune::ERRORS).display()
        );
    }
    println!("Report: {}", args.out.join(tune::REPORT).display());
    if let Some(address) = &args.serve {
        let model = args.model.apply(config.model.clone());
        let load: LoadScorer = Box::new(move || match &loaded {
            Some(scorer) => Ok(scorer.clone()),
            None => load_scorer(&config, &model)
                .map(|l| l.scorer)
                .map_err(|e| format!("cannot load the model to explain with: {e:#}")),
        });
        let explainer = Explainer::new(&examples, policies.clone(), turns, load);
        let bench = Arc::new(Workbench::new(
            &examples,
            &traffic,
            &reports,
            tuned,
            Some(explainer),
            comparison.as_ref(),
        ));
        serve_workbench(address, bench)?;
    }
    Ok(if errors.is_empty() || args.allow_errors {
        Outcome::Clean
    } else {
        Outcome::InputErrors
    })
}

/// Serves the workbench until Ctrl-C or SIGTERM.
fn serve_workbench(address: &str, bench: Arc<Workbench>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = bind(address).await?;
        println!(
            "shieldgate tune: workbench at http://{}/ (Ctrl-C ends it)",
            listener.local_addr()?
        );
        let handler = move |req| bench.clone().handle(req);
        let limits = Limits {
            shutdown_grace: std::time::Duration::from_secs(1),
            ..Limits::default()
        };
        serve(listener, limits, handler, shutdown_signal()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_can_be_set_per_category() {
        let ids = vec!["hate".to_string(), "sexual".to_string()];
        let flags = ["recall=0.9".to_string(), "hate:precision=0.8".to_string()];
        let (per, default) = parse_targets(&flags, &ids).expect("parses");
        assert_eq!(default, Target::Recall(0.9));
        assert_eq!(per["hate"], Target::Precision(0.8));
        assert!(parse_targets(&["violence:recall=0.5".to_string()], &ids).is_err());
        assert!(parse_targets(&["recall".to_string()], &ids).is_err());
    }
}
