//! clap commands.

mod bench;
mod bench_ops;
mod chat;
mod data;
mod demo;
mod eval;
mod export;
mod generate;
mod kernels;
mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// kiln — fine-tune Llama-family language models with hand-written kernels.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Version, backends compiled and available here (CPU SIMD, CUDA devices, wgpu adapters),
    /// and why a backend is unavailable. With --model: the model's shape and memory after load.
    Info {
        /// Print JSON only (stdout): {"version", "backends": {"cpu", "cuda", "wgpu"}, "model"?}.
        #[arg(long)]
        json: bool,
        /// A model directory (config.json + safetensors) to load and describe.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// Create a small random Llama and LoRA-fine-tune it on the bundled demo text (byte
    /// tokens), writing the model, the adapter and metrics.jsonl under --out.
    Demo(demo::DemoArgs),
    /// Fine-tune a model on your data: LoRA (default), QLoRA or full, with evaluation,
    /// checkpoints and resume. Writes OUT/config.toml, eval.jsonl, metrics.jsonl, loss.svg,
    /// checkpoints/step-N/ and adapter/ (PEFT) or model/.
    Train(Box<train::TrainArgs>),
    /// Export a tuned model: --format merged writes a transformers folder with the adapter
    /// merged into the weights.
    Export(export::ExportArgs),
    /// Generate text with the KV cache (greedy by default, or temperature / top-k / top-p /
    /// repetition penalty), through the model's chat template, streaming as it decodes.
    Generate(generate::GenerateArgs),
    /// Chat with a model (and adapter) in a loop that keeps the conversation: /reset, /system,
    /// /params, /quit; --compare answers with the base and the tuned model side by side.
    Chat(chat::ChatArgs),
    /// Evaluate a model (with --adapter, optionally against the base): loss, perplexity, and
    /// exact match / BLEU / ROUGE of generated answers against the data's references.
    Eval(Box<eval::EvalArgs>),
    /// Score saved predictions against references: accuracy, BLEU, ROUGE.
    Score(eval::ScoreArgs),
    /// Dataset tools.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Benchmarks (GFLOP/s or GB/s, JSON with --json).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// CUDA kernels: build PTX ahead of time, list entry points.
    #[command(subcommand)]
    Kernels(kernels::KernelsCmd),
    /// Check a backend on this machine: every op's kernels against the CPU reference (the
    /// op-parity suite of `cargo test`), on fresh random inputs at ragged shapes.
    Selftest {
        /// cpu, cuda, cuda-emu (the CUDA kernels on this CPU), wgpu or all (every backend that
        /// opens here).
        #[arg(long, default_value = "all")]
        backend: String,
        /// CUDA device ordinal.
        #[arg(long, default_value_t = 0)]
        device: usize,
        /// Print JSON only: [{"backend", "passed", "skipped": [[case, why]], "failed": [[case, what]]}].
        #[arg(long)]
        json: bool,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { json, model } => info(json, model),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::Data(d) => data::run(d),
        Cmd::Generate(g) => generate::run(g),
        Cmd::Chat(c) => chat::run(c),
        Cmd::Eval(e) => eval::run(*e),
        Cmd::Score(s) => eval::score(s),
        Cmd::Train(t) => train::run(*t),
        Cmd::Export(e) => export::run(e),
        Cmd::Selftest { backend, device, json } => selftest(&backend, device, json),
        Cmd::Kernels(k) => kernels::run(k),
    }
}

