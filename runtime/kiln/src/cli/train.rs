//! `kiln train`: fine-tune a model on the user's data (LoRA, QLoRA or full), with evaluation,
//! checkpoints, resume, a progress bar, `metrics.jsonl`, `loss.svg` and a deployable output
//! (a PEFT adapter, or the full weights).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::data::tokenizer::TextTokenizer;
use kiln::model::Llama;
use kiln::train::plan::{self, BaseFacts, BaseModel};
use kiln::train::prepare::{Prepared, prepare, prepare_tokenizer, prepare_weights, write_eval_rows};
use kiln::train::{Event, Method, Summary, TrainConfig, Trainer};
use serde::Serialize;

/// Flags; each overrides the same key of `--config` (TOML), which overrides the default.
#[derive(Args, Debug, Serialize)]
pub struct TrainArgs {
    /// A TOML file with any of the settings below (`learning_rate = 1e-4`, `data = ["a.jsonl"]`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Load the model and data, print the plan and the memory estimate, and exit.
    #[arg(long)]
    #[serde(skip)]
    dry_run: bool,
    /// The GPU to use: an index as `kiln info` lists the adapters, or part of its name.
    #[arg(long)]
    #[serde(skip)]
    device: Option<String>,
    /// Continue from the newest checkpoint under --out, or from the one given.
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT")]
    #[serde(skip)]
    resume: Option<Option<PathBuf>>,
    /// Replace an earlier run in --out (a folder kiln wrote; deleted once this run completes).
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    overwrite: bool,
    /// A .gguf file or an HF model directory [default: SmolLM2-135M-Instruct, fetched on first use].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<PathBuf>,
    /// Training data (JSONL, JSON or CSV), `FILE` or `FILE:WEIGHT`; repeat to mix files.
    #[arg(long)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    data: Vec<String>,
    /// Evaluation data [default: --eval-split of the training data is held out].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_data: Option<PathBuf>,
    /// Fraction held out for evaluation [default: 0.2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_split: Option<f64>,
    /// Output directory [default: runs/train].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
    /// lora, qlora, full or adapter (bottleneck adapters) [default: lora]; `dpo` or `orpo`
    /// selects that objective with LoRA, `dpo+qlora` (any pair) both.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    /// sft, dpo (direct preference optimization) or orpo (odds-ratio preference optimization);
    /// dpo and orpo train on {"prompt", "chosen", "rejected"} rows [default: sft].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    objective: Option<String>,
    /// DPO: how strongly the tuned model is held to the reference; ORPO: weight of the
    /// odds-ratio term; IPO: its τ [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    beta: Option<f64>,
    /// DPO sigmoid loss: assumed probability that a preference label is flipped, in [0, 0.5)
    /// (conservative DPO) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    label_smoothing: Option<f64>,
    /// DPO loss: sigmoid or ipo [default: sigmoid].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dpo_loss: Option<String>,
    /// DPO: compute the reference log-probabilities once before training (one forward per
    /// pair) instead of at every step; always on with --method full.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    precompute_ref: Option<bool>,
    /// qlora: quantize the base's linear weights at load: nf4, nf4_dq (double-quantized NF4,
    /// 4.125 bits), q8_0, q4_0, q4_1, q5_0, q4_k, q5_k, q6_k [default:
    /// keep a GGUF's block types; nf4 for an unquantized model].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize: Option<String>,
    /// Passes over the data [default: 3].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    epochs: Option<f64>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    /// Peak learning rate [default: 2e-4].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    learning_rate: Option<f64>,
    /// adamw or adamw8bit (block-wise 8-bit moments: a quarter of the optimizer memory)
    /// [default: adamw].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    optim: Option<String>,
    /// constant, linear or cosine, after warmup [default: linear].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr_scheduler: Option<String>,
    /// Linear warmup steps [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_steps: Option<usize>,
    /// Sequences per micro-batch [default: 4].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_accum: Option<usize>,
    /// Tokens per sequence [default: the model's context, at most 2048].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_seq_len: Option<usize>,
    /// Pack rows into full sequences [default: true].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    packing: Option<bool>,
    /// LoRA rank [default: 8].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_r: Option<usize>,
    /// LoRA alpha (scale alpha/r) [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_alpha: Option<f64>,
    /// Dropout on each adapter's input while training [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_dropout: Option<f64>,
    /// q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all-linear [default: all-linear].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    target_modules: Option<String>,
    /// LoRA/QLoRA: also train embed_tokens (and an untied lm_head) in full, saved as PEFT's
    /// modules_to_save [default: false].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train_embeddings: Option<bool>,
    /// Special tokens to add, comma-separated (e.g. ChatML's on a base model); a grown
    /// vocabulary also trains the embeddings [default: none].
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    add_special_tokens: Vec<String>,
    /// Hidden size of the bottleneck adapters (--method adapter) [default: 64].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter_size: Option<usize>,
    /// rsLoRA scaling alpha/√r [default: false].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    use_rslora: Option<bool>,
    /// AdamW weight decay (not on norms and biases) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    weight_decay: Option<f64>,
    /// Clip the global gradient norm (0: off) [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_grad_norm: Option<f64>,
    /// Recompute each block in backward instead of keeping its activations [default: false].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gradient_checkpointing: Option<bool>,
    /// Seed of the adapter initialization, the split and the data order [default: 42].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// Checkpoint every N steps (0: only at the end) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    save_steps: Option<usize>,
    /// Keep the newest N checkpoints plus the best (0: all) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    save_total_limit: Option<usize>,
    /// Evaluate every N steps (0: before and after only) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_steps: Option<usize>,
    /// Evaluate on at most N held-out rows (0: all) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_samples: Option<usize>,
    /// Also score generated answers at each evaluation: comma-separated accuracy, bleu, rouge
    /// (on --eval-samples rows, greedy; slow, so keep the sample small) [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_metrics: Option<String>,
    /// New-token budget of those generations [default: 128].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_max_new_tokens: Option<usize>,
    /// Refuse to start when the estimated peak memory exceeds this many MiB (0: the memory
    /// the system has available) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_limit_mb: Option<u64>,
    /// Skip (and count) a step whose loss or gradient is NaN/inf instead of stopping the run
    /// [default: false].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_nonfinite: Option<bool>,
    /// Force the data format: prompt-completion, messages, sharegpt, alpaca, text.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    /// Built-in chat template when the model has none: chatml, llama3, mistral, alpaca.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    /// Skip invalid rows (counted by reason) instead of stopping at the first [default: false].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_invalid: Option<bool>,
    /// Train on prompt tokens too [default: false].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train_on_inputs: Option<bool>,
    /// auto, cpu, cuda (--device N), cuda-emu (the CUDA kernels on this CPU, slow) or wgpu [default: auto].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    /// The GEMMs' arithmetic on wgpu: f32, or f16 (half the multiply cost on most GPUs; needs
    /// the adapter's SHADER_F16) [default: f32].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
}

