//! Hub download failures, against a local stand-in for the hub on 127.0.0.1 (HF_ENDPOINT):
//! each one tells the user what to do.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;

/// Serves `status` to at most `max` connections, then stops.
fn hub_answering(status: &'static str, max: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    format!("http://{addr}")
}

fn score_from_hub(endpoint: &str, token: Option<&str>) -> (Option<i32>, String) {
    let home = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shieldgate"));
    cmd.args(["score", "--model", "google/shieldgemma-2b", "hello"])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home.path())
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("SHIELDGATE_MODEL");
    if let Some(t) = token {
        cmd.env("HF_TOKEN", t);
    }
    let out = cmd.output().expect("binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn gated_model_without_token_asks_for_hf_token() {
    let (code, err) = score_from_hub(&hub_answering("401 Unauthorized", 4), None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("gated") && err.contains("HF_TOKEN"), "{err}");
}

#[test]
fn refused_token_asks_to_accept_the_licence() {
    let (code, err) = score_from_hub(&hub_answering("403 Forbidden", 4), Some("hf_test"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("accept the model's licence"), "{err}");
}

#[test]
fn unknown_repository_says_so() {
    let (code, err) = score_from_hub(&hub_answering("404 Not Found", 4), None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn no_network_suggests_offline_mode() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let (code, err) = score_from_hub(&format!("http://127.0.0.1:{port}"), None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("check the network") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}
