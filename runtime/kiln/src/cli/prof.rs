//! `kiln prof static`: per kernel and target, ptxas's resources, theoretical occupancy and the
//! instruction mix of the steady-state main loop (kiln_cuda::prof).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum ProfCmd {
    /// Compile every kernel with NVRTC and ptxas, disassemble it (nvdisasm) and print, per
    /// kernel: registers, shared memory, spills, occupancy and its limiter, and the main loop's
    /// mix (MMA-equivalents, global loads by width, cp.async/TMA, shared loads/stores,
    /// ldmatrix, barriers, conversions, integer divides) with non-MMA instructions per MMA.
    Static(StaticArgs),
    /// Run one op at a shape on the CUDA emulation with every load and store profiled, and print
    /// per kernel launch: coalescing (bytes used of the 32-byte sectors moved), shared-memory
    /// wavefronts per request (bank conflicts), tensor-core flops, barriers, DRAM bytes under the
    /// L2 model; then the roofline model's time on a card (--card) with its bound.
    Run(super::prof_run::RunArgs),
}

#[derive(Args, Debug)]
pub struct StaticArgs {
    /// Comma-separated targets: sm_80, sm_86, sm_89, sm_90a, sm_120 [default: sm_80,sm_90a].
    #[arg(long, default_value = "sm_80,sm_90a")]
    arch: String,
    /// Only kernels whose name contains this.
    #[arg(long)]
    kernel: Option<String>,
    /// Directory holding cuda_fp16.h (else KILN_CUDA_INCLUDE, $CUDA_HOME/include).
    #[arg(long)]
    cuda_include: Option<PathBuf>,
    /// One JSON object per kernel and target (stdout), nothing else.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: ProfCmd) -> Result<()> {
    match cmd {
        ProfCmd::Static(a) => static_report(a),
        ProfCmd::Run(a) => super::prof_run::run(a),
    }
}

#[cfg(feature = "cuda")]
fn mix_json(m: &kiln_cuda::prof::Mix) -> serde_json::Value {
    serde_json::json!({"instructions": m.total, "mma": m.mma, "mma_equiv": m.mma_equiv, "ldg32": m.ldg32,
        "ldg64": m.ldg64, "ldg128": m.ldg128, "ldgsts": m.ldgsts, "utmaldg": m.utmaldg, "stg": m.stg, "lds": m.lds,
        "sts": m.sts, "ldsm": m.ldsm, "bar": m.bar, "cvt": m.cvt, "idiv": m.idiv, "other": m.other,
        "non_mma_per_mma": m.non_mma_per_mma()})
}

/// The JSON row of one kernel on one target.
#[cfg(feature = "cuda")]
fn row_json(k: &kiln_cuda::prof::KernelStatic) -> serde_json::Value {
    let (r, o) = (&k.resources, &k.occupancy);
    serde_json::json!({"file": k.file, "kernel": k.name, "arch": k.arch, "registers": r.registers, "smem": r.smem,
        "stack": r.stack, "spill_stores": r.spill_stores, "spill_loads": r.spill_loads,
        "launch_bounds": k.launch_bounds, "threads": o.threads, "blocks_per_sm": o.blocks_per_sm,
        "warps_per_sm": o.warps_per_sm, "occupancy": o.fraction, "limiter": o.limiter,
        "main_loop": k.main_loop.as_ref().map(|(l, m)| serde_json::json!({"start": l.start, "end": l.end, "mix": mix_json(m)})),
        "whole": mix_json(&k.whole)})
}

