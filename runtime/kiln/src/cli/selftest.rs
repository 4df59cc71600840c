//! `kiln selftest`: every op's kernels on a backend against the CPU reference (the op-parity
//! suite of `cargo test`, `kiln_core::selftest`), narrowed to some ops with `--op`, with the CUDA
//! GEMM variants and the wgpu f16 GEMMs checked on the cases that reach them.

use anyhow::Result;
use clap::Args;
use kiln::core::backend::Op;
use kiln::core::selftest::{self, Case, Filter};

#[derive(Args, Debug)]
pub struct SelftestArgs {
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
    /// Only these ops' cases, comma-separated: op names (rms_norm, rope, linear, …) or families
    /// (glu, matmul, …). Default: KILN_SELFTEST_OP when set, else every op.
    #[arg(long)]
    op: Option<String>,
}

/// Runs `kiln selftest`.
pub fn run(a: SelftestArgs) -> Result<()> {
    let SelftestArgs { backend: which, device, json, op } = a;
    let which = which.as_str();
    let filter = match &op {
        Some(s) => Filter::parse(s).map_err(|e| anyhow::anyhow!("--op: {e}"))?,
        None => Filter::from_env().map_err(|e| anyhow::anyhow!(e))?,
    };
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
        #[cfg(feature = "wgpu")]
        if name == "wgpu"
            && let Ok(d) = kiln_wgpu::runtime::device()
        {
            d.set_poison(true);
        }
        let t0 = std::time::Instant::now();
        let mut on = |case: &str, outcome: Option<&str>| {
            if !json && let Some(o) = outcome.filter(|o| !o.starts_with("skipped")) {
                println!("FAIL {case}: {o}");
            }
        };
        let mut rep = selftest::run_filtered(be, &filter, &mut on);
        // The CUDA GEMM variants besides the default, on the cases that reach them.
        if let Ok(k) = kiln_cuda::kernel_backend(name, device) {
            let gemm = |c: &Case| filter.accepts(c.op) && matches!(c.op, Op::Linear | Op::Matmul);
            for v in kiln_cuda::GemmVariant::ALL {
                if v == k.gemm() || !k.runs(v) {
                    continue;
                }
                let r = selftest::run_where(k.with_gemm(v), &gemm, &mut on);
                rep.passed.extend(r.passed.into_iter().map(|c| format!("{c} (GEMM {v})")));
                rep.failed.extend(r.failed.into_iter().map(|(c, e)| (format!("{c} (GEMM {v})"), e)));
            }
        }
        // wgpu: the GEMM cases again in f16 arithmetic where the adapter has SHADER_F16.
        #[cfg(feature = "wgpu")]
        if name == "wgpu"
            && kiln_wgpu::runtime::device().is_ok_and(|d| d.shader_f16)
            && let Some(f16) = kiln_wgpu::with_precision(be, kiln_wgpu::Precision::F16)
        {
            let linear = |c: &Case| filter.accepts(c.op) && (c.name.contains("linear") || c.name.starts_with("matmul"));
            let r = selftest::run_where(f16, &linear, &mut on);
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
