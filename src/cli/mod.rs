//! Command-line arguments of the `shieldgate` binary (clap structs only; the commands live in
//! [`crate::commands`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::records::Format;
use crate::audit::Explain;
use crate::config::ModelSettings;

/// A safety-moderation gateway built on Google's ShieldGemma classifier.
#[derive(Debug, Parser)]
#[command(name = "shieldgate", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing's env-filter syntax); RUST_LOG also works.
    #[arg(long, global = true, default_value = "warn")]
    pub log_level: String,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Score text against the safety policies and print JSON.
    Score(Box<ScoreArgs>),
    /// Run the gateway: moderate chat API traffic to an upstream, and serve /v1/moderations.
    Serve(Box<ServeArgs>),
    /// Validate a gateway config file without starting anything.
    CheckConfig(CheckConfigArgs),
    /// Score every turn of stored conversation logs (resumable; results, errors, summary).
    Audit(Box<AuditArgs>),
    /// Merge the output folders of `audit --shard I/N` runs into one.
    AuditMerge(AuditMergeArgs),
    /// Suggest per-category thresholds from labelled data: curves, report, config diff, and a
    /// browser workbench (--serve).
    Tune(Box<TuneArgs>),
    /// Write a model as a Hugging Face folder or a GGUF file (F32, F16, Q8_0, Q4_0, Q4_K_M).
    #[command(visible_alias = "quantize")]
    Export(ExportArgs),
}

/// `shieldgate export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The model to read: a folder, a .gguf file, a hub id or synthetic:PRESET.
    #[arg(long)]
    pub model: String,
    /// tokenizer.json to use instead of the one beside the weights; it is copied beside the
    /// output.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Output: a folder (Hugging Face layout), or a file ending in .gguf.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight type: f32, f16 or bf16 for folders; f32, f16, q8_0, q4_0 or q4_k_m for GGUF.
    #[arg(long, default_value = "f32",
          value_parser = ["f32", "bf16", "f16", "q8_0", "q4_0", "q4_k_m"])]
    pub dtype: String,
    /// Number of safetensors shards for a folder (1: model.safetensors).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Replace an existing output.
    #[arg(long)]
    pub force: bool,
}

/// Which model to load and how to run it; each flag overrides the config's `[model]` value
/// (defaults in brackets).
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model folder (config.json, tokenizer.json, safetensors), a .gguf file, a hub id
    /// (downloaded into the HF cache; HF_TOKEN and HF_HUB_OFFLINE are honoured), or
    /// synthetic:PRESET for a random-weight model (tiny, odd, 2b, 9b, 27b)
    /// [google/shieldgemma-2b].
    #[arg(long, env = "SHIELDGATE_MODEL")]
    pub model: Option<String>,
    /// tokenizer.json to use instead of the one beside the weights (needed for GGUF files
    /// without one beside them and for synthetic models).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Weight and activation precision; the Yes/No head always runs in f32 [f32].
    #[arg(long, value_parser = ["f32", "bf16", "f16"])]
    pub dtype: Option<String>,
    /// Quantize the weight matrices while loading: q8_0, q4_0 or q4_k_m (activations in f32).
    #[arg(long, value_parser = ["q8_0", "q4_0", "q4_k_m"])]
    pub quantize: Option<String>,
    /// cpu, cuda, cuda:N or metal (GPU builds need --features cuda or metal) [cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Longest prompt in tokens; longer content is cut inside its slot, never the template
    /// [8192].
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Tokens per sequence per prefill step (bounds attention memory on long inputs) [512].
    #[arg(long)]
    pub prefill_chunk: Option<usize>,
    /// Padded tokens (rows × longest prompt) run together; larger batches run in groups of
    /// similar length within it [4096].
    #[arg(long)]
    pub batch_tokens: Option<usize>,
    /// Run each policy's prompt whole instead of sharing the content prefix across policies.
    #[arg(long)]
    pub no_prefix_reuse: bool,
    /// Tokens of recent checks' prefixes kept for later checks that share them (a growing
    /// answer, a conversation's turns); overrides [model] prefix_cache_tokens.
    #[arg(long, value_name = "N")]
    pub prefix_cache_tokens: Option<usize>,
}

impl ModelArgs {
    /// The settings with the flags that were given applied.
    pub fn apply(&self, mut settings: ModelSettings) -> ModelSettings {
        if let Some(v) = &self.model {
            settings.source = v.clone();
        }
        if let Some(v) = &self.tokenizer {
            settings.tokenizer = Some(v.clone());
        }
        if let Some(v) = &self.dtype {
            settings.dtype = v.clone();
        }
        if let Some(v) = &self.quantize {
            settings.quantize = Some(v.clone());
        }
        if let Some(v) = &self.device {
            settings.device = v.clone();
        }
        if let Some(v) = self.max_tokens {
            settings.max_tokens = v;
        }
        if let Some(v) = self.prefill_chunk {
            settings.prefill_chunk = v;
        }
        if let Some(v) = self.batch_tokens {
            settings.batch_tokens = v;
        }
        if self.no_prefix_reuse {
            settings.prefix_reuse = false;
        }
        if let Some(v) = self.prefix_cache_tokens {
            settings.prefix_cache_tokens = v;
        }
        settings
    }
}