/// The static profile of the kernels `names` for `arch` (NVRTC, ptxas, nvdisasm), or why not.
#[cfg(feature = "cuda")]
pub fn static_of(
    names: &[String],
    arch: &str,
    cuda_include: Option<PathBuf>,
) -> Result<Vec<kiln_cuda::prof::KernelStatic>> {
    use kiln_cuda::nvrtc;
    let inc = nvrtc::include_dirs(cuda_include);
    let work = std::env::temp_dir().join(format!("kiln-prof-{}", std::process::id()));
    // NVRTC's virtual target for Hopper's wgmma is compute_90a; ptxas then targets sm_90a.
    let nv = if arch == "sm_90a" { "compute_90a" } else { arch };
    let mut out = Vec::new();
    let result = (|| -> Result<()> {
        for (file, src) in kiln_cuda::kernels::SOURCES {
            if !kiln_cuda::kernels::entry_points(src).iter().any(|e| names.contains(e)) {
                continue;
            }
            let c = nvrtc::compile(file, src, nv, &inc).map_err(|e| anyhow::anyhow!("{e}"))?;
            let ks = kiln_cuda::prof::analyse_ptx(file, &c.ptx, arch, &work).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.extend(ks.into_iter().filter(|k| names.contains(&k.name)));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result.map(|_| out)
}

#[cfg(feature = "cuda")]
fn static_report(a: StaticArgs) -> Result<()> {
    let archs: Vec<String> = a.arch.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    if archs.is_empty() {
        bail!("--arch: no architecture given");
    }
    for t in &archs {
        if kiln_cuda::prof::arch::limits(t).is_none() {
            let known: Vec<&str> = kiln_cuda::prof::arch::ARCHS.iter().map(|l| l.arch).collect();
            bail!("--arch {t}: not in the occupancy table ({})", known.join(", "));
        }
    }
    let wanted: Vec<String> = kiln_cuda::kernels::SOURCES
        .iter()
        .flat_map(|(_, src)| kiln_cuda::kernels::entry_points(src))
        .filter(|n| a.kernel.as_ref().is_none_or(|p| n.contains(p.as_str())))
        .collect();
    let mut rows = Vec::new();
    for t in &archs {
        rows.extend(static_of(&wanted, t, a.cuda_include.clone())?);
    }
    if let Some(p) = &a.kernel
        && rows.is_empty()
    {
        bail!("--kernel {p}: no kernel's name contains it (kiln kernels list names them)");
    }
    if a.json {
        for k in &rows {
            println!("{}", row_json(k));
        }
        return Ok(());
    }
    println!(
        "{:<34} {:<7} {:>4} {:>6} {:>5} {:>4} {:>6} {:<10} | main loop: {:>5} {:>6} {:>4}/{:>3}/{:>3} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>9}",
        "kernel",
        "arch",
        "regs",
        "smem",
        "spill",
        "thr",
        "occ",
        "limit",
        "instr",
        "MMAeq",
        "LDG32",
        "64",
        "128",
        "CPAS",
        "TMA",
        "LDS",
        "STS",
        "LDSM",
        "BAR",
        "CVT",
        "nonMMA/MMA"
    );
    for k in &rows {
        let r = &k.resources;
        let o = &k.occupancy;
        let head = format!(
            "{:<34} {:<7} {:>4} {:>6} {:>5} {:>4} {:>5.0}% {:<10}",
            k.name,
            k.arch,
            r.registers,
            r.smem,
            r.spill_stores + r.spill_loads,
            o.threads,
            o.fraction * 100.0,
            o.limiter
        );
        match &k.main_loop {
            Some((_, m)) => println!(
                "{head} | {:>16} {:>6} {:>4}/{:>3}/{:>3} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>4} {:>9}{}",
                m.total,
                m.mma_equiv,
                m.ldg32,
                m.ldg64,
                m.ldg128,
                m.ldgsts,
                m.utmaldg,
                m.lds,
                m.sts,
                m.ldsm,
                m.bar,
                m.cvt,
                m.non_mma_per_mma().map_or("—".to_string(), |x| format!("{x:.1}")),
                if m.idiv > 0 { format!("  ({} integer divides)", m.idiv) } else { String::new() }
            ),
            None => println!("{head} | (no loop)"),
        }
    }
    eprintln!(
        "occupancy: theoretical, at the launch bounds' block or {} threads, static shared memory only",
        kiln_cuda::prof::DEFAULT_THREADS
    );
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn static_report(_: StaticArgs) -> Result<()> {
    bail!("this kiln was built without CUDA support (feature `cuda`)")
}
