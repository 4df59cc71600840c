//! The training configuration: every setting with its default, read from a TOML file and/or
//! command-line flags (flags win), validated in one place, and written back resolved to
//! `OUT/config.toml` so a run can be repeated exactly.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::adapters::{LoraConfig, Target};
use crate::{KilnError, Result};

/// What is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Low-rank adapters on a frozen base kept in its stored type.
    Lora,
    /// LoRA on a quantized frozen base (the GGUF block type, or `quantize` at load).
    Qlora,
    /// Every weight trainable, f32 master weights.
    Full,
    /// Bottleneck adapters after each block's attention and MLP, base frozen.
    Adapter,
}

/// What the loss optimizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Supervised fine-tuning: next-token loss on the trained tokens.
    Sft,
    /// Direct preference optimization against the frozen base (adapters off) as reference.
    Dpo,
    /// Odds-ratio preference optimization: SFT on the chosen answer plus an odds-ratio term,
    /// no reference model.
    Orpo,
}

impl Objective {
    /// The name used by `--objective`.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Sft => "sft",
            Objective::Dpo => "dpo",
            Objective::Orpo => "orpo",
        }
    }
}

/// The DPO loss variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefLoss {
    /// `−logσ(β·δ)`, with optional label smoothing (conservative DPO).
    Sigmoid,
    /// IPO: `(δ/n − 1/(2β))²` on per-token averages.
    Ipo,
}

/// The optimizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optim {
    /// AdamW with f32 moments.
    Adamw,
    /// AdamW with block-wise 8-bit moments (a quarter of the state memory).
    Adamw8bit,
}

/// Learning-rate schedule after warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Constant,
    Linear,
    Cosine,
}

