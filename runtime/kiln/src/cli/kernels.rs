//! `kiln kernels build` (PTX ahead of time, for machines with only the NVIDIA driver) and
//! `kiln bench kernels` (each CUDA kernel and variant at realistic shapes).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum KernelsCmd {
    /// Compile every kernels/*.cu with NVRTC for each architecture into DIR/<file>.<arch>.ptx;
    /// a machine without NVRTC then runs with KILN_PTX_DIR=DIR.
    Build {
        /// Comma-separated targets, e.g. sm_80,sm_90 [default: every supported one].
        #[arg(long)]
        arch: Option<String>,
        /// The folder to create (written beside it and renamed in when complete).
        #[arg(long)]
        out: PathBuf,
        /// Directory holding cuda_fp16.h (else KILN_CUDA_INCLUDE, $CUDA_HOME/include).
        #[arg(long)]
        cuda_include: Option<PathBuf>,
        /// Replace an earlier `kernels build` output in --out.
        #[arg(long)]
        overwrite: bool,
        /// Also assemble each sm_XX target's PTX into a cubin with ptxas (KILN_PTXAS, else on the
        /// PATH; pip nvidia-cuda-nvcc-cu12): drivers older than the PTX's CUDA release load those.
        #[arg(long)]
        cubin: bool,
    },
    /// The kernel entry points of each file.
    List,
}

pub fn run(cmd: KernelsCmd) -> Result<()> {
    match cmd {
        KernelsCmd::List => {
            for (file, src) in kiln_cuda::kernels::SOURCES {
                println!("{file}: {}", kiln_cuda::kernels::entry_points(src).join(" "));
            }
            Ok(())
        }
        KernelsCmd::Build { arch, out, cuda_include, overwrite, cubin } => {
            kiln::outdir::remove_on_signals()?;
            let inputs = match &cuda_include {
                Some(i) => kiln::outdir::Inputs::default().with(i),
                None => kiln::outdir::Inputs::default(),
            };
            let staged = kiln::outdir::StagedDir::begin(&out, "kiln kernels build", overwrite, &inputs)?;
            build(arch, staged.path(), cuda_include, cubin)?;
            staged.commit()?;
            eprintln!("run with KILN_PTX_DIR={}", out.display());
            Ok(())
        }
    }
}

