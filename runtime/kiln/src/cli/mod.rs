//! clap commands.

mod bench;
mod bench_model;
mod bench_ops;
mod chat;
mod data;
mod demo;
mod eval;
mod export;
mod generate;
mod kernels;
mod prof;
mod prof_run;
mod selftest;
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
        /// A model to describe (layers, hidden, heads, KV heads, head dim, vocab, context, RoPE):
        /// a folder (config.json + safetensors), a .gguf file, or a Hugging Face name
        /// `org/name[@revision]` from the local cache.
        #[arg(long)]
        model: Option<PathBuf>,
    },
    /// The main job: QLoRA-fine-tune the default model (SmolLM2-135M-Instruct) on the bundled
    /// orders data and score held-out rows by exact match before and after (--tiny: a small
    /// random Llama on byte tokens instead, no download). Writes the adapter, metrics.jsonl,
    /// loss.svg and demo.json under --out.
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
    /// Kernel profiler without a GPU: `static` reads each compiled kernel (registers, shared
    /// memory, spills, occupancy, the main loop's instruction mix); `run` profiles an op's
    /// launches on the emulation and models their time on a card.
    #[command(subcommand)]
    Prof(prof::ProfCmd),
    /// Check a backend on this machine: every op's kernels against the CPU reference (the
    /// op-parity suite of `cargo test`), on fresh random inputs at ragged shapes.
    Selftest(selftest::SelftestArgs),
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
        Cmd::Selftest(a) => selftest::run(a),
        Cmd::Kernels(k) => kernels::run(k),
        Cmd::Prof(p) => prof::run(p),
    }
}

fn info(json: bool, model: Option<PathBuf>) -> Result<()> {
    let mut v = kiln::info::report();
    if let Some(m) = &model {
        v["model"] = kiln::info::model(&kiln::model::resolve(Some(m))?)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", kiln::info::render(&v));
    }
    Ok(())
}
