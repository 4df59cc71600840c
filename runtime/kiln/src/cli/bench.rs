//! `kiln bench gemm`: CPU GEMM throughput at the shapes the models use (and 2048³), in the
//! kernel-bench JSON schema. `tools/bench_gemm.py` runs PyTorch beside it.

use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use kiln::core::Tensor;
use kiln::core::rng::Rng;
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// f32 matrix products on the CPU backend: `x·Wᵀ` (linear) at M×K×N shapes.
    Gemm(GemmArgs),
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
    let BenchCmd::Gemm(a) = cmd;
    let shapes: Vec<String> =
        if a.shapes.is_empty() { DEFAULT_SHAPES.iter().map(|s| s.to_string()).collect() } else { a.shapes.clone() };
    let mut rows = Vec::new();
    let mut rng = Rng::new(0);
    for s in &shapes {
        let (m, k, n) = parse_shape(s)?;
        let x = Tensor::from_vec((0..m * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [m, k])?;
        let w = Tensor::from_vec((0..n * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [n, k])?;
        let be = x.backend();
        be.matmul(&x, &w, false, true)?;
        let mut times = Vec::new();
        let start = Instant::now();
        while times.len() < 3 || (start.elapsed().as_secs_f64() < a.seconds && times.len() < 1000) {
            let t = Instant::now();
            let y = be.matmul(&x, &w, false, true)?;
            times.push(t.elapsed().as_secs_f64());
            drop(y);
        }
        times.sort_by(|p, q| p.total_cmp(q));
        let med = times[times.len() / 2];
        let gflops = 2.0 * (m * k * n) as f64 / med / 1e9;
        rows.push(json!({
            "op": "matmul", "variant": "gemm_crate", "backend": "cpu", "dtype": "f32",
            "shape": format!("{m}x{k}x{n}"), "median_s": med, "tflops": gflops / 1e3, "gflops": gflops,
            "threads": rayon::current_num_threads(),
            "pct_of_peak": a.peak_gflops.map(|p| 100.0 * gflops / p),
            "peak_source": if a.peak_gflops.is_some() { "--peak-gflops" } else { "none given" },
        }));
        if !a.json {
            eprintln!("matmul f32 {m}x{k}x{n}: {:.3} ms, {gflops:.1} GFLOP/s ({} repeats)", med * 1e3, times.len());
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
