//! Listeners, limits, the scorer worker, the upstream and the decision log.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Listeners and limits of the public server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Public address (clients and their chat traffic).
    pub listen: String,
    /// Admin address (/healthz, /readyz, /metrics); never the public one. Empty: no admin
    /// listener.
    pub admin_listen: String,
    /// Largest accepted request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest request head (request line and headers) in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Time allowed from the request's arrival to the response head, in milliseconds (504
    /// beyond).
    pub request_timeout_ms: u64,
    /// Time a client has to send its request head, and again its body, in milliseconds (the
    /// connection is closed, or 408, beyond): slow-trickling clients cannot hold connections.
    pub client_timeout_ms: u64,
    /// How long a connection may stay open with no traffic and no exchange in progress, in
    /// milliseconds (HTTP/1 keep-alive and HTTP/2 alike); it is closed beyond.
    pub idle_timeout_ms: u64,
    /// On shutdown, how long open connections and streams may finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Threads serving the public listener's connections, each keeping its connections for
    /// their whole life; 0: one per core.
    pub workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            max_body_bytes: 1 << 20,
            max_header_bytes: 64 << 10,
            request_timeout_ms: 300_000,
            client_timeout_ms: 30_000,
            idle_timeout_ms: 75_000,
            shutdown_grace_ms: 30_000,
            workers: 0,
        }
    }
}

/// The most worker threads `[server] workers` may ask for.
const MAX_WORKERS: usize = 1024;

impl ServerConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("[server] listen is empty; give an address such as 127.0.0.1:8080".into());
        }
        if !self.admin_listen.is_empty()
            && self.admin_listen == self.listen
            && !self.listen.ends_with(":0")
        {
            return Err(
                "[server] admin_listen must differ from listen: metrics are not public".into(),
            );
        }
        if self.max_body_bytes == 0 || self.max_header_bytes < 1024 {
            return Err("[server] max_body_bytes must be > 0 and max_header_bytes ≥ 1024".into());
        }
        if self.workers > MAX_WORKERS {
            return Err(format!(
                "[server] workers = {} is more threads than a gateway can use; give at most \
                 {MAX_WORKERS}, or 0 for one per core",
                self.workers
            ));
        }
        positive("[server] request_timeout_ms", self.request_timeout_ms)?;
        positive("[server] client_timeout_ms", self.client_timeout_ms)?;
        positive("[server] idle_timeout_ms", self.idle_timeout_ms)
    }
}

/// How the remote scorer reaches its servers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteSettings {
    /// Base URLs (`http://vllm-0:8000`); `/v1/completions` is appended.
    pub urls: Vec<String>,
    /// The `model` field of each request (the served model's name).
    pub model: String,
    /// Environment variable holding a bearer token for the servers, if they need one.
    pub api_key_env: Option<String>,
    /// Logprobs asked for per position; `Yes` and `No` must both be among them.
    pub top_logprobs: u32,
    /// Prompts per HTTP request (vLLM takes many; llama-cpp-python's server takes 1); the
    /// requests of one batch are sent concurrently.
    pub prompts_per_request: usize,
    /// Timeout of one HTTP request.
    pub timeout_ms: u64,
    /// Further tries after a failed one, each on the next endpoint.
    pub retries: u32,
    /// Pause before the first retry; doubled before each next one.
    pub backoff_ms: u64,
    /// Consecutive failures that open an endpoint's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit rests before one trial request.
    pub breaker_cooldown_ms: u64,
    /// Interval of the health probe (`GET /v1/models`); 0 turns it off.
    pub health_interval_ms: u64,
    /// How prompts are sent: token ids from the model's tokenizer (special tokens only where
    /// the template puts them), or text that the server tokenizes (user text that spells a
    /// special token such as `<end_of_turn>` then becomes that token).
    pub prompt_format: PromptFormat,
    /// Longest prompt in tokens (token ids only); longer content is cut inside its slot.
    pub max_tokens: usize,
}

