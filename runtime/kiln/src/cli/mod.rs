//! clap commands.

mod bench;
mod data;
mod demo;

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
    /// Dataset tools.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// Benchmarks (GFLOP/s or GB/s, JSON with --json).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Info { json, model } => info(json, model),
        Cmd::Demo(a) => demo::run(a),
        Cmd::Bench(b) => bench::run(b),
        Cmd::Data(d) => data::run(d),
    }
}

fn info(json: bool, model: Option<PathBuf>) -> Result<()> {
    let mut v = kiln::info::report();
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
        m.forward(&tape, &kiln::model::Inputs { ids: &ids, pos: &pos, seg: None }, None, false)?;
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
