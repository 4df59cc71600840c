//! `kiln bench gemm`: CPU GEMM throughput at the shapes the models use (and 2048³), in the
//! kernel-bench JSON schema. `tools/bench_gemm.py` runs PyTorch beside it. `kiln bench train`:
//! the trainer's own step (`Trainer::step`) on random tokens, timed.

use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use kiln::core::Tensor;
use kiln::core::rng::Rng;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// f32 matrix products on a backend (--backend cpu|wgpu): `x·Wᵀ` (linear) at M×K×N shapes.
    Gemm(GemmArgs),
    /// LoRA training steps (forward, backward, AdamW) of a model on random tokens.
    Train(TrainArgs),
    /// Each CUDA kernel and GEMM variant at realistic shapes: median device time, TFLOP/s or
    /// GB/s, and the fraction of the card's peak (--backend cuda, or cuda-emu on the CPU).
    Kernels(super::kernels::BenchKernelsArgs),
    /// Attention (TFLOP/s), dequantization, RMSNorm and cross-entropy (GB/s, and the fraction
    /// of a copy's) through the backend trait, on any backend (cpu, wgpu, cuda, cuda-emu).
    Ops(super::bench_ops::OpsArgs),
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// A .gguf file or an HF model directory [default: SmolLM2-135M-Instruct].
    #[arg(long)]
    model: Option<std::path::PathBuf>,
    /// lora, qlora, full or adapter.
    #[arg(long, default_value = "lora")]
    method: String,
    /// qlora: quantize the base's linear weights (nf4, q8_0, q4_0, q4_1, q5_0, q4_k) [default: a GGUF's
    /// own block types, nf4 otherwise].
    #[arg(long)]
    quantize: Option<String>,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, alias = "seq-len", default_value_t = 128)]
    max_seq_len: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    /// q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all-linear.
    #[arg(long, default_value = "all-linear")]
    target_modules: String,
    /// Recompute each block in backward instead of keeping its activations.
    #[arg(long)]
    gradient_checkpointing: bool,
    /// cpu, cuda, cuda-emu or wgpu (auto: cpu).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// wgpu: the GEMMs' arithmetic, f32 or f16 (needs SHADER_F16).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Print JSON only: {"backend", "model", "method", "batch_size", "seq_len", "step_s",
    /// "tokens_per_s", "peak_rss_mb", "peak_gpu_mb", "threads", "targets", "lora_r"}.
    #[arg(long)]
    json: bool,
}