/// The backend `--backend` names. `auto` takes an NVIDIA GPU (CUDA), else another GPU (wgpu),
/// else the CPU, and says why the others were passed over — a CPU Vulkan driver such as
/// lavapipe is not faster than the CPU backend, and the CUDA emulation is for checking kernels.
pub(super) fn pick_backend(want: &str, device: Option<&str>) -> Result<&'static dyn kiln::core::Backend> {
    let cpu: &'static dyn kiln::core::Backend = &kiln::core::CpuBackend;
    match want {
        "cpu" => Ok(cpu),
        "cuda" => {
            let ordinal = match device {
                None => 0,
                Some(d) => d.parse::<usize>().map_err(|_| anyhow::anyhow!("--device {d}: a CUDA device ordinal"))?,
            };
            kiln_cuda::open(ordinal).map_err(|e| anyhow::anyhow!("--backend cuda: {e}"))
        }
        "cuda-emu" => {
            eprintln!(
                "backend: cuda-emu — the CUDA kernels on this CPU through kiln's emulation (slow; for checking kernels)"
            );
            kiln_cuda::open_emu().map_err(|e| anyhow::anyhow!("--backend cuda-emu: {e}"))
        }
        "wgpu" => kiln_wgpu::open().map_err(|e| anyhow::anyhow!("--backend wgpu: {e}")),
        "auto" => {
            // An NVIDIA GPU through kiln's CUDA kernels first, then any GPU through wgpu.
            let cuda = kiln_cuda::probe();
            if let Some(d) = cuda.devices.first() {
                match kiln_cuda::open(0) {
                    Ok(be) => {
                        eprintln!("backend: cuda on {} (device 0)", d.name);
                        return Ok(be);
                    }
                    Err(e) => eprintln!("note: cuda device 0 ({}) did not open: {e}", d.name),
                }
            }
            let probe = kiln_wgpu::probe();
            let gpu = probe.adapters.iter().find(|a| a.device_type != "Cpu");
            if let Some(a) = gpu
                && let Ok(be) = kiln_wgpu::open()
            {
                eprintln!("backend: wgpu on {} ({})", a.name, a.backend);
                return Ok(be);
            }
            let wgpu = match (gpu, probe.unavailable) {
                (None, None) => "only a CPU adapter (use --backend wgpu to run on it anyway)".to_string(),
                (_, Some(u)) => u,
                (Some(_), None) => "the adapter did not open".to_string(),
            };
            let cuda = cuda.unavailable.unwrap_or_else(|| "no device opened".into());
            eprintln!("backend: cpu (cuda: {cuda}; wgpu: {wgpu})");
            Ok(cpu)
        }
        other => bail!("--backend {other}: one of auto, cpu, cuda, cuda-emu, wgpu"),
    }
}