/// How the remote scorer sends its prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptFormat {
    /// Lists of token ids (vLLM, llama.cpp's `llama-server`).
    TokenIds,
    /// Plain text; only for servers that take nothing else (the risk above).
    Text,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            model: "google/shieldgemma-2b".into(),
            api_key_env: None,
            top_logprobs: 20,
            prompts_per_request: 16,
            timeout_ms: 30_000,
            retries: 2,
            backoff_ms: 100,
            breaker_failures: 3,
            breaker_cooldown_ms: 10_000,
            health_interval_ms: 5_000,
            prompt_format: PromptFormat::TokenIds,
            max_tokens: 8192,
        }
    }
}

/// The scorer worker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerConfig {
    /// Checks that may wait for the scorer; beyond it new ones are shed (429 or fail-open).
    pub queue: usize,
    /// Most texts scored together in one engine batch.
    pub max_batch: usize,
    /// Longest wait for one check, in milliseconds, before it counts as an evaluation error.
    pub timeout_ms: u64,
    /// Results kept in the verdict cache (same content, template, guidelines and model: no
    /// model run); 0 turns it off.
    pub cache_entries: usize,
    /// Score through remote completions endpoints (vLLM, llama.cpp server, TGI) instead of the
    /// embedded model; `[model]` is then not loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteSettings>,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            queue: 64,
            max_batch: 16,
            timeout_ms: 60_000,
            cache_entries: 0,
            remote: None,
        }
    }
}

impl ScorerConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.queue == 0 || self.max_batch == 0 {
            return Err("[scorer] queue and max_batch must be at least 1".into());
        }
        if self.remote.as_ref().is_some_and(|r| r.urls.is_empty()) {
            return Err("[scorer.remote] urls must name at least one endpoint".into());
        }
        positive("[scorer] timeout_ms", self.timeout_ms)
    }
}

/// The chat API the gateway forwards to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL, `http://` or `https://`; the request path is appended to it.
    pub url: String,
    /// A PEM file of extra CA certificates trusted besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS connect timeout in milliseconds.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the upstream's response head, in milliseconds.
    #[serde(default = "default_response_ms")]
    pub response_timeout_ms: u64,
    /// Longest silence between two body chunks of the upstream, in milliseconds.
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
    /// Idle pooled connections are closed after this many milliseconds.
    #[serde(default = "default_pool_ms")]
    pub pool_idle_timeout_ms: u64,
}

fn default_connect_ms() -> u64 {
    5_000
}
fn default_response_ms() -> u64 {
    120_000
}
fn default_idle_ms() -> u64 {
    60_000
}
fn default_pool_ms() -> u64 {
    90_000
}

impl UpstreamConfig {
    /// An upstream at `url` with the default timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca_file: None,
            connect_timeout_ms: default_connect_ms(),
            response_timeout_ms: default_response_ms(),
            idle_timeout_ms: default_idle_ms(),
            pool_idle_timeout_ms: default_pool_ms(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let uri: hyper::Uri = self
            .url
            .parse()
            .map_err(|e| format!("[upstream] url {:?} is not a URL: {e}", self.url))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(_)) => {}
            _ => {
                return Err(format!(
                    "[upstream] url {:?} needs an http:// or https:// scheme and a host",
                    self.url
                ))
            }
        }
        if uri.query().is_some() {
            return Err("[upstream] url must not carry a query string".into());
        }
        positive("[upstream] connect_timeout_ms", self.connect_timeout_ms)?;
        positive("[upstream] response_timeout_ms", self.response_timeout_ms)?;
        positive("[upstream] idle_timeout_ms", self.idle_timeout_ms)
    }
}

/// The JSONL decision log: one line per moderated exchange and direction.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionLogConfig {
    /// The file appended to; absent: no decision log.
    pub path: Option<PathBuf>,
    /// Also record the scanned text (off by default: only its SHA-256 is recorded).
    pub include_content: bool,
}

fn positive(name: &str, value: u64) -> Result<(), String> {
    if value == 0 {
        Err(format!("{name} must be greater than 0"))
    } else {
        Ok(())
    }
}
