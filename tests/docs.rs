//! The manual cannot rot: every relative link in README.md and docs/ points at a file (and a
//! heading) that exists, every `shieldgate` command line in a shell block parses with the CLI,
//! and every script and benchmark a shell block names exists.

use std::path::PathBuf;

use clap::Parser;
use shieldgate::cli::Cli;

use crate::common;

/// README.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let root = common::root();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// The targets of Markdown links `[text](target)` in `text`.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

/// Lines of ```sh blocks, with `\` continuations joined and trailing comments dropped.
fn shell_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let code = line.split("  #").next().unwrap_or(line).trim_end();
        if let Some(start) = code.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(code);
        out.push(std::mem::take(&mut pending));
    }
    out
}

/// The arguments after `shieldgate` in a command (`shieldgate ...`, `cargo run --release --
/// ...`, the path of a built binary), after any `VAR=value` prefixes.
fn shieldgate_args(command: &str) -> Option<Vec<String>> {
    let words = shlex::split(command)?;
    let words: Vec<String> = words.into_iter().skip_while(|w| w.contains('=')).collect();
    let start = if words
        .first()
        .is_some_and(|w| w == "shieldgate" || w.ends_with("/shieldgate"))
    {
        1
    } else if words.starts_with(&["cargo".into(), "run".into()]) {
        words.iter().position(|w| w == "--")? + 1
    } else {
        return None;
    };
    Some(words[start..].to_vec())
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let dir = page.parent().expect("folder");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            let (file, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            assert!(target.exists(), "{}: dead link {link}", page.display());
            if !fragment.is_empty() {
                let text = std::fs::read_to_string(&target).expect("target");
                assert!(
                    anchors(&text).iter().any(|a| a == fragment),
                    "{}: no heading #{fragment} in {}",
                    page.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 30, "only {checked} links found");
}

#[test]
fn every_documented_command_line_is_one_the_cli_accepts() {
    let root = common::root();
    let benches = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
    let mut parsed = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).expect("page");
        let mut commands = shell_lines(&text);
        // The README's first lines give the two fresh-machine commands inline.
        let readme = page.ends_with("README.md");
        commands.extend(
            text.lines()
                .take(if readme { 4 } else { 0 })
                .filter_map(|l| l.split_once(": `").map(|(_, c)| c.trim_end_matches('`')))
                .flat_map(|c| c.split("&&").map(str::trim).map(str::to_string)),
        );
        for command in commands {
            let origin = format!("{}: {command}", page.display());
            let words = shlex::split(&command).unwrap_or_else(|| panic!("{origin}: quoting"));
            for script in words.iter().filter(|w| w.starts_with("scripts/")) {
                assert!(root.join(script).is_file(), "{origin}: no {script}");
            }
            if let Some(at) = words.iter().position(|w| w == "--bench") {
                let name = &words[at + 1];
                assert!(
                    benches.contains(&format!("name = \"{name}\"")),
                    "{origin}: no bench {name}"
                );
            }
            let Some(args) = shieldgate_args(&command) else {
                continue;
            };
            Cli::try_parse_from(std::iter::once("shieldgate".to_string()).chain(args))
                .unwrap_or_else(|e| panic!("{origin}: the CLI refuses it: {e}"));
            parsed += 1;
        }
    }
    assert!(parsed > 10, "only {parsed} command lines found");
}

#[test]
fn the_readme_is_a_front_page() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).expect("README");
    let lines = readme.lines().count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; the manual lives in docs/"
    );
    let first: Vec<&str> = readme.lines().take(4).collect();
    assert!(first
        .iter()
        .any(|l| l.starts_with("Run (fresh machine): `")));
    assert!(first
        .iter()
        .any(|l| l.starts_with("Test (fresh machine): `")));
    for page in pages().iter().skip(1) {
        let name = page.strip_prefix(common::root()).expect("in the repo");
        assert!(
            readme.contains(&format!("]({})", name.display())),
            "README.md does not link {}",
            name.display()
        );
    }
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(anchor(" Remote scorer backend"), "remote-scorer-backend");
    assert_eq!(
        anchor("`shieldgate export` / `shieldgate quantize`"),
        "shieldgate-export--shieldgate-quantize"
    );
    assert_eq!(links("see [a](b.md#c) and [d](e)"), ["b.md#c", "e"]);
    assert_eq!(
        shieldgate_args("RUST_LOG=info cargo run --release -- score x"),
        Some(vec!["score".to_string(), "x".to_string()])
    );
}