fn selftest(which: &str, device: usize, json: bool) -> Result<()> {
    let cpu: &'static dyn kiln::core::Backend = &kiln::core::CpuBackend;
    let mut backends: Vec<(&str, std::result::Result<&'static dyn kiln::core::Backend, String>)> = Vec::new();
    match which {
        "cpu" => backends.push(("cpu", Ok(cpu))),
        "wgpu" => backends.push(("wgpu", kiln_wgpu::open())),
        "cuda" => backends.push(("cuda", kiln_cuda::open(device))),
        "cuda-emu" => backends.push(("cuda-emu", kiln_cuda::open_emu())),
        "all" => {
            backends.push(("cpu", Ok(cpu)));
            backends.push(("cuda", kiln_cuda::open(device)));
            backends.push(("cuda-emu", kiln_cuda::open_emu()));
            backends.push(("wgpu", kiln_wgpu::open()));
        }
        other => anyhow::bail!("--backend {other}: one of cpu, cuda, cuda-emu, wgpu, all"),
    }
    let (mut reports, mut failed) = (Vec::new(), 0);
    for (name, be) in backends {
        let be = match be {
            Ok(b) => b,
            Err(e) if which == "all" => {
                if !json {
                    println!("{name}: not available here ({e})");
                }
                reports.push(serde_json::json!({"backend": name, "unavailable": e}));
                continue;
            }
            Err(e) => anyhow::bail!("--backend {name}: {e}"),
        };
        // Outputs start as NaN bytes, so an element no kernel wrote cannot pass.
        if let Ok(k) = kiln_cuda::kernel_backend(name, device) {
            k.exec.set_poison(true);
        }
        let t0 = std::time::Instant::now();
        let mut on = |case: &str, outcome: Option<&str>| {
            if !json && let Some(o) = outcome.filter(|o| !o.starts_with("skipped")) {
                println!("FAIL {case}: {o}");
            }
        };
        let mut rep = kiln::core::selftest::run(be, &mut on);
        // The CUDA GEMM variants besides the default, on the cases that reach them.
        if kiln_cuda::kernel_backend(name, device).is_ok() {
            use kiln_cuda::backend::{Variant, set_variant, variant};
            let keep = variant();
            for v in [Variant::V1, Variant::V2, Variant::V4] {
                set_variant(v);
                let linear = |c: &kiln::core::selftest::Case| c.name.contains("linear") || c.name.starts_with("matmul");
                let r = kiln::core::selftest::run_where(be, &linear, &mut on);
                rep.passed.extend(r.passed.into_iter().map(|c| format!("{c} (GEMM {v:?})")));
                rep.failed.extend(r.failed.into_iter().map(|(c, e)| (format!("{c} (GEMM {v:?})"), e)));
            }
            set_variant(keep);
        }
        // wgpu: the GEMM cases again in f16 arithmetic where the adapter has SHADER_F16.
        #[cfg(feature = "wgpu")]
        if name == "wgpu"
            && kiln_wgpu::runtime::device().is_ok_and(|d| d.shader_f16)
            && let Some(f16) = kiln_wgpu::with_precision(be, kiln_wgpu::Precision::F16)
        {
            let linear = |c: &kiln::core::selftest::Case| c.name.contains("linear") || c.name.starts_with("matmul");
            let r = kiln::core::selftest::run_where(f16, &linear, &mut on);
            rep.passed.extend(r.passed.into_iter().map(|c| format!("{c} (f16 GEMM)")));
            rep.failed.extend(r.failed.into_iter().map(|(c, e)| (format!("{c} (f16 GEMM)"), e)));
        }
        failed += rep.failed.len();
        if !json {
            println!(
                "{name}: {} passed, {} skipped, {} failed in {:.1}s",
                rep.passed.len(),
                rep.skipped.len(),
                rep.failed.len(),
                t0.elapsed().as_secs_f64()
            );
            for (c, why) in &rep.skipped {
                println!("  skipped {c}: {why}");
            }
        }
        reports.push(serde_json::json!({"backend": name, "passed": rep.passed.len(), "skipped": rep.skipped,
            "failed": rep.failed}));
    }
    if json {
        println!("{}", serde_json::Value::Array(reports));
    }
    if failed > 0 {
        anyhow::bail!("{failed} parity cases failed");
    }
    Ok(())
}

fn info(json: bool, model: Option<PathBuf>) -> Result<()> {
    let mut v = kiln::info::report();
    if let Some(path) = &model {
        v["model"] = kiln::info::model(path)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", kiln::info::render(&v));
    }
    Ok(())
}