#[cfg(feature = "cuda")]
fn build(arch: Option<String>, out: &std::path::Path, cuda_include: Option<PathBuf>, cubin: bool) -> Result<()> {
    use kiln_cuda::nvrtc;
    let archs: Vec<String> = match arch {
        Some(a) => a.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
        None => nvrtc::ARCHS.iter().map(|s| s.to_string()).collect(),
    };
    if archs.is_empty() {
        bail!("--arch: no architecture given");
    }
    let inc = nvrtc::include_dirs(cuda_include);
    let (maj, min) = nvrtc::version().map_err(|e| anyhow::anyhow!("{e}"))?;
    for a in &archs {
        for (file, src) in kiln_cuda::kernels::SOURCES {
            let c = nvrtc::compile(file, src, a, &inc).map_err(|e| anyhow::anyhow!("{e}"))?;
            if !c.log.is_empty() {
                eprintln!("{file} ({a}): {}", c.log);
            }
            // The whole folder is temporary until complete: no per-file temporaries.
            let path = out.join(format!("{}.{a}.ptx", file.trim_end_matches(".cu")));
            std::fs::write(&path, &c.ptx).with_context(|| format!("writing {}", path.display()))?;
            if cubin {
                // compute_90a is PTX for sm_90a's features; its cubin is sm_90a's.
                let target = a.replace("compute_", "sm_");
                let bin = out.join(format!("{}.{target}.cubin", file.trim_end_matches(".cu")));
                let pt = kiln_cuda::prof::ptxas();
                let o = std::process::Command::new(&pt)
                    .arg(format!("-arch={target}"))
                    .arg("-o")
                    .arg(&bin)
                    .arg(&path)
                    .output()
                    .with_context(|| {
                        format!("{} (pip install nvidia-cuda-nvcc-cu12==12.9.*; set KILN_PTXAS)", pt.display())
                    })?;
                if !o.status.success() {
                    bail!("ptxas {target} {file}: {}", String::from_utf8_lossy(&o.stderr));
                }
            }
        }
        eprintln!("{a}: {} files", kiln_cuda::kernels::SOURCES.len());
    }
    eprintln!("PTX by NVRTC {maj}.{min}");
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn build(_: Option<String>, _: &std::path::Path, _: Option<PathBuf>, _: bool) -> Result<()> {
    bail!("this kiln was built without CUDA support (feature `cuda`)")
}

#[derive(Args, Debug)]
pub struct BenchKernelsArgs {
    /// cuda or cuda-emu (the CPU emulation: checks the bench path, its times mean nothing).
    #[arg(long, default_value = "cuda")]
    backend: String,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Comma-separated: gemm, lora, qgemm, dequant, elementwise, embedding [default: all].
    #[arg(long)]
    op: Option<String>,
    /// One tokens×in×out shape per run instead of the defaults (4096³, 16384×4096×4096).
    #[arg(long = "shape")]
    shapes: Vec<String>,
    /// The smaller set: one shape, rank 16, shorter timing.
    #[arg(long)]
    quick: bool,
    /// The card's dense bf16 TFLOP/s [default: its datasheet figure, where known].
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
    /// Also append each row to this file as one JSON line the moment it is measured (a fault
    /// later in the run keeps the rows before it).
    #[arg(long)]
    jsonl: Option<std::path::PathBuf>,
    /// Also give each GEMM, LoRA, quantized-GEMM and GEMV row the roofline model's time on this
    /// card (h100, h200, a100, rtx4090, rtx3090, rtx4060ti): from the committed baseline where it
    /// has the row, else profiled now on the CUDA emulation.
    #[arg(long)]
    model: Option<String>,
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let v: Vec<usize> = s.split('x').map(|p| p.trim().parse::<usize>()).collect::<Result<_, _>>()?;
    match v[..] {
        [m, k, n] if m > 0 && k > 0 && n > 0 => Ok((m, k, n)),
        _ => bail!("--shape {s}: expected MxKxN"),
    }
}

pub fn bench(a: BenchKernelsArgs) -> Result<()> {
    let be =
        kiln_cuda::kernel_backend(&a.backend, a.device).map_err(|e| anyhow::anyhow!("--backend {}: {e}", a.backend))?;
    let emu = a.backend == "cuda-emu";
    let mut plan = if emu { kiln_cuda::bench::Plan::emulation() } else { kiln_cuda::bench::Plan::gpu(a.quick) };
    if let Some(ops) = &a.op {
        plan.ops = ops.split(',').map(|s| s.trim().to_string()).collect();
    }
    if !a.shapes.is_empty() {
        plan.shapes = a.shapes.iter().map(|s| parse_shape(s)).collect::<Result<_>>()?;
    }
    let card = match &a.model {
        Some(c) => Some(kiln_cuda::prof::model::card(c).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let device = be.exec.describe();
    let bandwidth = be.exec.copy_bandwidth().map_err(|e| anyhow::anyhow!("{e}"))?;
    let datasheet = if emu { None } else { kiln_cuda::bench::datasheet_bf16_tflops(&device) };
    let peak = a.peak_tflops.or(datasheet);
    if !a.json {
        eprintln!("{device}");
        if emu {
            eprintln!(
                "cuda-emu: the kernels run on this CPU through kiln's emulation; times check the bench path and mean nothing about a GPU"
            );
        }
        if let Some(bw) = bandwidth {
            eprintln!("device-to-device copy: {bw:.0} GB/s (the bandwidth peak below)");
        }
    }
    let mut rows = Vec::new();
    let mut jsonl = match &a.jsonl {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("--jsonl {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let mut write_err = None;
    let rows_out = kiln_cuda::bench::run(be, &plan, &mut |r| {
        let tflops = r.flops.map(|f| f / r.median_s / 1e12);
        let gbps = r.bytes.map(|b| b / r.median_s / 1e9);
        let pct = match (tflops, gbps) {
            (Some(t), _) => peak.map(|p| 100.0 * t / p),
            (_, Some(g)) => bandwidth.map(|b| 100.0 * g / b),
            _ => None,
        };
        if !a.json {
            let rate = match (tflops, gbps) {
                (Some(t), _) => format!("{t:.2} TFLOP/s"),
                (_, Some(g)) => format!("{g:.1} GB/s"),
                _ => String::new(),
            };
            let pct = pct.map(|p| format!(" ({p:.1} % of peak)")).unwrap_or_default();
            eprintln!("{:<48} {:<24} {:<22} {:>10.3} ms  {rate}{pct}", r.op, r.variant, r.shape, r.median_s * 1e3);
        }
        let modeled = card.and_then(|c| super::bench_model::modeled(c, r).map(|m| (c, m)));
        if let (Some((c, m)), false) = (&modeled, a.json) {
            let rate = r.flops.map(|f| format!("{:.2} TFLOP/s, ", f / m.seconds / 1e12)).unwrap_or_default();
            // On a GPU: the fraction of the modeled (roofline) speed the kernel reached.
            let vs =
                if emu { String::new() } else { format!("reached {:.0} % of it; ", 100.0 * m.seconds / r.median_s) };
            eprintln!("{:<48} modeled on {}: {:.3} ms ({rate}{vs}{})", "", c.name, m.seconds * 1e3, m.source);
        }
        rows.push(json!({
            "op": r.op, "variant": r.variant, "dtype": r.dtype, "shape": r.shape, "backend": a.backend,
            "device": device, "median_s": r.median_s, "repeats": r.repeats, "tflops": tflops, "gbps": gbps,
            "pct_of_peak": pct,
            "peak": match (tflops, gbps) { (Some(_), _) => json!({"tflops": peak, "source": if a.peak_tflops.is_some() { "--peak-tflops" } else if datasheet.is_some() { "datasheet (dense bf16)" } else { "unknown" }}), _ => json!({"gbps": bandwidth, "source": "measured device-to-device copy"}) },
            "timing": if emu { "cpu emulation (meaningless for GPU speed)" } else { "cuda events, L2 flushed between repeats" },
            "modeled": modeled.as_ref().map(|(c, m)| json!({"card": c.key, "s": m.seconds,
                "tflops": r.flops.map(|f| f / m.seconds / 1e12), "source": m.source})),
        }));
        if let (Some(f), Some(row)) = (jsonl.as_mut(), rows.last()) {
            use std::io::Write;
            if let Err(e) = writeln!(f, "{row}").and_then(|_| f.flush()) {
                write_err.get_or_insert(e);
            }
        }
    });
    if let (Some(e), Some(p)) = (write_err, &a.jsonl) {
        bail!("--jsonl {}: {e}", p.display());
    }
    rows_out.map_err(|e| anyhow::anyhow!("{e}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
