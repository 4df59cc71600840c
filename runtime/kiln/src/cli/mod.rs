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
        // The CUDA GEMM variants besides the default, on the cases that reach them (those the
        // device runs itself: v5 elsewhere than Hopper would only run v4 again).
        if let Ok(k) = kiln_cuda::kernel_backend(name, device) {
            for v in kiln_cuda::GemmVariant::ALL.into_iter().filter(|&v| v != k.gemm() && k.runs(v)) {
                let linear = |c: &kiln::core::selftest::Case| c.name.contains("linear") || c.name.starts_with("matmul");
                let r = kiln::core::selftest::run_where(k.with_gemm(v), &linear, &mut on);
                rep.passed.extend(r.passed.into_iter().map(|c| format!("{c} (GEMM {v})")));
                rep.failed.extend(r.failed.into_iter().map(|(c, e)| (format!("{c} (GEMM {v})"), e)));
            }
        }
        // wgpu: the GEMM cases again in f16 arithmetic where the adapter has SHADER_F16.
        #[cfg(feature = "wgpu")]
        if name == "wgpu" && kiln_wgpu::runtime::device().is_ok_and(|d| d.shader_f16) {
            use kiln_wgpu::backend::matmul::{Precision, precision, set_precision};
            let keep = precision();
            set_precision(Precision::F16);
            let linear = |c: &kiln::core::selftest::Case| c.name.contains("linear") || c.name.starts_with("matmul");
            let r = kiln::core::selftest::run_where(be, &linear, &mut on);
            rep.passed.extend(r.passed.into_iter().map(|c| format!("{c} (f16 GEMM)")));
            rep.failed.extend(r.failed.into_iter().map(|(c, e)| (format!("{c} (f16 GEMM)"), e)));
            set_precision(keep);
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
    if let Some(path) = model.as_ref().filter(|p| p.extension().is_some_and(|e| e == "gguf")) {
        v["model"] = gguf_info(path)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", kiln::info::render(&v));
            let m = &v["model"];
            println!("model {} (GGUF v{})", m["path"].as_str().unwrap_or(""), m["version"]);
            println!(
                "  architecture {}, {} params, {} tensors {}, {:.1} MB on disk, opened and validated in {:.1} ms",
                m["arch"].as_str().unwrap_or("?"),
                m["params"],
                m["tensors"],
                m["tensor_types"],
                m["file_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                m["open_ms"].as_f64().unwrap_or(0.0)
            );
            println!(
                "  tokenizer: {} ({} tokens); chat template: {}",
                m["tokenizer"].as_str().unwrap_or("none"),
                m["vocab"],
                if m["chat_template"].as_bool() == Some(true) { "found" } else { "none" }
            );
        }
        return Ok(());
    }
    if let Some(dir) = model {
        let before = kiln::info::rss_bytes();
        let m = kiln::model::Llama::load(&dir, false)?;
        let after = kiln::info::rss_bytes();
        let bytes: usize = m.named_weights().iter().map(|(_, w)| w.value().numel() * w.value().dtype().size()).sum();
        let mapped = m.named_weights().iter().filter(|(_, w)| w.value().is_mapped()).count();
        // One short no-grad forward touches every weight: the map's pages become resident
        // (file-backed RSS) while anonymous memory grows only by activations and temporaries.
        let ids =
            kiln::core::Tensor::from_vec((0..8).map(|i| i % m.config.vocab_size as i32).collect::<Vec<i32>>(), [1, 8])?;
        let pos = kiln::model::default_positions(1, 8)?;
        let tape = kiln::core::Tape::no_grad();
        m.forward(
            &tape,
            &kiln::model::Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false },
            None,
            false,
        )?;
        let fwd = kiln::info::rss_bytes();
        v["model"] = serde_json::json!({
            "path": dir.display().to_string(),
            "arch": format!("{:?}", m.config.arch),
            "params": m.config.num_params(),
            "layers": m.config.num_layers,
            "hidden_size": m.config.hidden_size,
            "vocab_size": m.config.vocab_size,
            "weight_bytes": bytes,
            "tensors_mapped": mapped,
            "tensors": m.named_weights().len(),
            "rss_before_load_mb": before.0 as f64 / 1048576.0,
            "rss_after_load_mb": after.0 as f64 / 1048576.0,
            "anon_rss_growth_mb": (after.1 as f64 - before.1 as f64) / 1048576.0,
            "rss_after_forward_mb": fwd.0 as f64 / 1048576.0,
            "file_rss_after_forward_mb": fwd.2 as f64 / 1048576.0,
            "anon_rss_after_forward_mb": fwd.1 as f64 / 1048576.0,
        });
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", kiln::info::render(&v));
        if let Some(m) = v.get("model") {
            println!("model {}", m["path"].as_str().unwrap_or(""));
            println!(
                "  {} params, {} layers, weights {:.1} MB, {}/{} tensors used from the memory map, anonymous RSS grew {:.1} MB on load",
                m["params"],
                m["layers"],
                m["weight_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                m["tensors_mapped"],
                m["tensors"],
                m["anon_rss_growth_mb"].as_f64().unwrap_or(0.0)
            );
            println!(
                "  after an 8-token forward: RSS {:.1} MB = {:.1} MB file-backed (the map) + {:.1} MB anonymous",
                m["rss_after_forward_mb"].as_f64().unwrap_or(0.0),
                m["file_rss_after_forward_mb"].as_f64().unwrap_or(0.0),
                m["anon_rss_after_forward_mb"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}

fn gguf_info(path: &std::path::Path) -> Result<serde_json::Value> {
    use kiln::formats::gguf::{GgufFile, MetaValue};
    let t0 = std::time::Instant::now();
    let g = GgufFile::open(path)?;
    // "Validated" means what loading it would check, for what the file claims to hold: a
    // model's shape against the tensors present (when it names a block count) and its tokenizer
    // metadata (when it names a tokenizer), not only the header's bounds. A GGUF of other
    // tensors (a quantization test file, a LoRA) is described as it is.
    let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    let layers = match g.get(&format!("{arch}.block_count")) {
        Some(_) => Some(kiln::model::gguf::config_from_gguf(&g)?.num_layers),
        None => None,
    };
    if g.get("tokenizer.ggml.model").is_some() {
        kiln::data::tokenizer::TextTokenizer::from_gguf(&g)?;
    }
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut types = std::collections::BTreeMap::<&str, usize>::new();
    for t in &g.tensors {
        *types.entry(t.ty.name()).or_insert(0) += 1;
    }
    let vocab = match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => a.len(),
        _ => 0,
    };
    Ok(serde_json::json!({
        "path": path.display().to_string(),
        "version": g.version,
        "arch": g.get("general.architecture").and_then(|v| v.as_str()),
        "name": g.get("general.name").and_then(|v| v.as_str()),
        "params": g.tensors.iter().map(|t| t.numel()).sum::<u64>(),
        "layers": layers,
        "tensors": g.tensors.len(),
        "tensor_types": types,
        "file_bytes": g.file_bytes(),
        "tokenizer": g.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
        "vocab": vocab,
        "chat_template": g.get("tokenizer.chat_template").is_some(),
        "open_ms": open_ms,
    }))
}