/// Every setting of a training run. Field names are the flag names with `_` for `-`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A `.gguf` file or an HF model directory; unset: the default model (SmolLM2-135M).
    pub model: Option<PathBuf>,
    /// Training files, `path` or `path:weight`.
    pub data: Vec<String>,
    /// A separate evaluation file; unset: `eval_split` of the training data is held out.
    pub eval_data: Option<PathBuf>,
    /// Fraction of the data held out for evaluation when `eval_data` is unset.
    pub eval_split: f64,
    pub out: PathBuf,
    pub method: Method,
    /// sft (default), dpo or orpo (preference rows: prompt/chosen/rejected).
    pub objective: Objective,
    /// DPO: strength of the pull towards the reference (higher: stays closer); ORPO: weight of
    /// the odds-ratio term. IPO: its τ.
    pub beta: f64,
    /// DPO sigmoid loss: probability that a preference label is flipped (conservative DPO).
    pub label_smoothing: f64,
    /// DPO loss variant: sigmoid or ipo.
    pub dpo_loss: PrefLoss,
    /// DPO: compute the reference log-probabilities once before training instead of at every
    /// step (always on for full fine-tuning, which has no adapters to switch off).
    pub precompute_ref: bool,
    /// Quantize the frozen base's linear weights at load (qlora): one of [`QUANTIZE_NAMES`].
    pub quantize: Option<String>,
    pub epochs: f64,
    /// Stop after this many optimizer steps (overrides `epochs`).
    pub max_steps: Option<usize>,
    pub learning_rate: f64,
    pub optim: Optim,
    pub lr_scheduler: Scheduler,
    pub warmup_steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Tokens per sequence; unset: the model's context length, at most 2048.
    pub max_seq_len: Option<usize>,
    /// Pack several rows into each sequence (first-fit, attention kept within each row).
    pub packing: bool,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Comma-separated module names (`q_proj,v_proj`) or `all-linear`.
    pub target_modules: String,
    pub use_rslora: bool,
    /// LoRA/QLoRA: also train the token embedding (and an untied LM head) in full (PEFT's
    /// `modules_to_save`).
    pub train_embeddings: bool,
    /// Special tokens to add to the tokenizer (e.g. ChatML's on a base model); a grown
    /// vocabulary turns on `train_embeddings` so the new rows learn.
    pub add_special_tokens: Vec<String>,
    /// Hidden size of the bottleneck adapters (`--method adapter`).
    pub adapter_size: usize,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f64,
    pub gradient_checkpointing: bool,
    pub seed: u64,
    /// Save a checkpoint every N steps (0: only at the end).
    pub save_steps: usize,
    /// Keep this many newest checkpoints (plus the best by eval loss); 0 keeps all.
    pub save_total_limit: usize,
    /// Evaluate every N steps (0: only before and after training).
    pub eval_steps: usize,
    /// Evaluate on at most this many held-out rows (0: all).
    pub eval_samples: usize,
    /// Generation metrics at each evaluation (accuracy, bleu, rouge; empty: loss only), on the
    /// `eval_samples` rows with greedy decoding.
    pub eval_metrics: String,
    /// Skip (and count) a step whose loss or gradient is not finite instead of stopping.
    pub skip_nonfinite: bool,
    /// Refuse to start when the estimated peak memory exceeds this many MiB (0: what the
    /// system has available).
    pub memory_limit_mb: u64,
    /// New-token budget of those generations.
    pub eval_max_new_tokens: usize,
    /// Force the data format instead of detecting it.
    pub format: Option<String>,
    /// Built-in chat template when the model has none: chatml, llama3, mistral, alpaca.
    pub template: Option<String>,
    /// Skip invalid rows (reported by reason) instead of stopping at the first.
    pub skip_invalid: bool,
    /// Train on prompt tokens too, not only on the assistant's.
    pub train_on_inputs: bool,
    /// auto, cpu, cuda or wgpu.
    pub backend: String,
    /// The GEMMs' arithmetic on wgpu: f32, or f16 (4-term f16 dots accumulated in f32, on
    /// adapters with SHADER_F16; others run f32 and say so).
    pub precision: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: None,
            data: Vec::new(),
            eval_data: None,
            eval_split: 0.2,
            out: PathBuf::from("runs/train"),
            method: Method::Lora,
            objective: Objective::Sft,
            beta: 0.1,
            label_smoothing: 0.0,
            dpo_loss: PrefLoss::Sigmoid,
            precompute_ref: false,
            quantize: None,
            epochs: 3.0,
            max_steps: None,
            learning_rate: 2e-4,
            optim: Optim::Adamw,
            lr_scheduler: Scheduler::Linear,
            warmup_steps: 0,
            batch_size: 4,
            grad_accum: 1,
            max_seq_len: None,
            packing: true,
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: "all-linear".into(),
            use_rslora: false,
            train_embeddings: false,
            add_special_tokens: Vec::new(),
            adapter_size: 64,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            gradient_checkpointing: false,
            seed: 42,
            save_steps: 0,
            save_total_limit: 0,
            eval_steps: 0,
            eval_samples: 0,
            eval_metrics: String::new(),
            skip_nonfinite: false,
            memory_limit_mb: 0,
            eval_max_new_tokens: 128,
            format: None,
            template: None,
            skip_invalid: false,
            train_on_inputs: false,
            backend: "auto".into(),
            precision: "f32".into(),
        }
    }
}

/// A setting that cannot work: its key and why (with the valid range).
#[derive(Debug)]
struct Bad {
    key: &'static str,
    why: String,
}

fn bad(key: &'static str, why: impl std::fmt::Display) -> Bad {
    Bad { key, why: why.to_string() }
}

/// The flag spelling of a configuration key.
fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// Upper limits of the counts and sizes a run may ask for. They are far above any real run and
/// keep every product of them inside 64 bits, so a typo or a hostile file is refused by name
/// instead of overflowing an allocation size or a step count.
pub mod limits {
    /// Passes over the data.
    pub const EPOCHS: f64 = 1e6;
    /// Optimizer steps of one run.
    pub const STEPS: usize = 1 << 32;
    /// Sequences per micro-batch, and micro-batches per step.
    pub const BATCH: usize = 1 << 20;
    /// Tokens per sequence.
    pub const SEQ: usize = 1 << 24;
    /// Tokens of one optimizer step (batch × accumulation × sequence).
    pub const STEP_TOKENS: usize = 1 << 40;
    /// LoRA rank and bottleneck size.
    pub const RANK: usize = 1 << 24;
    /// LoRA alpha, beta and the learning rate's magnitude.
    pub const SCALE: f64 = 1e6;
    /// New tokens per evaluation generation.
    pub const NEW_TOKENS: usize = 1 << 20;
}

