//! `kiln export`: a tuned model in a deployable form.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use kiln::export::{ExportConfig, LoadSpec};

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
    /// The tokenizer.ggml.pre a gguf export of a transformers folder writes (llama.cpp's name of
    /// the pre-tokenizer, e.g. llama-bpe, qwen2, smollm), for a tokenizer kiln cannot identify:
    /// by default it is found as llama.cpp's converter finds it, and an unknown one is refused.
    #[arg(long, value_name = "NAME")]
    gguf_pre: Option<String>,
}

pub fn run(a: ExportArgs) -> Result<()> {
    // A signal removes the temporary output instead of leaving it behind.
    kiln::outdir::remove_on_signals()?;
    let cfg = ExportConfig {
        load: LoadSpec { model: a.model, adapter: a.adapter },
        format: a.format.parse()?,
        dtype: a.dtype,
        quant: a.quant,
        out: a.out,
        overwrite: a.overwrite,
        gguf_pre: a.gguf_pre,
    };
    println!("{}", kiln::export::run(&cfg)?);
    Ok(())
}
