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
    /// Replace an existing output: a file, or a folder kiln wrote (the old one is deleted only
    /// once the new one is complete).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    // A signal removes the temporary output instead of leaving it behind.
    kiln::outdir::remove_on_signals()?;
    if a.format == "gguf" {
        let ty = kiln::export_gguf::quant_type(&a.quant)?;
        let path = kiln::models::resolve(a.model.as_deref())?;
        kiln::outdir::check_file(&a.out, a.overwrite, &inputs(&path, &a))?;
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
        kiln::outdir::check_file(&a.out, a.overwrite, &inputs(&path, &a))?;
        let config = if path.extension().is_some_and(|e| e == "gguf") {
            kiln::model::gguf::config_from_gguf(&kiln::formats::gguf::GgufFile::open(&path)?)?
        } else {
            kiln::model::ModelConfig::load(&path)?
        };
        let lora = kiln::adapters::LoraSet::load_peft(dir, &config)?;
        // llama.cpp's LoRA GGUF holds A/B pairs only: a trained embedding or LM head (trained
        // embeddings, a grown vocabulary) would be dropped without a word.
        let full = kiln::adapters::LoraSet::peft_full_modules(dir)?;
        if !full.is_empty() {
            let names: Vec<&str> = full.iter().map(|(n, _)| n.as_str()).collect();
            bail!(
                "{}: the adapter also holds fully trained {} (modules_to_save), which a llama.cpp LoRA GGUF cannot carry; export the merged model instead (--format gguf or merged)",
                dir.join("adapter_model.safetensors").display(),
                names.join(" and ")
            );
        }
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
    // Written beside the target and renamed, so a failed export leaves no half-written model;
    // the temporary folder goes on every error path (dropped uncommitted).
    let staged =
        kiln::outdir::StagedDir::begin(&a.out, "kiln export --format merged", a.overwrite, &inputs(&path, &a))?;
    let (model, tok, lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    kiln::export::export_merged(&model, lora.as_ref(), Some(&tok), dtype, staged.path())?;
    staged.commit()?;
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

/// What the output must never replace: the model and the adapter.
fn inputs(model: &std::path::Path, a: &ExportArgs) -> kiln::outdir::Inputs {
    let i = kiln::outdir::Inputs::default().with(model);
    match &a.adapter {
        Some(d) => i.with(d),
        None => i,
    }
}