/// Which policies to score and at which thresholds.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Policy ids to score (repeatable); default: every policy.
    #[arg(long = "policy", value_name = "ID")]
    pub policies: Vec<String>,
    /// Load every *.toml policy of this folder instead of the four built-in harms.
    #[arg(long, value_name = "DIR")]
    pub policies_dir: Option<PathBuf>,
    /// Add a custom policy file (repeatable).
    #[arg(long, value_name = "FILE")]
    pub policy_file: Vec<PathBuf>,
    /// Override a policy's threshold, as ID=VALUE (repeatable).
    #[arg(long, value_name = "ID=VALUE")]
    pub threshold: Vec<String>,
    /// Also score the injection category with this Prompt Guard 2 model: a folder, a hub id
    /// (meta-llama/Llama-Prompt-Guard-2-86M) or synthetic:22m / synthetic:86m.
    #[arg(long, value_name = "SOURCE")]
    pub injection_model: Option<String>,
}

/// `shieldgate score`.
#[derive(Debug, Clone, Args)]
pub struct ScoreArgs {
    /// The user prompt to score. Without it (and without --file) the text is read from stdin.
    pub text: Option<String>,
    /// Read the input from this file ('-' for stdin).
    #[arg(long, short, conflicts_with = "text")]
    pub file: Option<PathBuf>,
    /// The input is JSON lines: {"prompt": "...", "response": "...", "id": ...} or
    /// {"messages": [...], "id": ...} (the last turn is scored) per line.
    #[arg(long)]
    pub jsonl: bool,
    /// With `messages` lines: judge the last turn after up to N earlier turns.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "jsonl")]
    pub context_turns: usize,
    /// A chatbot response to score with the prompt-response template.
    #[arg(long, conflicts_with_all = ["jsonl", "response_file"])]
    pub response: Option<String>,
    /// Read the chatbot response from this file.
    #[arg(long, conflicts_with = "jsonl")]
    pub response_file: Option<PathBuf>,
    /// Inputs scored together in one engine batch (JSON lines mode).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Pretty-print the JSON output.
    #[arg(long)]
    pub pretty: bool,
    /// Say which spans of the judged text (sentences, clauses) move P(Yes) most: the text is
    /// scored again once per span, with the span removed.
    #[arg(long)]
    pub explain: bool,
    /// Spans scored at most per explained text (neighbouring sentences are merged beyond it).
    #[arg(long, value_name = "N", default_value_t = crate::scorer::explain::DEFAULT_SPANS, requires = "explain")]
    pub explain_spans: usize,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub policy: PolicyArgs,
}

/// `shieldgate serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The gateway's TOML config (examples/shieldgate.toml shows every key with its default);
    /// without it every default applies. Reloaded on SIGHUP and when the file changes.
    #[arg(long, short, env = "SHIELDGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Public address; overrides [server] listen (port 0 picks a free port; the addresses are
    /// printed on stdout).
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin address (/healthz, /readyz, /metrics); overrides [server] admin_listen; "" turns
    /// it off.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Upstream base URL; overrides [upstream] url.
    #[arg(long)]
    pub upstream: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
}

/// `shieldgate check-config`.
#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    /// The config file to validate (policies, profiles, upstream TLS settings included).
    pub config: PathBuf,
    /// Print the configuration with every default filled in.
    #[arg(long)]
    pub print: bool,
}

