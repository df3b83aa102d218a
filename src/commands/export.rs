//! `shieldgate export`: any loadable model (folder, GGUF, hub id, synthetic preset) written as
//! a Hugging Face folder or a GGUF file.

use anyhow::{bail, Context};
use candle_core::DType;

use crate::cli::ExportArgs;
use crate::model::export::{export, ExportFormat};
use crate::model::loader::{open, parse_dtype, LoadOptions, ModelSource};
use crate::model::GemmaTokenizer;

use super::Outcome;

/// Runs the command.
pub fn run(args: &ExportArgs) -> anyhow::Result<Outcome> {
    let gguf = args.out.extension().is_some_and(|e| e == "gguf");
    let dtype = parse_dtype(&args.dtype)?;
    if gguf && dtype == DType::BF16 {
        bail!("GGUF export writes f32 or f16; use --dtype f32 or f16");
    }
    if args.out.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to replace it",
            args.out.display()
        );
    }
    let source = ModelSource::parse(&args.model)?;
    let opts = LoadOptions {
        dtype: DType::F32,
        tokenizer: args.tokenizer.clone(),
        ..LoadOptions::default()
    };
    let weights = open(&source, &opts)?;
    // Refuse to write a model whose tokenizer cannot score.
    GemmaTokenizer::from_file(&weights.tokenizer)?;
    let format = if gguf {
        ExportFormat::Gguf
    } else {
        ExportFormat::Folder {
            shards: args.shards,
        }
    };
    export(
        &weights.vb,
        &weights.config,
        &weights.tokenizer,
        &args.out,
        format,
        dtype,
    )
    .with_context(|| format!("cannot export {} to {}", weights.name, args.out.display()))?;
    eprintln!(
        "shieldgate export: wrote {} ({}, {})",
        args.out.display(),
        if gguf { "GGUF" } else { "Hugging Face folder" },
        args.dtype
    );
    Ok(Outcome::Clean)
}