/// Applies `--precision` (a wgpu setting; the CPU and CUDA backends compute in their own
/// fixed precisions and refuse f16 rather than ignore it): the backend to run on.
pub(super) fn set_precision(
    backend: &'static dyn kiln::core::Backend,
    precision: &str,
) -> Result<&'static dyn kiln::core::Backend> {
    if precision == "f32" {
        return Ok(backend);
    }
    if backend.name() != "wgpu" {
        bail!("--precision {precision}: a wgpu setting (the {} backend has its own precision)", backend.name());
    }
    if precision != "f16" {
        bail!("--precision {precision}: f32 or f16");
    }
    let backend = kiln_wgpu::with_precision(backend, kiln_wgpu::Precision::F16)
        .ok_or_else(|| anyhow::anyhow!("--precision {precision}: not a wgpu backend"))?;
    #[cfg(feature = "wgpu")]
    {
        if let Ok(dev) = kiln_wgpu::runtime::device() {
            if dev.shader_f16 {
                eprintln!("precision: f16 GEMMs (f32 accumulation) on {}", dev.info.name);
            } else {
                eprintln!("note: {} has no SHADER_F16: the GEMMs run in f32", dev.info.name);
            }
        }
    }
    Ok(backend)
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
fn check_memory(cfg: &TrainConfig, p: &Plan, base: &BaseFacts, model: &Path, config_file: Option<&Path>) -> Result<()> {
    let Some(avail) = memory_available(cfg) else { return Ok(()) };
    let (trainable, seq) = (p.trainable, p.seq);
    let need = |c: &TrainConfig, seq: usize| -> Result<f64> {
        Ok(plan::memory(c, base, trainable, seq)?.iter().map(|m| m.1).sum::<f64>())
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
    bail!(
        "the estimated peak memory {} exceeds the {} available{}{from}; {hint} (or --memory-limit-mb to state the limit yourself); nothing was loaded from {}",
        gib(total),
        gib(avail),
        if cfg.memory_limit_mb > 0 { " (--memory-limit-mb)" } else { "" },
        model.display()
    )
}

fn gib(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    }
}

