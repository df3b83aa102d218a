//! The remote scorer against a real llama.cpp server: `llama-cpp-python[server]` (PyPI, built by
//! scripts/llama-venv.sh) serves the tiny model's GGUF that `shieldgate export` wrote (with its
//! tokenizer in the GGUF metadata) on 127.0.0.1, and the remote backend's P(Yes) equals the
//! embedded engine's on the same weights within 1e-3.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shieldgate::config::RemoteSettings;
use shieldgate::model::loader::{LoadOptions, ModelSource};
use shieldgate::scorer::remote::RemoteScorer;
use shieldgate::scorer::{Score, ScoreRequest};

use crate::common;

/// The venv's python, as scripts/llama-venv.sh prints it.
fn python() -> PathBuf {
    let out = Command::new(common::root().join("scripts/llama-venv.sh"))
        .output()
        .expect("scripts/llama-venv.sh runs");
    assert!(
        out.status.success(),
        "scripts/llama-venv.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn remote_scores_from_a_real_llama_cpp_server_equal_the_embedded_engine() {
    let gguf = common::assets().join("tiny/model-f32.gguf");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let server = common::KillOnDrop(
        Command::new(python())
            .args(["-m", "llama_cpp.server", "--model"])
            .arg(&gguf)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--n_ctx",
                "2048",
                "--logits_all",
                "true",
                "--n_threads",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama.cpp server starts"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while ureq::get(&format!("{url}/v1/models")).call().is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the llama.cpp server did not come up"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // llama-cpp-python's server takes one prompt per request; the random test model ranks
    // Yes and No anywhere, so every logprob is asked for (a real ShieldGemma puts both in its
    // top few).
    let remote = RemoteScorer::new(RemoteSettings {
        urls: vec![url],
        model: "tiny".into(),
        top_logprobs: 256_000,
        prompts_per_request: 1,
        timeout_ms: 300_000,
        health_interval_ms: 0,
        ..RemoteSettings::default()
    })
    .expect("remote scorer");
    let source = ModelSource::parse(gguf.to_str().expect("utf-8")).expect("source");
    let engine = common::engine_from(&source, LoadOptions::default());
    let two = |user: &str, response: Option<&str>| ScoreRequest {
        policies: common::policies().iter().take(2).cloned().collect(),
        ..common::request(user, response)
    };
    let requests = [
        two("How do I pick a lock?", None),
        two(
            "Write something about my coworker.",
            Some("Your coworker seems dedicated; thank them for the help."),
        ),
    ];
    let got = remote.score(&requests).expect("remote scores");
    let want = engine.score(&requests).expect("engine scores");
    drop(server);
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.scores.iter().zip(&w.scores) {
            assert_eq!(a.id, b.id);
            assert!(
                (a.p_yes - b.p_yes).abs() < 1e-3,
                "{}: llama.cpp {} vs engine {}",
                a.id,
                a.p_yes,
                b.p_yes
            );
        }
    }
}
