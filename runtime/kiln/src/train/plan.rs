//! The plan of a run, by arithmetic alone: the base model's config and tokenizer read without
//! its tensors, the trainable parameter count, the step count and the peak-memory estimate.
//! Everything here runs before any model, LoRA or optimizer tensor exists, so a setting that
//! cannot fit (`--lora-r 100000000`) is answered at once in bounded memory.

use std::path::{Path, PathBuf};

use kiln_core::quant::GgmlType;

use super::config::{Method, TrainConfig, limits};
use crate::adapters::Target;
use crate::data::tokenizer::TextTokenizer;
use crate::model::gguf::GgufWeights;
use crate::model::{Llama, ModelConfig};
use crate::{KilnError, Result};

/// What the estimate needs to know about the base model.
#[derive(Clone, Debug)]
pub struct BaseFacts {
    pub config: ModelConfig,
    /// Bytes of the weight files (the GGUF file, or the folder's `*.safetensors`).
    pub file_bytes: u64,
    /// The linear weights are stored block-quantized (a quantized GGUF).
    pub stored_quantized: bool,
}

/// A base model opened for planning: config and tokenizer read, no tensor loaded.
pub struct BaseModel {
    pub path: PathBuf,
    pub facts: BaseFacts,
    pub tokenizer: TextTokenizer,
    gguf: Option<GgufWeights>,
}

