//! What the proxy scans, how it treats responses and failures, and what a block reveals.

use serde::{Deserialize, Serialize};

/// The most earlier turns `context_turns` may name.
pub const MAX_CONTEXT_TURNS: usize = 64;

/// Proxy behaviour; reloadable.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Paths no adapter knows: forwarded untouched (`pass`) or answered 404 (`refuse`).
    pub unknown_paths: UnknownPaths,
    /// What the input check scans.
    pub scan: Vec<Scan>,
    /// Whether requests are checked before they are forwarded.
    pub input_check: bool,
    /// Earlier turns of the conversation shown to ShieldGemma before each checked user turn
    /// and before the user turn an answer is checked after (0: each text alone).
    pub context_turns: usize,
    /// Whether the request is sent upstream while its input check runs instead of after it:
    /// the answer waits for the verdict, and a stopped request's upstream call is cancelled
    /// (the upstream has seen the request by then).
    pub parallel_input_check: bool,
    /// How responses are checked.
    pub output_mode: OutputMode,
    /// In `incremental` mode, new answer characters between two checks.
    pub incremental_chars: usize,
    /// What a block tells the client about the decision.
    pub reveal: Reveal,
    /// The text that replaces a blocked response.
    pub replacement_text: String,
    /// The input check cannot be made (scorer down, slow or overloaded).
    pub on_input_error: FailMode,
    /// The output check cannot be made.
    pub on_output_error: FailMode,
    /// Requests on a moderated path that are not valid JSON of the expected shape:
    /// `reject` answers 400, `pass` forwards them unscanned (recorded as such).
    pub on_bad_request: BadRequest,
    /// Header naming the tenant, for profile selection.
    pub tenant_header: String,
    /// Largest response body held for the output check, in bytes (a larger one is an
    /// evaluation error).
    pub max_response_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            unknown_paths: UnknownPaths::Pass,
            scan: vec![Scan::LastUser],
            input_check: true,
            context_turns: 0,
            parallel_input_check: false,
            output_mode: OutputMode::Buffer,
            incremental_chars: 200,
            reveal: Reveal::Categories,
            replacement_text: "This response was withheld by the content policy.".into(),
            on_input_error: FailMode::Open,
            on_output_error: FailMode::Open,
            on_bad_request: BadRequest::Reject,
            tenant_header: "x-shieldgate-tenant".into(),
            max_response_bytes: 8 << 20,
        }
    }
}

impl ProxyConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.scan.is_empty() {
            return Err(
                "[proxy] scan is empty; list what to scan, e.g. [\"last_user\"], or set input_check = false"
                    .into(),
            );
        }
        if hyper::header::HeaderName::from_bytes(self.tenant_header.as_bytes()).is_err() {
            return Err(format!(
                "[proxy] tenant_header {:?} is not a header name",
                self.tenant_header
            ));
        }
        if self.context_turns > MAX_CONTEXT_TURNS {
            return Err(format!(
                "[proxy] context_turns = {} is more than {MAX_CONTEXT_TURNS}; long histories are \
                 cut to fit the model anyway, so name at most the turns that matter",
                self.context_turns
            ));
        }
        if self.incremental_chars == 0 {
            return Err("[proxy] incremental_chars must be greater than 0".into());
        }
        if self.max_response_bytes == 0 {
            return Err("[proxy] max_response_bytes must be greater than 0".into());
        }
        Ok(())
    }
}

/// Treatment of paths without an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPaths {
    /// Forward untouched.
    Pass,
    /// Answer 404.
    Refuse,
}

/// A part of a conversation the input check scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scan {
    /// The last user turn.
    LastUser,
    /// Every user turn.
    AllUser,
    /// The system (and developer) prompt.
    System,
    /// Arguments of tool calls in the history.
    ToolCalls,
    /// Tool results sent back to the model.
    ToolResults,
}

/// How responses are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputMode {
    /// Hold the response (or the whole stream) until it is scored.
    Buffer,
    /// Relay a stream as it is scored: check the growing answer every `incremental_chars`
    /// characters, hold back the unscored tail, end the stream inside the protocol when a
    /// threshold is crossed. Whole (non-stream) responses are held as in `buffer`.
    Incremental,
    /// Pass the response through at once, score it afterwards, record only.
    Audit,
    /// No output check.
    Off,
}

/// What a block reveals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reveal {
    /// Only that the content was filtered.
    None,
    /// Which categories were filtered.
    Categories,
    /// Categories with their scores and thresholds.
    Scores,
}

/// What happens when a check cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Pass, with the decision marked `evaluation_error`.
    Open,
    /// Refuse with 503 `moderation_unavailable`.
    Closed,
}

/// Treatment of malformed requests on moderated paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRequest {
    /// Answer 400 in the protocol's error shape.
    Reject,
    /// Forward unscanned; the decision records it.
    Pass,
}