/// `x` as a user would write it: `1e300` rather than 301 digits.
fn show(x: f64) -> String {
    if x != 0.0 && x.is_finite() && !(1e-6..1e16).contains(&x.abs()) { format!("{x:e}") } else { x.to_string() }
}

/// `x` finite and in `(0, max]`.
fn positive(key: &'static str, x: f64, max: f64) -> std::result::Result<(), Bad> {
    if x.is_finite() && x > 0.0 && x <= max {
        Ok(())
    } else {
        Err(bad(key, format!("{} is not a number in (0, {max:e}]", show(x))))
    }
}

/// `x` finite and in `[0, max]`.
fn non_negative(key: &'static str, x: f64, max: f64) -> std::result::Result<(), Bad> {
    if x.is_finite() && (0.0..=max).contains(&x) {
        Ok(())
    } else {
        Err(bad(key, format!("{} is not a number in [0, {max:e}]", show(x))))
    }
}

/// `n` in `[min, max]`.
fn count(key: &'static str, n: usize, min: usize, max: usize) -> std::result::Result<(), Bad> {
    if (min..=max).contains(&n) { Ok(()) } else { Err(bad(key, format!("{n} is not in [{min}, {max}]"))) }
}

/// The block types QLoRA can quantize a base to.
pub const QUANTIZE_NAMES: &str = "nf4, nf4_dq, q8_0, q4_0, q4_1, q5_0, q4_k, q5_k, q6_k";

