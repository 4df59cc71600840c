//! `kiln selftest`: every op's kernels on a backend against the CPU reference (the op-parity
//! suite of `cargo test`, `kiln_core::selftest`), narrowed to some ops with `--op`, with the CUDA
//! GEMM variants and the wgpu f16 GEMMs checked on the cases that reach them.

use anyhow::Result;
use clap::Args;
use kiln::core::backend::Op;
use kiln::core::selftest::{self, Case, Filter, Report};

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
    let (mut reports, mut problems) = (Vec::new(), Vec::new());
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
        // The reviewed list of what may be skipped on this backend, with the reasons.
        let allowed = match name {
            "cpu" => selftest::CPU_SKIPS,
            "wgpu" => kiln_wgpu::PARITY_SKIPS,
            _ => kiln_cuda::PARITY_SKIPS,
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
        let mut expected = selftest::count(&selftest::DEFAULT_SEEDS, &filter, &|_| true);
        // A variant pass on the cases that reach its kernels, on inputs of its own (so a kernel
        // that leaves an output unwritten cannot inherit the default pass's answer).
        let mut pass = |be: &dyn kiln::core::Backend, label: &str, keep: &dyn Fn(&Case) -> bool, rep: &mut Report| {
            let seeds = selftest::seeds_for(&format!("{name} {label}"));
            let r = selftest::run_pass(be, &seeds, &filter, keep, &mut on);
            expected += selftest::count(&seeds, &filter, keep);
            rep.passed.extend(r.passed.into_iter().map(|c| format!("{c} ({label})")));
            rep.skipped.extend(r.skipped.into_iter().map(|(c, e)| (format!("{c} ({label})"), e)));
            rep.failed.extend(r.failed.into_iter().map(|(c, e)| (format!("{c} ({label})"), e)));
        };
        // The CUDA GEMM variants besides the default, on the cases that reach them.
        if let Ok(k) = kiln_cuda::kernel_backend(name, device) {
            let gemm = |c: &Case| matches!(c.op, Op::Linear | Op::Matmul);
            for v in kiln_cuda::GemmVariant::ALL {
                if v == k.gemm() || !k.runs(v) {
                    continue;
                }
                pass(k.with_gemm(v), &format!("GEMM {v}"), &gemm, &mut rep);
            }
        }
        // wgpu: the GEMM cases again in f16 arithmetic where the adapter has SHADER_F16.
        #[cfg(feature = "wgpu")]
        if name == "wgpu"
            && kiln_wgpu::runtime::device().is_ok_and(|d| d.shader_f16)
            && let Some(f16) = kiln_wgpu::with_precision(be, kiln_wgpu::Precision::F16)
        {
            let linear = |c: &Case| c.name.contains("linear") || c.name.starts_with("matmul");
            pass(f16, "f16 GEMM", &linear, &mut rep);
        }
        // Every case passed or was skipped with a listed reason, and the count is the table's.
        let verdict = rep.verify(expected, allowed);
        if !json {
            println!(
                "{name}: {} passed, {} skipped, {} failed of {expected} in {:.1}s",
                rep.passed.len(),
                rep.skipped.len(),
                rep.failed.len(),
                t0.elapsed().as_secs_f64()
            );
            for (c, why) in &rep.skipped {
                println!("  skipped {c}: {why}");
            }
        }
        if let Err(e) = &verdict {
            if !json {
                println!("{name}: parity not met:\n{e}");
            }
            problems.push(format!("{name}: {}", e.lines().next().unwrap_or_default()));
        }
        reports.push(serde_json::json!({"backend": name, "passed": rep.passed.len(), "skipped": rep.skipped,
            "failed": rep.failed, "expected": expected, "ok": verdict.is_ok()}));
    }
    if json {
        println!("{}", serde_json::Value::Array(reports));
    }
    if !problems.is_empty() {
        anyhow::bail!(
            "parity not met on {} backend(s) (failed cases, skips not on the allow-list, or a wrong count):\n{}",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(())
}