/// What the plan knows before any model tensor exists.
struct Plan {
    trainable: u64,
    steps_per_epoch: usize,
    total_steps: usize,
    /// Tokens of the longest batch row: the longest training unit, at most max_seq_len.
    seq: usize,
    memory: Vec<(&'static str, f64)>,
}

impl Plan {
    /// `vocab`: the vocabulary after `add_special_tokens`.
    fn new(cfg: &TrainConfig, base: &BaseFacts, d: &Prepared, seq: usize, vocab: usize) -> Result<Plan> {
        let mut c = base.config.clone();
        c.vocab_size = c.vocab_size.max(vocab);
        let base = BaseFacts { config: c, ..base.clone() };
        let trainable = plan::trainable(cfg, &base.config)?;
        let (steps_per_epoch, total_steps) = plan::steps(cfg, d.train_len())?;
        let seq = seq.min(d.longest().max(1));
        let memory = plan::memory(cfg, &base, trainable, seq)?;
        Ok(Plan { trainable, steps_per_epoch, total_steps, seq, memory })
    }
}

fn plan_text(cfg: &TrainConfig, p: &Plan, d: &Prepared, seq: usize, base: &str) -> String {
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
    if cfg.objective != kiln::train::Objective::Sft {
        let pp = &d.pair_stats;
        let precomputed = kiln::train::pref::PrefSpec::of(cfg).is_some_and(|s| s.needs_reference())
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
                kiln::train::Objective::Dpo if precomputed => "precomputed once (adapters off)",
                kiln::train::Objective::Dpo => "every step (adapters off, same weights)",
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

/// Splits `--method dpo`, `dpo+qlora` or `qlora+dpo` into the objective and the method.
fn split_method(a: &mut TrainArgs) -> Result<()> {
    let Some(m) = a.method.take() else { return Ok(()) };
    let mut method = None;
    for part in m.split('+').map(str::trim) {
        if ["sft", "dpo", "orpo"].contains(&part) {
            if let Some(o) = a.objective.as_deref().filter(|o| *o != part) {
                bail!("--method {m} and --objective {o} disagree");
            }
            a.objective = Some(part.to_string());
        } else if method.replace(part.to_string()).is_some() {
            bail!("--method {m}: at most one of lora, qlora, full, adapter (with dpo, orpo or sft)");
        }
    }
    a.method = method;
    Ok(())
}

pub fn run(mut a: TrainArgs) -> Result<()> {
    split_method(&mut a)?;
    let flags = toml::Table::try_from(&a).context("reading the flags")?;
    let mut cfg = TrainConfig::resolve(a.config.as_deref(), flags)?;
    // --out is checked, locked and marked before anything loads (the rules: kiln::outdir).
    let inputs = kiln::outdir::Inputs::default().with_data_specs(&cfg.data);
    let inputs = [cfg.model.as_deref(), cfg.eval_data.as_deref()].into_iter().flatten().fold(inputs, |i, p| i.with(p));
    let out_dir = kiln::outdir::claim_train(&cfg.out, &inputs, a.resume.is_some(), a.overwrite)?;
    if let Some(d) = &a.device {
        kiln_wgpu::choose(d);
    }
    let backend = set_precision(pick_backend(&cfg.backend, a.device.as_deref())?, &cfg.precision)?;
    let path = kiln::models::resolve(cfg.model.as_deref())?;
    // Config and tokenizer only: the plan and the memory check come before any tensor.
    let base = BaseModel::open(&path)?;
    let seq = cfg.max_seq_len.unwrap_or(base.facts.config.max_position_embeddings.min(2048));
    cfg.max_seq_len = Some(seq);
    cfg.validate()?;
    let (data, vocab) = prepare_data(&mut cfg, &base, seq)?;
    let tok_out = data.renderer.tokenizer.clone();
    let plan = Plan::new(&cfg, &base.facts, &data, seq, vocab)?;
    eprint!("{}", plan_text(&cfg, &plan, &data, seq, &path.display().to_string()));
    let fits = check_memory(&cfg, &plan, &base.facts, &path, a.config.as_deref());
    if a.dry_run {
        if let Err(e) = fits {
            eprintln!("note: this run would be refused: {e}");
        }
        return Ok(());
    }
    fits?;
    let model = load_model(&mut cfg, base, vocab, backend)?;
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    let mut t = Trainer::new(cfg.clone(), model, data)?;
    t.identity.base_model = Some(kiln::train::identity::model_identity(&path)?);
    if let Some(r) = &a.resume {
        let ck = match r {
            Some(p) => p.clone(),
            None => kiln::train::checkpoint::list(&cfg.out).pop().map(|c| c.1).with_context(|| {
                format!("--resume: no checkpoint under {}", kiln::train::checkpoint::dir(&cfg.out).display())
            })?,
        };
        let step = t.resume(&ck)?;
        for n in &t.resume_notes {
            eprintln!("{n}");
        }
        eprintln!("resumed from {} (step {step} of {})", ck.display(), t.total_steps);
    }
    // Written once a resume has been accepted: a refused one leaves the run's files as they were.
    kiln::formats::write_atomic(&cfg.out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    write_eval_rows(&cfg.out.join("eval.jsonl"), &t.data.eval_examples)?;
    // SIGINT (Ctrl-C), SIGTERM (kill, SLURM) and SIGHUP (a closed terminal): finish the current
    // step, save a checkpoint, exit 128+n; a second signal exits at once.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let which = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        // The shutdown first: it sees the flag the first signal set only from the second one on.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, stop.clone())
            .and_then(|_| signal_hook::flag::register_usize(sig, which.clone(), sig as usize))
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
            .context("installing the signal handlers")?;
    }
    t.stop = Some(stop);
    let summary = train_with_progress(&mut t)?;
    if summary.interrupted {
        // The run saved a checkpoint of the step it stopped after: the newest one.
        let (step, ck) = kiln::train::checkpoint::list(&cfg.out).pop().unwrap_or_default();
        let sig = which.load(std::sync::atomic::Ordering::SeqCst) as i32;
        eprintln!(
            "interrupted at step {step} of {} ({}): checkpoint {}; continue with the same command and --resume",
            t.total_steps,
            signal_name(sig),
            ck.display()
        );
        out_dir.interrupted()?;
        std::process::exit(128 + if sig > 0 { sig } else { signal_hook::consts::SIGINT });
    }
    if !summary.skipped.is_empty() {
        eprintln!("{} steps skipped for a non-finite loss or gradient: {:?}", summary.skipped.len(), summary.skipped);
    }
    finish(&cfg, &mut t, &summary, &path, &tok_out)?;
    Ok(out_dir.finish()?)
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "SIGINT",
    }
}

/// The tokenizer readied for the run (special tokens added) and the data prepared with it;
/// returns the data and the vocabulary size the model needs.
fn prepare_data(cfg: &mut TrainConfig, base: &BaseModel, seq: usize) -> Result<(Prepared, usize)> {
    let mut tok = base.tokenizer.clone();
    let (log, vocab) = prepare_tokenizer(cfg, &mut tok, base.facts.config.vocab_size)?;
    for line in log {
        eprintln!("{line}");
    }
    Ok((prepare(cfg, tok, seq)?, vocab))
}

/// Loads the weights once the plan has been accepted, readies them for the method (QLoRA
/// quantization, a grown vocabulary) and moves them to the backend.
fn load_model(
    cfg: &mut TrainConfig,
    base: BaseModel,
    vocab: usize,
    backend: &'static dyn kiln::core::Backend,
) -> Result<Llama> {
    let mut model = base.load(cfg.method == Method::Full)?;
    for line in prepare_weights(cfg, &mut model, vocab)? {
        eprintln!("{line}");
    }
    if backend.name() != "cpu" {
        model.to_backend(backend).with_context(|| format!("moving the model to {}", backend.name()))?;
    }
    Ok(model)
}

/// A log line above the bar, or on stderr when the bar is hidden.
fn say(pb: &ProgressBar, msg: String) {
    if pb.is_hidden() { eprintln!("{msg}") } else { pb.println(msg) }
}

fn train_with_progress(t: &mut Trainer) -> Result<Summary> {
    let tty = std::io::stderr().is_terminal();
    let total = t.total_steps;
    let pb = ProgressBar::new(total as u64);
    if tty {
        pb.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    } else {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // Without a terminal: a plain line about 20 times per run, and at every evaluation.
    let every = total.div_ceil(20).max(1);
    let mut on = |e: Event<'_>| match e {
        Event::Step(s) => {
            pb.set_position(s.step as u64);
            let pref =
                s.pref.map_or(String::new(), |p| format!(" acc {:.2} margin {:.3}", p.reward_accuracy, p.margin()));
            let msg = format!("loss {:.4}{pref} lr {:.2e} {:.0} tok/s", s.loss, s.lr, s.tokens_per_s);
            if tty {
                pb.set_message(msg);
            } else if s.step % every == 0 || s.step == s.total {
                eprintln!("step {}/{}: {msg} epoch {:.2} grad norm {:.3}", s.step, s.total, s.epoch, s.grad_norm);
            }
        }
        Event::Eval { step, loss, scores, pref } => {
            let extra: String =
                scores.map_or(String::new(), |s| s.rows().iter().map(|(k, v)| format!(", {k} {v:.2}")).collect());
            match pref {
                Some(p) => say(
                    &pb,
                    format!(
                        "eval @ step {step}: loss {loss:.4}, reward accuracy {:.3} (model prefers chosen {:.3}), rewards chosen {:.4} rejected {:.4} margin {:.4}, chosen ppl {:.2}{extra}",
                        p.reward_accuracy,
                        p.policy_accuracy,
                        p.rewards_chosen,
                        p.rewards_rejected,
                        p.margin(),
                        p.chosen_loss().exp()
                    ),
                ),
                None => say(&pb, format!("eval @ step {step}: loss {loss:.4}, ppl {:.2}{extra}", loss.exp())),
            }
        }
        Event::Reference { done, total } => {
            if done == total || pb.is_hidden() && done % 256 == 0 {
                say(&pb, format!("reference log-probabilities: {done}/{total} pairs"));
            } else {
                pb.set_message(format!("reference log-probabilities {done}/{total}"));
            }
        }
        Event::Saved { step, path } => say(&pb, format!("checkpoint @ step {step}: {}", path.display())),
        Event::Skipped { step, reason } => say(&pb, format!("step {step} skipped: {reason}")),
    };
    let s = t.run(&mut on);
    pb.finish_and_clear();
    Ok(s?)
}

/// Writes the deployable output, the loss curve, and prints the summary.
fn finish(cfg: &TrainConfig, t: &mut Trainer, s: &Summary, base: &Path, tok: &TextTokenizer) -> Result<()> {
    let out = &cfg.out;
    // Fully trained modules beside LoRA (--train-embeddings), saved as PEFT's modules_to_save.
    let extra: Vec<(String, kiln::core::Tensor)> = if t.lora.is_some() {
        t.params().into_iter().filter(|(n, _)| !n.contains(".lora_")).collect()
    } else {
        Vec::new()
    };
    let what = match &t.lora {
        None if cfg.method == Method::Adapter => {
            let dir = out.join("adapter");
            kiln::adapters::bottleneck::save(&t.params(), cfg.adapter_size, &base.display().to_string(), &dir)?;
            format!("bottleneck adapter in {}", dir.display())
        }
        Some(l) => {
            let dir = out.join("adapter");
            l.save_peft(&dir, &base.display().to_string(), cfg.lora_dropout, &extra)?;
            if !cfg.add_special_tokens.is_empty() {
                // The grown tokenizer travels with the adapter (PEFT users resize the base
                // model's embeddings to len(tokenizer) before loading it).
                tok.save_hf(&dir)?;
            }
            format!("PEFT adapter in {}", dir.display())
        }
        None => {
            let dir = out.join("model");
            kiln::formats::write_safetensors(&dir.join("model.safetensors"), &t.params())?;
            if !cfg.add_special_tokens.is_empty() || !base.is_dir() {
                // A grown vocabulary or a GGUF source: config and tokenizer written afresh.
                let text = serde_json::to_string_pretty(&t.model.config.to_hf_json())?;
                kiln::formats::write_atomic(&dir.join("config.json"), text.as_bytes())?;
                tok.save_hf(&dir)?;
            } else {
                for f in [
                    "config.json",
                    "generation_config.json",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "chat_template.jinja",
                    "special_tokens_map.json",
                ] {
                    let src = base.join(f);
                    if src.is_file() {
                        std::fs::copy(&src, dir.join(f)).with_context(|| format!("copying {}", src.display()))?;
                    }
                }
            }
            format!("weights in {}", dir.display())
        }
    };
    kiln::formats::write_atomic(
        &out.join("loss.svg"),
        kiln::train::plot::loss_svg_with(&s.losses, &s.evals, &s.eval_rewards).as_bytes(),
    )?;
    let first = s.evals.first().map(|e| e.1);
    let last = s.evals.last().map(|e| e.1);
    if let (Some(a), Some(b)) = (s.eval_rewards.first(), s.eval_rewards.last()) {
        println!("held-out reward accuracy {:.3} (step {}) → {:.3} (step {})", a.1, a.0, b.1, b.0);
    }
    println!(
        "trained {} steps{} in {:.1}s ({:.0} tokens/s), peak memory {}; eval loss {} → {}{}; {what}; metrics.jsonl, loss.svg in {}",
        s.steps,
        s.resumed_from.map(|r| format!(" (resumed at {r})")).unwrap_or_default(),
        s.secs,
        s.tokens as f64 / s.secs.max(1e-9),
        kiln::info::peak_rss_mb().map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "unknown".into()),
        first.map(|l| format!("{l:.4}")).unwrap_or_else(|| "–".into()),
        last.map(|l| format!("{l:.4}")).unwrap_or_else(|| "–".into()),
        s.best_eval.map(|(st, l)| format!(" (best {l:.4} at step {st})")).unwrap_or_default(),
        out.display()
    );
    Ok(())
}