impl TrainConfig {
    /// Defaults, overlaid by the TOML `file` (when given), overlaid by `flags` (a table of the
    /// settings given on the command line).
    pub fn resolve(file: Option<&Path>, flags: toml::Table) -> Result<TrainConfig> {
        let text = match file {
            None => None,
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| KilnError::io(p, e))?),
        };
        let mut table = match (file, &text) {
            (Some(p), Some(t)) => {
                t.parse::<toml::Table>().map_err(|e| KilnError::Msg(format!("{}: {e}", p.display())))?
            }
            _ => toml::Table::new(),
        };
        let from_file: Vec<String> = table.keys().filter(|k| !flags.contains_key(*k)).cloned().collect();
        table.extend(flags);
        let cfg: TrainConfig = table.try_into().map_err(|e: toml::de::Error| {
            // Flags are typed by clap, so a bad value comes from the file: parsed again alone,
            // the error points into it (line, key, what is wrong).
            match (file, text.as_deref().map(toml::from_str::<TrainConfig>)) {
                (Some(p), Some(Err(fe))) => KilnError::Msg(format!("{}: {}", p.display(), fe.to_string().trim_end())),
                _ => KilnError::Msg(format!("configuration: {}", e.message())),
            }
        })?;
        cfg.check().map_err(|b| match file {
            // A value the file set (and no flag overrode) is reported against the file.
            Some(p) if from_file.iter().any(|k| k == b.key) => {
                KilnError::Config { path: p.to_path_buf(), field: b.key.into(), detail: b.why }
            }
            _ => KilnError::Msg(format!("{} ({}): {}", flag(b.key), b.key, b.why)),
        })?;
        Ok(cfg)
    }

    /// Rejects settings that cannot work, naming the setting (as flag and key) and the valid
    /// range.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(|b| KilnError::Msg(format!("{} ({}): {}", flag(b.key), b.key, b.why)))
    }

    /// Every user number checked: finite, in range, and the products the run forms from them
    /// (tokens per step) inside their limits.
    fn check(&self) -> std::result::Result<(), Bad> {
        use limits::*;
        if self.data.is_empty() {
            return Err(bad("data", "give at least one training file (--data FILE)"));
        }
        match self.max_steps {
            Some(n) => count("max_steps", n, 1, STEPS)?,
            None => positive("epochs", self.epochs, EPOCHS)?,
        }
        positive("learning_rate", self.learning_rate, SCALE)?;
        count("batch_size", self.batch_size, 1, BATCH)?;
        count("grad_accum", self.grad_accum, 1, BATCH)?;
        if let Some(t) = self.max_seq_len {
            count("max_seq_len", t, 2, SEQ)?;
        }
        // Sequences and tokens per optimizer step: checked products, never a wrapped zero.
        let per_step = self.batch_size.checked_mul(self.grad_accum);
        let tokens = per_step.and_then(|p| p.checked_mul(self.max_seq_len.unwrap_or(2048)));
        if tokens.is_none_or(|t| t > STEP_TOKENS) {
            return Err(bad(
                "grad_accum",
                format!(
                    "batch_size {} × grad_accum {} × max_seq_len {} tokens per step exceeds {STEP_TOKENS}",
                    self.batch_size,
                    self.grad_accum,
                    self.max_seq_len.map_or("2048 (default)".to_string(), |t| t.to_string())
                ),
            ));
        }
        count("warmup_steps", self.warmup_steps, 0, STEPS)?;
        if !(self.eval_split.is_finite() && (0.0..1.0).contains(&self.eval_split)) {
            return Err(bad("eval_split", format!("{} is not in [0, 1)", self.eval_split)));
        }
        if self.train_embeddings && !matches!(self.method, Method::Lora | Method::Qlora) {
            return Err(bad("train_embeddings", "applies to --method lora or qlora (full trains them already)"));
        }
        if !self.add_special_tokens.is_empty() && self.method == Method::Adapter {
            return Err(bad("add_special_tokens", "needs trainable embeddings: use --method lora, qlora or full"));
        }
        count("adapter_size", self.adapter_size, 1, RANK)?;
        count("lora_r", self.lora_r, 1, RANK)?;
        positive("lora_alpha", self.lora_alpha, SCALE)?;
        if matches!(self.method, Method::Lora | Method::Qlora) {
            self.targets_checked()?;
        }
        if !(self.lora_dropout.is_finite() && (0.0..1.0).contains(&self.lora_dropout)) {
            return Err(bad("lora_dropout", format!("{} is not in [0, 1)", self.lora_dropout)));
        }
        non_negative("max_grad_norm", self.max_grad_norm, SCALE)?;
        non_negative("weight_decay", self.weight_decay, SCALE)?;
        count("eval_max_new_tokens", self.eval_max_new_tokens, 0, NEW_TOKENS)?;
        if self.memory_limit_mb > (1 << 40) {
            return Err(bad("memory_limit_mb", format!("{} is not in [0, {}] MiB", self.memory_limit_mb, 1u64 << 40)));
        }
        if self.quantize.is_some() && self.method != Method::Qlora {
            return Err(bad("quantize", "only applies to --method qlora"));
        }
        if !self.eval_metrics.trim().is_empty() {
            let m = crate::eval::Metric::parse_list(&self.eval_metrics).map_err(|e| bad("eval_metrics", e))?;
            if m.iter().any(|m| !m.needs_generation()) {
                return Err(bad("eval_metrics", "accuracy, bleu and rouge (loss and perplexity are always evaluated)"));
            }
        }
        if let Some(q) = &self.quantize
            && self.quant_type().is_err()
        {
            return Err(bad("quantize", format!("{q}: one of {QUANTIZE_NAMES}")));
        }
        positive("beta", self.beta, SCALE)?;
        if !(self.label_smoothing.is_finite() && (0.0..0.5).contains(&self.label_smoothing)) {
            return Err(bad("label_smoothing", format!("{} is not in [0, 0.5)", self.label_smoothing)));
        }
        if self.label_smoothing > 0.0 && (self.objective != Objective::Dpo || self.dpo_loss != PrefLoss::Sigmoid) {
            return Err(bad("label_smoothing", "applies to --objective dpo with the sigmoid loss"));
        }
        if self.objective != Objective::Sft && !self.eval_metrics.trim().is_empty() {
            return Err(bad("eval_metrics", "preference runs report rewards and reward accuracy instead"));
        }
        if self.objective != Objective::Sft && self.train_on_inputs {
            return Err(bad("train_on_inputs", "preference tuning scores the answers only"));
        }
        if !["auto", "cpu", "cuda", "cuda-emu", "wgpu"].contains(&self.backend.as_str()) {
            return Err(bad("backend", format!("{}: one of auto, cpu, cuda, cuda-emu, wgpu", self.backend)));
        }
        if !["f32", "f16"].contains(&self.precision.as_str()) {
            return Err(bad("precision", format!("{}: f32 or f16", self.precision)));
        }
        Ok(())
    }

    /// The block type of `quantize` (names as [`GgmlType::name`] in lower case).
    pub fn quant_type(&self) -> Result<Option<kiln_core::quant::GgmlType>> {
        use kiln_core::quant::GgmlType;
        Ok(match self.quantize.as_deref() {
            None => None,
            Some("nf4") => Some(GgmlType::NF4),
            Some("q8_0") => Some(GgmlType::Q8_0),
            Some("q4_0") => Some(GgmlType::Q4_0),
            Some("q4_1") => Some(GgmlType::Q4_1),
            Some("q5_0") => Some(GgmlType::Q5_0),
            Some("nf4_dq") => Some(GgmlType::NF4DQ),
            Some("q4_k") => Some(GgmlType::Q4K),
            Some("q5_k") => Some(GgmlType::Q5K),
            Some("q6_k") => Some(GgmlType::Q6K),
            Some(other) => {
                return Err(KilnError::Msg(format!("--quantize (quantize): {other}: one of {QUANTIZE_NAMES}")));
            }
        })
    }

    /// The LoRA target layers.
    pub fn targets(&self) -> Result<Vec<Target>> {
        self.targets_checked().map_err(|b| KilnError::Msg(format!("{} ({}): {}", flag(b.key), b.key, b.why)))
    }

    fn targets_checked(&self) -> std::result::Result<Vec<Target>, Bad> {
        let s = self.target_modules.trim();
        if s == "all-linear" || s == "all" {
            return Ok(Target::ALL.to_vec());
        }
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let ts = Target::parse_group(name).ok_or_else(|| {
                bad(
                    "target_modules",
                    format!("{name}: unknown; use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, all-linear, or (Phi-3) qkv_proj, gate_up_proj"),
                )
            })?;
            for t in ts {
                if !out.contains(&t) {
                    out.push(t);
                }
            }
        }
        if out.is_empty() {
            return Err(bad("target_modules", "is empty"));
        }
        Ok(out)
    }

    /// LoRA hyper-parameters.
    pub fn lora(&self) -> Result<LoraConfig> {
        Ok(LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            rslora: self.use_rslora,
            targets: self.targets()?,
            dropout: self.lora_dropout,
        })
    }

    /// The default of setting `key` as `--help` shows it, or `None` where the default is left
    /// open (no model, no evaluation file, the model's context length) or empty.
    pub fn default_shown(key: &str) -> Option<String> {
        let table = toml::Table::try_from(TrainConfig::default()).ok()?;
        match table.get(key)? {
            // 2e-4 rather than 0.0002; 16 rather than 16.0.
            toml::Value::Float(f) if *f != 0.0 && f.abs() < 1e-3 => Some(format!("{f:e}")),
            toml::Value::Float(f) => Some(format!("{f}")),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            toml::Value::String(s) if !s.is_empty() => Some(s.clone()),
            toml::Value::Array(a) if !a.is_empty() => Some(
                a.iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        }
    }

    /// The configuration as TOML (written to `OUT/config.toml`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| KilnError::Msg(format!("configuration: {e}")))
    }
}
