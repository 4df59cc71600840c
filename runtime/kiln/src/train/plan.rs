//! The plan of a run, by arithmetic alone: the base model's config and tokenizer read without
//! its tensors, the trainable parameter count, the step count and the peak-memory estimate.
//! Everything here runs before any model, LoRA or optimizer tensor exists, so a setting that
//! cannot fit (`--lora-r 100000000`) is answered at once in bounded memory, and a run whose
//! estimated peak exceeds the memory available is refused with the settings that would fit.

use std::path::{Path, PathBuf};

use kiln_core::quant::GgmlType;

use super::config::{Method, Objective, TrainConfig, limits};
use super::prepare::Prepared;
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
            // Phi-3's fused matrices: the later parts of qkv_proj / gate_up_proj share the
            // first part's A (crate::adapters::fused), so only their B rows count.
            let fused = c.arch == crate::model::Arch::Phi3;
            for t in cfg.targets()? {
                let (fin, fout) = t.dims(c);
                let a = if fused && crate::adapters::fused::shares_a(t) { 0 } else { fin as u64 };
                per_layer = add(per_layer, mul(r, add(a, fout as u64, w)?, w)?, w)?;
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

/// Bytes of memory available: `memory_limit_mb` when set, else the kernel's MemAvailable
/// (Linux), else unknown.
fn memory_available(cfg: &TrainConfig) -> Option<f64> {
    if cfg.memory_limit_mb > 0 {
        return Some(cfg.memory_limit_mb as f64 * 1048576.0);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: f64 = text.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Refuses to start a run whose estimated peak does not fit, naming settings that would. Runs
/// on the plan alone, before any model tensor is loaded.
pub fn check_memory(
    cfg: &TrainConfig,
    p: &Plan,
    base: &BaseFacts,
    model: &Path,
    config_file: Option<&Path>,
) -> Result<()> {
    let Some(avail) = memory_available(cfg) else { return Ok(()) };
    let (trainable, seq) = (p.trainable, p.seq);
    let need = |c: &TrainConfig, seq: usize| -> Result<f64> {
        Ok(memory(c, base, trainable, seq)?.iter().map(|m| m.1).sum::<f64>())
    };
    let total = need(cfg, seq)?;
    if total <= avail {
        return Ok(());
    }
    let mut fits = Vec::new();
    let mut try_cfg = |what: String, c: TrainConfig, s: usize| {
        if let Ok(n) = need(&c, s)
            && n <= avail
        {
            fits.push(format!("{what} ({})", gib(n)));
        }
    };
    if !cfg.gradient_checkpointing {
        try_cfg(
            "--gradient-checkpointing true".into(),
            TrainConfig { gradient_checkpointing: true, ..cfg.clone() },
            seq,
        );
    }
    if cfg.batch_size > 1 {
        let c = TrainConfig { batch_size: 1, grad_accum: cfg.grad_accum.saturating_mul(cfg.batch_size), ..cfg.clone() };
        try_cfg(format!("--batch-size 1 --grad-accum {} (same effective batch)", c.grad_accum), c, seq);
    }
    if seq >= 128 {
        try_cfg(format!("--max-seq-len {}", seq / 2), cfg.clone(), seq / 2);
    }
    if !cfg.gradient_checkpointing && cfg.batch_size > 1 {
        let both = TrainConfig {
            gradient_checkpointing: true,
            batch_size: 1,
            grad_accum: cfg.grad_accum.saturating_mul(cfg.batch_size),
            ..cfg.clone()
        };
        try_cfg("--gradient-checkpointing true --batch-size 1 together".into(), both, seq);
    }
    let hint = if fits.is_empty() {
        "no single setting change fits: use a smaller model, --method qlora, or free memory".to_string()
    } else {
        format!("settings that fit: {}", fits.join("; "))
    };
    let from = config_file.map_or(String::new(), |f| format!(" (settings from {} and the flags)", f.display()));
    Err(KilnError::Msg(format!(
        "the estimated peak memory {} exceeds the {} available{}{from}; {hint} (or --memory-limit-mb to state the limit yourself); nothing was loaded from {}",
        gib(total),
        gib(avail),
        if cfg.memory_limit_mb > 0 { " (--memory-limit-mb)" } else { "" },
        model.display()
    )))
}

/// Bytes as MiB or GiB.
pub fn gib(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// What the plan knows before any model tensor exists.
pub struct Plan {
    pub trainable: u64,
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    /// Tokens of the longest batch row: the longest training unit, at most max_seq_len.
    pub seq: usize,
    pub memory: Vec<(&'static str, f64)>,
}

impl Plan {
    /// `vocab`: the vocabulary after `add_special_tokens`.
    pub fn new(cfg: &TrainConfig, base: &BaseFacts, d: &Prepared, seq: usize, vocab: usize) -> Result<Plan> {
        let mut c = base.config.clone();
        c.vocab_size = c.vocab_size.max(vocab);
        let base = BaseFacts { config: c, ..base.clone() };
        let trainable = trainable(cfg, &base.config)?;
        let (steps_per_epoch, total_steps) = steps(cfg, d.train_len())?;
        let seq = seq.min(d.longest().max(1));
        let memory = memory(cfg, &base, trainable, seq)?;
        Ok(Plan { trainable, steps_per_epoch, total_steps, seq, memory })
    }
}

/// The plan as `kiln train` prints it: the data, the steps, the memory estimate by part.
pub fn plan_text(cfg: &TrainConfig, p: &Plan, d: &Prepared, seq: usize, base: &str) -> String {
    let total: f64 = p.memory.iter().map(|m| m.1).sum();
    let mut s = format!(
        "plan: {base}; method {:?}; {} train rows ({} invalid skipped) → {} sequences of ≤ {seq} tokens ({} tokens, {} trained; {} rows truncated, {} dropped); {} held-out rows\n",
        cfg.method,
        d.train_rows,
        d.report.files.iter().map(|f| f.invalid.values().sum::<usize>()).sum::<usize>(),
        d.train_len(),
        d.train_tokens,
        d.train_targets,
        d.stats.truncated,
        d.stats.dropped,
        d.eval_examples.len(),
    );
    if cfg.objective != Objective::Sft {
        let pp = &d.pair_stats;
        let precomputed = super::pref::PrefSpec::of(cfg).is_some_and(|s| s.needs_reference())
            && (cfg.precompute_ref || cfg.method == Method::Full);
        s += &format!(
            "      {}: {} pairs in {} tokens with shared prompts ({} as separate sequences, {:.0}% saved); {} held-out pairs; reference {}\n",
            cfg.objective.name(),
            d.pairs.len(),
            pp.tokens,
            pp.unshared_tokens,
            100.0 * (1.0 - pp.tokens as f64 / pp.unshared_tokens.max(1) as f64),
            d.eval_pairs.len(),
            match cfg.objective {
                Objective::Dpo if precomputed => "precomputed once (adapters off)",
                Objective::Dpo => "every step (adapters off, same weights)",
                _ => "none",
            }
        );
    }
    s += &format!(
        "      {} steps ({} per epoch, batch {} × accumulation {}), {} trainable parameters, template {}\n",
        p.total_steps,
        p.steps_per_epoch,
        cfg.batch_size,
        cfg.grad_accum,
        p.trainable,
        d.renderer.template.as_ref().map_or("none", |t| t.origin.as_str())
    );
    s += &format!("memory estimate (cpu): {} in all\n", gib(total));
    for (k, v) in &p.memory {
        s += &format!("      {k:<22} {}\n", gib(*v));
    }
    s
}