impl BaseModel {
    /// Reads the config (GGUF metadata or `config.json`) and the tokenizer; the weights are
    /// only measured (file sizes), not read.
    pub fn open(path: &Path) -> Result<BaseModel> {
        if path.extension().is_some_and(|e| e == "gguf") {
            let (src, config) = GgufWeights::open(path)?;
            let tokenizer = TextTokenizer::from_gguf(&src.file)?;
            let file_bytes = std::fs::metadata(path).map_err(|e| KilnError::io(path, e))?.len();
            let stored_quantized = src
                .file
                .tensor("blk.0.attn_q.weight")
                .is_some_and(|t| !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16));
            let facts = BaseFacts { config, file_bytes, stored_quantized };
            return Ok(BaseModel { path: path.to_path_buf(), facts, tokenizer, gguf: Some(src) });
        }
        let config = ModelConfig::load(path)?;
        let tokenizer = TextTokenizer::load(path)?;
        let mut file_bytes = 0u64;
        for e in std::fs::read_dir(path).map_err(|e| KilnError::io(path, e))?.flatten() {
            if e.path().extension().is_some_and(|x| x == "safetensors") {
                file_bytes = file_bytes.saturating_add(e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
        let facts = BaseFacts { config, file_bytes, stored_quantized: false };
        Ok(BaseModel { path: path.to_path_buf(), facts, tokenizer, gguf: None })
    }

    /// Loads the weights (`trainable`: as f32 parameters, for full fine-tuning).
    pub fn load(self, trainable: bool) -> Result<Llama> {
        match self.gguf {
            Some(src) => Llama::from_source(self.facts.config, &src, trainable),
            None => Llama::load(&self.path, trainable),
        }
    }
}

fn overflow(what: &str) -> KilnError {
    KilnError::Msg(format!("{what}: the count does not fit in 64 bits (lower --lora-r or --adapter-size)"))
}

fn mul(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_mul(b).ok_or_else(|| overflow(what))
}

fn add(a: u64, b: u64, what: &str) -> Result<u64> {
    a.checked_add(b).ok_or_else(|| overflow(what))
}

/// Parameters of the base model (checked: a hostile config cannot wrap the count).
pub fn base_params(c: &ModelConfig) -> Result<u64> {
    let w = "base model parameters";
    let (h, i, d) = (c.hidden_size as u64, c.intermediate_size as u64, c.head_dim as u64);
    let heads = add(mul(2, c.num_heads as u64, w)?, mul(2, c.num_kv_heads as u64, w)?, w)?;
    let attn = mul(mul(h, d, w)?, heads, w)?;
    let layer = add(add(attn, mul(mul(3, h, w)?, i, w)?, w)?, mul(2, h, w)?, w)?;
    let embed = mul(c.vocab_size as u64, h, w)?;
    let head = if c.tie_word_embeddings { 0 } else { embed };
    add(add(add(embed, mul(c.num_layers as u64, layer, w)?, w)?, h, w)?, head, w)
}

/// Parameters of the linear layers the blocks hold (what QLoRA quantizes).
fn linear_params(c: &ModelConfig) -> Result<u64> {
    let w = "linear parameters";
    let mut per_layer = 0u64;
    for t in Target::ALL {
        let (fin, fout) = t.dims(c);
        per_layer = add(per_layer, mul(fin as u64, fout as u64, w)?, w)?;
    }
    mul(per_layer, c.num_layers as u64, w)
}

/// Trainable parameters of `cfg`'s method on a model of config `c`, by arithmetic (the same
/// count the trainer's tensors will have).
pub fn trainable(cfg: &TrainConfig, c: &ModelConfig) -> Result<u64> {
    let layers = c.num_layers as u64;
    let h = c.hidden_size as u64;
    match cfg.method {
        Method::Full => base_params(c),
        Method::Adapter => {
            let w = "bottleneck adapter parameters";
            let s = cfg.adapter_size as u64;
            // Two adapters per block: down [s, h] + bias s, up [h, s] + bias h.
            let one = add(add(mul(mul(2, s, w)?, h, w)?, s, w)?, h, w)?;
            mul(mul(2, one, w)?, layers, w)
        }
        Method::Lora | Method::Qlora => {
            let w = "LoRA parameters";
            let r = cfg.lora_r as u64;
            let mut per_layer = 0u64;
            for t in cfg.targets()? {
                let (fin, fout) = t.dims(c);
                per_layer = add(per_layer, mul(r, add(fin as u64, fout as u64, w)?, w)?, w)?;
            }
            let mut n = mul(per_layer, layers, w)?;
            if cfg.train_embeddings {
                let embed = mul(c.vocab_size as u64, h, w)?;
                n = add(n, embed, w)?;
                if !c.tie_word_embeddings {
                    n = add(n, embed, w)?;
                }
            }
            Ok(n)
        }
    }
}

/// Bytes the frozen (or, for full fine-tuning, f32 master) weights take once loaded.
fn weight_bytes(cfg: &TrainConfig, b: &BaseFacts) -> Result<f64> {
    let c = &b.config;
    Ok(match cfg.method {
        Method::Full => base_params(c)? as f64 * 4.0,
        Method::Qlora if cfg.quantize.is_some() || !b.stored_quantized => {
            // The linear weights are re-quantized; the rest keeps its stored size.
            let ty = cfg.quant_type()?.unwrap_or(GgmlType::NF4);
            let (bs, ts) = ty.block();
            let total = base_params(c)?.max(1) as f64;
            let lin = linear_params(c)? as f64;
            let rest = b.file_bytes as f64 * (1.0 - (lin / total).min(1.0));
            rest + lin * ts as f64 / bs.max(1) as f64
        }
        _ => b.file_bytes as f64,
    })
}

/// Estimated peak memory in bytes per component, for `trainable` parameters and batch rows of
/// `seq` tokens.
pub fn memory(cfg: &TrainConfig, b: &BaseFacts, trainable: u64, seq: usize) -> Result<Vec<(&'static str, f64)>> {
    let c = &b.config;
    // f64 throughout: a product of hostile sizes grows towards infinity, never wraps.
    let f = |x: usize| x as f64;
    let (h, i) = (f(c.hidden_size), f(c.intermediate_size));
    let (q, kv) = (f(c.num_heads) * f(c.head_dim), f(c.num_kv_heads) * f(c.head_dim));
    let tokens = f(cfg.batch_size) * f(seq);
    // f32 values each block keeps for backward per token: norms' inputs and outputs, q/k/v
    // before and after RoPE, attention output, both MLP projections and their product.
    let per_layer = (6.0 * h + 3.0 * q + 4.0 * kv + 3.0 * i) * 4.0;
    let layers =
        if cfg.gradient_checkpointing { h * 4.0 * f(c.num_layers) + per_layer } else { per_layer * f(c.num_layers) };
    // The fused LM head + loss holds the logits and their gradient of 128 rows at a time.
    let logits = tokens.min(128.0) * f(c.vocab_size) * 4.0 * 2.0;
    let t = trainable as f64;
    Ok(vec![
        ("weights", weight_bytes(cfg, b)?),
        ("trainable + gradients", t * 8.0),
        ("optimizer state", t * 8.0),
        ("activations", tokens * layers + logits),
    ])
}

/// Optimizer steps per epoch and in all, for `units` training sequences (or pairs).
pub fn steps(cfg: &TrainConfig, units: usize) -> Result<(usize, usize)> {
    let per_step = cfg.batch_size.checked_mul(cfg.grad_accum).filter(|&p| p > 0).ok_or_else(|| {
        KilnError::Msg(format!(
            "--batch-size {} × --grad-accum {}: not a usable number of sequences per step",
            cfg.batch_size, cfg.grad_accum
        ))
    })?;
    let per_epoch = units.div_ceil(per_step).max(1);
    let total = match cfg.max_steps {
        Some(n) => n,
        None => {
            let n = (cfg.epochs * per_epoch as f64).ceil();
            if !(n.is_finite() && n <= limits::STEPS as f64) {
                return Err(KilnError::Msg(format!(
                    "--epochs {} × {per_epoch} steps per epoch is {n:e} steps, more than {} (lower --epochs or give --max-steps)",
                    cfg.epochs,
                    limits::STEPS
                )));
            }
            (n as usize).max(1)
        }
    };
    Ok((per_epoch, total))
}
