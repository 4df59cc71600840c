//! Exporting a tuned model in a deployable form, one file per format: [`merged`] (a
//! transformers folder with the adapter merged into the weights), [`gguf`] (one llama.cpp /
//! Ollama file, merged and quantized) and [`gguf_lora`] (the adapter alone, for llama.cpp's
//! `--lora`). [`run`] is the entry the CLI calls: it resolves and loads the model and adapter,
//! guards the output, and writes the chosen format. A new format is a file here and a
//! [`Format`] variant.

pub mod gguf;
pub mod gguf_lora;
pub mod gguf_tokenizer;
pub mod merged;
pub mod pre_hash;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kiln_core::DType;
use kiln_core::quant::GgmlType;

pub use gguf::{export_gguf, export_gguf_with_tokenizer, quant_type};
pub use gguf_lora::export_gguf_lora;
pub use merged::{export_merged, merged_weights};

use crate::adapters::LoraSet;
use crate::model;
pub use crate::model::LoadSpec;
use crate::{KilnError, Result};

/// The export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Merged,
    Gguf,
    GgufLora,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Merged, Format::Gguf, Format::GgufLora];

    /// The `--format` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Format::Merged => "merged",
            Format::Gguf => "gguf",
            Format::GgufLora => "gguf-lora",
        }
    }
}

impl FromStr for Format {
    type Err = KilnError;
    fn from_str(s: &str) -> Result<Format> {
        Format::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            KilnError::Msg(format!("--format {s}: one of {}", names.join(", ")))
        })
    }
}

/// What to export and where.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// The base model (`None`: the default model, fetched on first use) and an adapter folder
    /// to merge, or to export alone (`GgufLora`).
    pub load: LoadSpec,
    pub format: Format,
    /// Weight type of a merged export: f32, bf16 or f16.
    pub dtype: String,
    /// Block type of a GGUF export (`q8_0` for gguf-lora means its default, f16).
    pub quant: String,
    /// Output folder (merged) or file (GGUF).
    pub out: PathBuf,
    /// Replace an existing output kiln wrote.
    pub overwrite: bool,
    /// The `tokenizer.ggml.pre` a GGUF export of a transformers folder writes, instead of the
    /// one found from its tokenizer ([`pre_hash`]).
    pub gguf_pre: Option<String>,
}

/// What [`run`] wrote; its `Display` is the line `kiln export` prints.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub model: PathBuf,
    pub out: PathBuf,
    pub kind: Exported,
}

/// The per-format facts of an export.
#[derive(Clone, Debug)]
pub enum Exported {
    /// A merged transformers folder: whether an adapter was merged, the weight type's name, the
    /// parameter count.
    Merged { merged: bool, dtype: String, params: usize },
    /// A GGUF file: whether an adapter was merged, the block type's name, the file's size.
    Gguf { merged: bool, quant: String, bytes: u64 },
    /// An adapter GGUF: the adapter folder and the tensors' type.
    GgufLora { adapter: PathBuf, ty: GgmlType },
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (model, out) = (self.model.display(), self.out.display());
        let what = |merged: bool| if merged { "merged" } else { "base" };
        match &self.kind {
            Exported::Merged { merged, dtype, params } => {
                write!(f, "exported {} {model} into {out} ({dtype} weights, {params} params)", what(*merged))
            }
            Exported::Gguf { merged, quant, bytes } => {
                let mb = *bytes as f64 / 1048576.0;
                write!(f, "exported {} {model} to {out} ({quant}, {mb:.1} MB)", what(*merged))
            }
            Exported::GgufLora { adapter, ty } => {
                write!(f, "exported the adapter {} for {model} to {out} ({})", adapter.display(), ty.name())
            }
        }
    }
}

