//! `kiln export`: a tuned model in a deployable form.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use kiln::core::DType;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The base model: a .gguf file or an HF model directory [default: SmolLM2-135M-Instruct].
    #[arg(long)]
    model: Option<PathBuf>,
    /// A LoRA adapter folder (PEFT layout) to merge; without it the base is exported as is.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// merged (transformers folder: config.json, model.safetensors, tokenizer, chat template) or
    /// gguf (one file for llama.cpp / Ollama, adapter merged, tokenizer and chat template in its
    /// metadata) or gguf-lora (the adapter alone, for llama.cpp's --lora; f16 unless --quant
    /// f32/bf16).
    #[arg(long, default_value = "merged")]
    format: String,
    /// Weight type of a merged export: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Block type of a GGUF export's matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q4_k,
    /// q5_k, q6_k, or q4_k_m / q5_k_m (llama.cpp's mixes of Q4_K / Q5_K with Q6_K)
    /// (gguf-lora: f32, f16, bf16).
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// Output folder (merged) or file (gguf).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: ExportArgs) -> Result<()> {
    if a.format == "gguf" {
        let ty = kiln::export_gguf::quant_type(&a.quant)?;
        let path = kiln::models::resolve(a.model.as_deref())?;
        let (model, tok, lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
        kiln::export_gguf::export_gguf_with_tokenizer(
            &model,
            lora.as_ref(),
            Some(&tok),
            &path,
            ty,
            a.quant.ends_with("_k_m"),
            &a.out,
        )?;
        let mb = std::fs::metadata(&a.out).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0);
        println!(
            "exported {} {} to {} ({}, {mb:.1} MB)",
            if lora.is_some() { "merged" } else { "base" },
            path.display(),
            a.out.display(),
            a.quant
        );
        return Ok(());
    }
    if a.format == "gguf-lora" {
        let ty = kiln::export_gguf::quant_type(if a.quant == "q8_0" { "f16" } else { &a.quant })?;
        let dir = a.adapter.as_ref().ok_or_else(|| anyhow::anyhow!("--format gguf-lora needs --adapter DIR"))?;
        let path = kiln::models::resolve(a.model.as_deref())?;
        let config = if path.extension().is_some_and(|e| e == "gguf") {
            kiln::model::gguf::config_from_gguf(&kiln::formats::gguf::GgufFile::open(&path)?)?
        } else {
            kiln::model::ModelConfig::load(&path)?
        };
        let lora = kiln::adapters::LoraSet::load_peft(dir, &config)?;
        kiln::export_gguf::export_gguf_lora(&config, &lora, ty, &a.out)?;
        println!(
            "exported the adapter {} for {} to {} ({})",
            dir.display(),
            path.display(),
            a.out.display(),
            ty.name()
        );
        return Ok(());
    }
    if a.format != "merged" {
        bail!("--format {}: one of merged, gguf, gguf-lora", a.format);
    }
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("--dtype {other}: one of f32, bf16, f16"),
    };
    let path = kiln::models::resolve(a.model.as_deref())?;
    let (model, tok, lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    let tmp = a.out.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    // Written beside the target and renamed, so a failed export leaves no half-written model.
    if let Err(e) = kiln::export::export_merged(&model, lora.as_ref(), Some(&tok), dtype, &tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.into());
    }
    if a.out.exists() {
        std::fs::remove_dir_all(&a.out)?;
    }
    std::fs::rename(&tmp, &a.out)?;
    println!(
        "exported {} {} into {} ({} weights, {} params)",
        if lora.is_some() { "merged" } else { "base" },
        path.display(),
        a.out.display(),
        a.dtype,
        model.config.num_params()
    );
    Ok(())
}
