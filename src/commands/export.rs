//! `shieldgate export` (alias `quantize`): any loadable model (folder, GGUF, hub id, synthetic
//! preset) written as a Hugging Face folder or a GGUF file, quantized if asked.

use anyhow::{bail, Context};
use candle_core::DType;

use crate::cli::ExportArgs;
use crate::model::load::export::{export, ExportFormat};
use crate::model::load::loader::{open, parse_dtype, LoadOptions, ModelSource};
use crate::model::load::quantize::GgufType;
use crate::model::GemmaTokenizer;

use super::Outcome;

/// Runs the command.
pub fn run(args: &ExportArgs) -> anyhow::Result<Outcome> {
    let gguf = args.out.extension().is_some_and(|e| e == "gguf");
    let format = if gguf {
        ExportFormat::Gguf(GgufType::parse(&args.dtype).with_context(|| {
            format!(
                "GGUF files hold f32, f16, q8_0, q4_0 or q4_k_m, not {}",
                args.dtype
            )
        })?)
    } else {
        let dtype = parse_dtype(&args.dtype).with_context(|| {
            format!(
                "a Hugging Face folder holds f32, f16 or bf16; write {} to a .gguf file",
                args.dtype
            )
        })?;
        ExportFormat::Folder {
            shards: args.shards,
            dtype,
        }
    };
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
    export(
        &weights.source,
        &weights.config,
        &weights.tokenizer,
        &args.out,
        format,
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