/// Exports as `cfg` says. The output is checked before anything loads (never one of the
/// inputs; an existing one only with `overwrite`) and written complete or not at all.
pub fn run(cfg: &ExportConfig) -> Result<ExportReport> {
    let done = |path: PathBuf, kind| ExportReport { model: path, out: cfg.out.clone(), kind };
    if cfg.gguf_pre.is_some() && cfg.format != Format::Gguf {
        return Err(KilnError::Msg(format!("--gguf-pre applies to --format gguf, not {}", cfg.format.name())));
    }
    match cfg.format {
        Format::Gguf => {
            let ty = quant_type(&cfg.quant)?;
            let pre = cfg.gguf_pre.as_deref().map(pre_hash::known_name).transpose()?;
            let path = model::resolve(cfg.load.model.as_deref())?;
            crate::outdir::check_file(&cfg.out, cfg.overwrite, &inputs(&path, cfg))?;
            let (model, tok, lora) = model::load_with_adapter(&path, cfg.load.adapter.as_deref())?;
            export_gguf_with_tokenizer(
                &model,
                lora.as_ref(),
                Some(&tok),
                pre,
                &path,
                ty,
                cfg.quant.ends_with("_k_m"),
                &cfg.out,
            )?;
            let bytes = std::fs::metadata(&cfg.out).map(|m| m.len()).unwrap_or(0);
            Ok(done(path, Exported::Gguf { merged: lora.is_some(), quant: cfg.quant.clone(), bytes }))
        }
        Format::GgufLora => {
            let ty = quant_type(if cfg.quant == "q8_0" { "f16" } else { &cfg.quant })?;
            let dir = cfg
                .load
                .adapter
                .as_ref()
                .ok_or_else(|| KilnError::Msg("--format gguf-lora needs --adapter DIR".into()))?;
            let path = model::resolve(cfg.load.model.as_deref())?;
            crate::outdir::check_file(&cfg.out, cfg.overwrite, &inputs(&path, cfg))?;
            let config = model::config_of(&path)?;
            let lora = LoraSet::load_peft(dir, &config)?;
            // llama.cpp's LoRA GGUF holds A/B pairs only: a trained embedding or LM head (trained
            // embeddings, a grown vocabulary) would be dropped without a word.
            let full = LoraSet::peft_full_modules(dir)?;
            if !full.is_empty() {
                let names: Vec<&str> = full.iter().map(|(n, _)| n.as_str()).collect();
                return Err(KilnError::Msg(format!(
                    "{}: the adapter also holds fully trained {} (modules_to_save), which a llama.cpp LoRA GGUF cannot carry; export the merged model instead (--format gguf or merged)",
                    dir.join("adapter_model.safetensors").display(),
                    names.join(" and ")
                )));
            }
            export_gguf_lora(&config, &lora, ty, &cfg.out)?;
            Ok(done(path, Exported::GgufLora { adapter: dir.clone(), ty }))
        }
        Format::Merged => {
            let dtype = match cfg.dtype.as_str() {
                "f32" => DType::F32,
                "bf16" => DType::BF16,
                "f16" => DType::F16,
                other => return Err(KilnError::Msg(format!("--dtype {other}: one of f32, bf16, f16"))),
            };
            let path = model::resolve(cfg.load.model.as_deref())?;
            // Written beside the target and renamed, so a failed export leaves no half-written
            // model; the temporary folder goes on every error path (dropped uncommitted).
            let staged = crate::outdir::StagedDir::begin(
                &cfg.out,
                "kiln export --format merged",
                cfg.overwrite,
                &inputs(&path, cfg),
            )?;
            let (model, tok, lora) = model::load_with_adapter(&path, cfg.load.adapter.as_deref())?;
            export_merged(&model, lora.as_ref(), Some(&tok), dtype, staged.path())?;
            staged.commit()?;
            let params = model.config.num_params();
            Ok(done(path, Exported::Merged { merged: lora.is_some(), dtype: cfg.dtype.clone(), params }))
        }
    }
}

/// What the output must never replace: the model and the adapter.
fn inputs(model: &Path, cfg: &ExportConfig) -> crate::outdir::Inputs {
    let i = crate::outdir::Inputs::default().with(model);
    match &cfg.load.adapter {
        Some(d) => i.with(d),
        None => i,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_by_their_flag_names_and_a_wrong_one_lists_them() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        let e = "onnx".parse::<Format>().unwrap_err().to_string();
        assert_eq!(e, "--format onnx: one of merged, gguf, gguf-lora");
    }
}
