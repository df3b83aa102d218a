//! The gateway driven by the official `openai` and `anthropic` Python SDKs (installed by
//! scripts/sdk-venv.sh, which scripts/test.sh runs): blocks arrive as the errors and finish
//! reasons those clients understand.

use std::process::Command;

use serde_json::{json, Value};

use crate::common;
use crate::harness::{start, MockUpstream, Scripted};

fn python() -> std::path::PathBuf {
    let python = common::root().join("target/sdk-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/sdk-venv.sh first",
        python.display()
    );
    python
}

#[test]
#[ignore = "needs the SDK venv: scripts/sdk-venv.sh (scripts/test.sh runs it)"]
fn the_official_sdks_understand_every_block() {
    let python = python();
    let runtime = crate::harness::runtime();
    let mock = MockUpstream::start(&runtime);
    let gw = start(
        &format!("[upstream]\nurl = \"http://{}\"\n", mock.addr),
        Scripted::new(true),
    );
    let out = Command::new(python)
        .arg(common::root().join("tests/sdk/check_sdks.py"))
        .arg(format!("http://{}", gw.addr))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).expect("json report");
    let replacement = "This response was withheld by the content policy.";
    let o = &seen["openai"];
    assert_eq!(
        o["blocked_prompt"],
        json!({"status": 400, "code": "content_filter", "inner": "ResponsibleAIPolicyViolation"})
    );
    assert_eq!(o["clean_content"], "Hello there.");
    assert_eq!(o["blocked_answer"], json!(["content_filter", replacement]));
    assert_eq!(o["blocked_stream"], json!(["content_filter", replacement]));
    assert_eq!(o["clean_stream"], "fine words");
    // violence comes from dangerous, which the script scores P(Yes) = 0.0998 here.
    assert_eq!(
        o["moderation"],
        json!([[true, true, 0.0998], [false, false, 0.0998]])
    );
    assert_eq!(
        o["responses"],
        json!(["incomplete", "content_filter", replacement])
    );
    assert_eq!(
        o["responses_stream"],
        json!(["response.created", "response.incomplete"])
    );
    let a = &seen["anthropic"];
    assert_eq!(
        a["blocked_prompt"],
        json!({"status": 400, "type": "invalid_request_error"})
    );
    assert_eq!(a["blocked_answer"], json!(["refusal", replacement]));
    assert_eq!(a["blocked_stream"], json!(["refusal", replacement]));
    assert_eq!(a["clean_stream"], json!(["end_turn", "all calm"]));
}