/// `shieldgate audit`.
#[derive(Debug, Clone, Args)]
pub struct AuditArgs {
    /// Log files (JSON lines or CSV, plain, gzip or zstd), read in this order; a quoted glob
    /// (`'logs/*.jsonl.gz'`) expands in sorted order; '-' reads standard input (not resumable).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Input format; by default `.csv` (also `.csv.gz`, `.csv.zst`) is CSV with a header row
    /// and anything else JSON lines.
    #[arg(long)]
    pub format: Option<Format>,
    /// Output folder: results.jsonl, errors.jsonl, summary.json, checkpoint.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Gateway config whose profile gives the policies and thresholds (default: the four
    /// built-in policies at their thresholds).
    #[arg(long, short, env = "SHIELDGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The config's profile to apply.
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// For flat records and CSV: the field (column) holding the user text.
    #[arg(long)]
    pub text_field: Option<String>,
    /// For flat records and CSV: the field (column) holding the response (scored after the
    /// user text).
    #[arg(long, requires = "text_field")]
    pub response_field: Option<String>,
    /// Turns scored per engine batch and between checkpoints.
    #[arg(long, default_value_t = 32)]
    pub batch_turns: usize,
    /// Longer turns go to errors.jsonl instead of being scored.
    #[arg(long, default_value_t = 20_000)]
    pub max_turn_chars: usize,
    /// Audit only shard I of N (lines are dealt round-robin over all inputs), as I/N.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Copy each turn's text into results.jsonl.
    #[arg(long)]
    pub include_text: bool,
    /// Judge each turn after up to N earlier turns of its conversation (default: the config's
    /// `[proxy] context_turns`, else 0).
    #[arg(long, value_name = "N")]
    pub context_turns: Option<usize>,
    /// Which turns get an explanation (the spans that move P(Yes) most) in results.jsonl and
    /// the report: none, the flagged ones, or all; each costs one more check per span.
    #[arg(long, value_enum, default_value_t = Explain::Off)]
    pub explain: Explain,
    /// Spans scored at most per explained turn.
    #[arg(long, value_name = "N", default_value_t = crate::scorer::explain::DEFAULT_SPANS)]
    pub explain_spans: usize,
    /// Ignore the output folder's checkpoint and start over.
    #[arg(long)]
    pub restart: bool,
    /// Exit 0/1 even when some lines could not be read or scored (they are still in
    /// Also write a drift baseline here: per direction and category, the share of turns
    /// flagged and score quantiles, as Prometheus recording rules (docs/operations.md).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,
    /// errors.jsonl); by default that exits 3.
    #[arg(long)]
    pub allow_errors: bool,
    /// Crash test hook: abort right after the Nth batch is written, before its checkpoint.
    #[arg(long, hide = true)]
    pub abort_after_writes: Option<u64>,
    /// Progress on stderr: a status line on a terminal (auto), JSON lines, or none.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
}

/// How `audit` reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A status line when stderr is a terminal, nothing otherwise.
    Auto,
    /// One JSON object per batch on stderr.
    Json,
    /// Nothing.
    None,
}

/// `shieldgate tune`.
#[derive(Debug, Clone, Args)]
pub struct TuneArgs {
    /// Labelled JSONL files: {"prompt", "response"?, "labels": {"hate": 1, ...} or ["hate"],
    /// "scores"?: {...}}; examples without scores are scored by the model.
    pub labelled: Vec<PathBuf>,
    /// Unlabelled traffic for the what-if flag rate: audit results (or an audit folder) or
    /// the gateway's decision log. Repeatable.
    #[arg(long)]
    pub traffic: Vec<PathBuf>,
    /// The gateway config whose thresholds are tuned (default: the built-in defaults).
    #[arg(long, short, env = "SHIELDGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The config's profile to tune.
    #[arg(long, default_value = "default")]
    pub profile: String,
    /// What the suggested threshold must meet: best-f1, precision=P, recall=R or fpr=F;
    /// prefix a category to set it for that one only (hate:precision=0.9). Repeatable.
    #[arg(long, default_value = "best-f1")]
    pub target: Vec<String>,
    /// The labelled examples' user-text field.
    #[arg(long, default_value = "prompt")]
    pub prompt_field: String,
    /// The labelled examples' response field.
    #[arg(long, default_value = "response")]
    pub response_field: String,
    /// Output folder: report.html, summary.json, thresholds.toml, scored.jsonl, errors.jsonl.
    #[arg(long, default_value = "tune-report")]
    pub out: PathBuf,
    /// Write the suggested thresholds into the --config file (otherwise only shown as a diff).
    #[arg(long, requires = "config")]
    pub write: bool,
    /// Fit a calibration per category (Platt scaling, or isotonic regression with 50 labels
    /// of each kind) and put it into the suggested config as `[calibration.ID]`: the gateway
    /// and audit then report calibrated probabilities and the thresholds are written as such.
    #[arg(long)]
    pub calibrate: bool,
    /// Bootstrap resamples for the confidence intervals (0: none).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Examples scored per engine batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Score each example after up to N earlier turns of its `messages` (default: the
    /// config's `[proxy] context_turns`).
    #[arg(long, value_name = "N")]
    pub context_turns: Option<usize>,
    /// Also score every example alone and after up to N earlier turns, and compare how well
    /// each separates violations (printed, in summary.json and in the report).
    #[arg(long, value_name = "N")]
    pub compare_context: Option<usize>,
    /// Exit 0 even when some lines could not be used.
    #[arg(long)]
    pub allow_errors: bool,
    /// Start the workbench at this address after the analysis (default 127.0.0.1:8765) and
    /// serve until Ctrl-C.
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:8765")]
    pub serve: Option<String>,
    /// Model options, used when some examples have no scores.
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `shieldgate audit-merge`.
#[derive(Debug, Clone, Args)]
pub struct AuditMergeArgs {
    /// The shards' output folders (all N of them).
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// The merged output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a drift baseline here: per direction and category, the share of turns
    /// flagged and score quantiles, as Prometheus recording rules (docs/operations.md).
    #[arg(long, value_name = "FILE")]
    pub baseline: Option<PathBuf>,

    /// Exit 0/1 even when some lines could not be read or scored.
    #[arg(long)]
    pub allow_errors: bool,
}