/// Times the trainer's own step (forward, backward, clipping, AdamW) on one batch of random
/// tokens, with the parameters the method trains.
fn train(a: TrainArgs) -> Result<()> {
    use kiln::data::batch::{Sequence, to_batch};
    use kiln::train::{Batches, Method, Stepped, TrainConfig, Trainer};
    if a.steps == 0 || a.batch_size == 0 || a.max_seq_len < 2 {
        anyhow::bail!("--steps and --batch-size must be positive and --max-seq-len at least 2");
    }
    let be = kiln::backend_select::set_precision(backend(&a.backend)?, &a.precision)?;
    let mut flags = toml::Table::new();
    flags.insert("data".into(), toml::Value::Array(vec!["(random tokens)".into()]));
    flags.insert("method".into(), a.method.clone().into());
    flags.insert("lora_r".into(), (a.lora_r as i64).into());
    flags.insert("lora_alpha".into(), (2.0 * a.lora_r as f64).into());
    flags.insert("target_modules".into(), a.target_modules.clone().into());
    if let Some(q) = &a.quantize {
        flags.insert("quantize".into(), q.clone().into());
    }
    // One warm-up step, then the timed ones, at a constant rate.
    flags.insert("max_steps".into(), (a.steps as i64 + 1).into());
    flags.insert("learning_rate".into(), 1e-4.into());
    flags.insert("lr_scheduler".into(), "constant".into());
    flags.insert("batch_size".into(), (a.batch_size as i64).into());
    flags.insert("max_seq_len".into(), (a.max_seq_len as i64).into());
    flags.insert("gradient_checkpointing".into(), a.gradient_checkpointing.into());
    flags.insert("seed".into(), 1.into());
    let mut cfg = TrainConfig::resolve(None, flags)?;
    let path = kiln::model::resolve(a.model.as_deref())?;
    let mut model = kiln::model::Llama::load(&path, cfg.method == Method::Full)?;
    if let Some(line) = kiln::train::prepare::quantize_base(&mut cfg, &mut model)? {
        eprintln!("{line}");
    }
    let (b, t) = (a.batch_size, a.max_seq_len);
    let mut rng = Rng::new(0);
    let rows: Vec<Sequence> = (0..b)
        .map(|_| {
            let ids: Vec<i32> = (0..t).map(|_| rng.below(model.config.vocab_size) as i32).collect();
            Sequence { labels: ids.clone(), pos: (0..t as i32).collect(), seg: vec![0; t], ids }
        })
        .collect();
    let batch = to_batch(&rows, 0)?;
    if be.name() != "cpu" {
        model.to_backend(be)?;
    }
    let next = Box::new(move |_| Ok(vec![batch.clone()]));
    let mut trainer =
        Trainer::with_batches(cfg, model, Batches { next, eval: Vec::new(), pad: 0, steps_per_epoch: 1.0 })?;
    let mut times = Vec::new();
    for i in 0..=a.steps {
        let t0 = Instant::now();
        let loss_now = match trainer.step()? {
            Stepped::Applied(s) => s.loss,
            Stepped::Skipped(_) => f64::NAN,
        };
        // A CUDA step ends when the device has run its queued kernels.
        if let Ok(k) = kiln_cuda::kernel_backend(be.name(), 0) {
            k.exec.synchronize().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
        if !a.json {
            eprintln!("step {i}: {:.2}s, loss {loss_now:.3}", t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|p, q| p.total_cmp(q));
    let step_s = times[times.len() / 2];
    let peak = kiln::info::peak_rss_mb();
    let v = json!({
        "backend": be.name(), "gemm_dtype": gemm_dtype(be), "model": path.display().to_string(), "method": a.method, "batch_size": b, "seq_len": t,
        "step_s": step_s, "tokens_per_s": (b * t) as f64 / step_s, "peak_rss_mb": peak,
        "peak_gpu_mb": kiln_cuda::kernel_backend(be.name(), 0).ok().and_then(|k| k.exec.peak_memory()).map(|b| b as f64 / 1048576.0),
        "threads": rayon::current_num_threads(), "targets": a.target_modules, "lora_r": a.lora_r,
        "gradient_checkpointing": a.gradient_checkpointing,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        eprintln!("{v}");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct GemmArgs {
    /// Shapes as MxKxN (repeatable); default: 2048³ and SmolLM2-135M's linear layers at 512 tokens.
    #[arg(long = "shape")]
    shapes: Vec<String>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
    /// Seconds of timed repeats per shape (after one warm-up).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// The machine's peak GFLOP/s, to report a fraction of it.
    #[arg(long)]
    peak_gflops: Option<f64>,
    /// cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// wgpu: the GEMM's arithmetic, f32 or f16 (needs SHADER_F16).
    #[arg(long, default_value = "f32")]
    precision: String,
}

/// The GEMM kernel `be` runs, by its name in shaders/matmul*.wgsl ("none" off wgpu).
/// The GEMM kernel `be` runs for f32 weights: the wgpu instance's variant, or the CUDA
/// backend's (f32 weights run v2 under the tensor-core variants).
fn kiln_wgpu_variant(be: &dyn kiln::core::Backend) -> &'static str {
    if let Some(k) = kiln_wgpu::gemm_kernel(be) {
        return k;
    }
    match kiln_cuda::kernel_backend(be.name(), 0) {
        Ok(k) => k.gemm().runs_for(kiln::core::DType::F32).full_name(),
        Err(_) => "none",
    }
}

/// The arithmetic the GEMMs run in on `be`.
fn gemm_dtype(be: &dyn kiln::core::Backend) -> &'static str {
    if be.name() == "wgpu" && kiln_wgpu_variant(be) == "v3h_f16" { "f16" } else { "f32" }
}

/// The backend a bench runs on (`auto` is the CPU: a bench names what it measures).
fn backend(name: &str) -> Result<&'static dyn kiln::core::Backend> {
    Ok(kiln::backend_select::pick(name, None, kiln::backend_select::Auto::Cpu)?)
}

const DEFAULT_SHAPES: [&str; 5] = ["2048x2048x2048", "512x576x576", "512x576x1536", "512x1536x576", "512x576x49152"];

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let v: Vec<usize> = s
        .split('x')
        .map(|p| p.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--shape {s}: {e} (expected MxKxN)"))?;
    match v[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => anyhow::bail!("--shape {s}: expected three positive sizes MxKxN"),
    }
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Gemm(a) => gemm(a),
        BenchCmd::Train(a) => train(a),
        BenchCmd::Kernels(a) => super::kernels::bench(a),
        BenchCmd::Ops(a) => {
            let be = backend(&a.backend)?;
            super::bench_ops::run(a, be)
        }
    }
}

fn gemm(a: GemmArgs) -> Result<()> {
    let be = kiln::backend_select::set_precision(backend(&a.backend)?, &a.precision)?;
    let shapes: Vec<String> =
        if a.shapes.is_empty() { DEFAULT_SHAPES.iter().map(|s| s.to_string()).collect() } else { a.shapes.clone() };
    let mut rows = Vec::new();
    let mut rng = Rng::new(0);
    for s in &shapes {
        let (m, k, n) = parse_shape(s)?;
        let x = be.upload(&Tensor::from_vec((0..m * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [m, k])?)?;
        let w = be.upload(&Tensor::from_vec((0..n * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [n, k])?)?;
        // GPU timestamps on wgpu, else the host clock around the product and a read-back.
        let (med, source, repeats) =
            super::bench_ops::time_repeats(be, a.seconds, &|| Ok(be.matmul(&x, &w, false, true)?))?;
        let gflops = 2.0 * (m * k * n) as f64 / med / 1e9;
        rows.push(json!({
            "op": "matmul",
            "variant": match (be.name(), kiln_wgpu_variant(be)) {
                ("cpu", _) => "gemm_crate",
                (_, v) => v,
            },
            "backend": be.name(), "dtype": gemm_dtype(be), "timing": source,
            "shape": format!("{m}x{k}x{n}"), "median_s": med, "tflops": gflops / 1e3, "gflops": gflops,
            "threads": rayon::current_num_threads(),
            "pct_of_peak": a.peak_gflops.map(|p| 100.0 * gflops / p),
            "peak_source": if a.peak_gflops.is_some() { "--peak-gflops" } else { "none given" },
        }));
        if !a.json {
            eprintln!(
                "matmul {} {m}x{k}x{n} on {} ({}): {:.3} ms, {gflops:.1} GFLOP/s ({} repeats)",
                gemm_dtype(be),
                be.name(),
                rows.last().map_or("", |r| r["variant"].as_str().unwrap_or("")),
                med * 1e3,
                repeats
            );
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
