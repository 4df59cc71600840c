//! `kiln prof run`: one op at a shape on the CUDA emulation with the profiler on
//! (kiln_cuda::prof::dynamic), each launch's counts, and the roofline model's time on a card
//! (kiln_cuda::prof::model) with the static profile of the kernels for the card's architecture.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// gemm, qgemm, lora, lora_bwd, gemv, attention, attention_bwd, rms_norm, cross_entropy,
    /// lm_head_ce, adamw, add, embedding.
    #[arg(long)]
    op: String,
    /// Sizes joined by 'x' (gemm: MxKxN; attention: BxTxHxD; `--op` errors say which).
    #[arg(long)]
    shape: String,
    /// GEMM variant (v1 … v6) [default: the backend's, v6].
    #[arg(long)]
    variant: Option<String>,
    /// Weight dtype: bf16, f16, f32, or a block type (q4_k, nf4, q4_1, q8_0, …) for
    /// qgemm/gemv/lm_head_ce.
    #[arg(long)]
    dtype: Option<String>,
    /// The activations' type (gemm, qgemm, lora, lora_bwd, attention, rms_norm, add): f32, or
    /// bf16/f16 as the mixed-precision path carries them between kernels.
    #[arg(long, default_value = "f32")]
    act: String,
    /// The card to model: h100, h200, a100, rtx4090, rtx3090, rtx4060ti.
    #[arg(long, default_value = "h100")]
    card: String,
    /// Run at most this many CTAs of each launch (the first in launch order) and scale the
    /// counts; 0 runs them all [default: two waves at one CTA per SM].
    #[arg(long)]
    max_ctas: Option<u64>,
    /// Skip the static profile (ptxas/nvdisasm): no issue time, one CTA per SM assumed.
    #[arg(long)]
    no_static: bool,
    /// Directory holding cuda_fp16.h (else KILN_CUDA_INCLUDE, $CUDA_HOME/include).
    #[arg(long)]
    cuda_include: Option<PathBuf>,
    /// One JSON object per launch, then one for the op (stdout), nothing else.
    #[arg(long)]
    json: bool,
}

#[cfg(not(feature = "cuda-emu"))]
pub fn run(_: RunArgs) -> Result<()> {
    bail!("this kiln was built without the CUDA emulation (feature `cuda-emu`)")
}

#[cfg(feature = "cuda-emu")]
pub fn parse_dtype(s: &str) -> Result<kiln_core::DType> {
    use kiln_core::DType;
    use kiln_core::quant::GgmlType as G;
    Ok(match s.to_ascii_lowercase().as_str() {
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        "f32" => DType::F32,
        other => {
            let all = [G::Q4_0, G::Q4_1, G::Q5_0, G::Q8_0, G::Q4K, G::Q5K, G::Q6K, G::NF4];
            match all.iter().find(|t| t.name().eq_ignore_ascii_case(other)) {
                Some(&t) => DType::Quant(t),
                None => bail!("--dtype {s}: bf16, f16, f32 or one of {}", all.map(|t| t.name()).join(", ")),
            }
        }
    })
}

#[cfg(feature = "cuda-emu")]
pub fn run(a: RunArgs) -> Result<()> {
    use kiln_cuda::prof::{dynamic::ProfileOpts, model, ops};
    let card = model::card(&a.card).map_err(|e| anyhow::anyhow!("{e}"))?;
    let shape = ops::parse_shape(&a.shape, ops::arity(&a.op).map_err(|e| anyhow::anyhow!("{e}"))?, &a.op)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let default_dtype = if a.op == "qgemm" { "q4_k" } else { "bf16" };
    let dtype = parse_dtype(a.dtype.as_deref().unwrap_or(default_dtype))?;
    if a.op == "qgemm" && !matches!(dtype, kiln_core::DType::Quant(_)) {
        bail!("--op qgemm: --dtype names a block type (q4_k, nf4, …), not {}", dtype.name());
    }
    let act = match parse_dtype(&a.act)? {
        d @ (kiln_core::DType::F32 | kiln_core::DType::BF16 | kiln_core::DType::F16) => d,
        d => bail!("--act {}: f32, bf16 or f16", d.name()),
    };
    let base = kiln_cuda::backend::emu();
    let be = match &a.variant {
        Some(v) => base.with_gemm(v.parse().map_err(|e| anyhow::anyhow!("--variant: {e}"))?),
        None => base,
    };
    let opts = ProfileOpts { max_ctas: a.max_ctas.unwrap_or(2 * card.sms as u64), wave: card.sms as u64 };
    be.exec.set_profile(Some(opts));
    let t0 = std::time::Instant::now();
    let ran = ops::run(be, &a.op, &shape, dtype, act);
    let session = be.exec.take_profile();
    be.exec.set_profile(None);
    ran.map_err(|e| anyhow::anyhow!("{} {}: {e}", a.op, a.shape))?;
    let emu_s = t0.elapsed().as_secs_f64();
    let mut names: Vec<String> = session.launches.iter().map(|l| l.kernel.clone()).collect();
    names.sort();
    names.dedup();
    let (statics, static_note) = statics(&a, &names, card.arch);
    let (flops, bytes) = ops::work(&a.op, &shape, dtype, act);
    let mut total = 0.0;
    let mut rows = Vec::new();
    for l in &session.launches {
        let st = statics.iter().find(|s| s.name == l.kernel);
        let p = model::predict(card, l, st);
        total += p.time_s;
        rows.push((l, p));
    }
    if a.json {
        for (l, p) in &rows {
            println!("{}", launch_json(l, p, card));
        }
        println!(
            "{}",
            serde_json::json!({"op": a.op, "shape": a.shape, "dtype": dtype.name(), "act": act.name(), "card": card.key,
                "model_version": model::MODEL_VERSION, "launches": rows.len(), "uploads": session.uploads,
                "downloads": session.downloads, "modeled_s": total, "useful_flops": flops, "min_bytes": bytes,
                "tensor_fraction": flops / total / (card.tensor_tflops * 1e12),
                "dram_fraction": bytes / total / (card.dram_gbs * 1e9), "static": static_note})
        );
        return Ok(());
    }
    println!(
        "{} {} ({}, {} activations) on the emulation, modeled on {} (model v{}; {} SMs, {:.0} TFLOP/s wgmma / {:.0} mma.sync, {:.0} GB/s)",
        a.op,
        a.shape,
        dtype.name(),
        act.name(),
        card.name,
        model::MODEL_VERSION,
        card.sms,
        card.tensor_tflops,
        card.mma_sync_tflops,
        card.dram_gbs
    );
    println!(
        "{:<28} {:>14} {:>5} {:>9} | {:>5} {:>5} {:>6} {:>6} {:>9} {:>9} {:>5} | {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:<13}",
        "kernel",
        "grid",
        "thr",
        "CTAs run",
        "ld%",
        "st%",
        "ldWF",
        "stWF",
        "TC GFLOP",
        "DRAM MB",
        "bar",
        "CTA",
        "tensor µs",
        "issue µs",
        "DRAM µs",
        "smem µs",
        "time µs",
        "bound"
    );
    for (l, p) in &rows {
        let pct = |x: Option<f64>| x.map_or("—".into(), |v| format!("{:.0}", 100.0 * v));
        let wf = |x: Option<f64>| x.map_or("—".into(), |v| format!("{v:.2}"));
        let us = |s: f64| format!("{:.1}", s * 1e6);
        println!(
            "{:<28} {:>14} {:>5} {:>9} | {:>5} {:>5} {:>6} {:>6} {:>9.3} {:>9} {:>5} | {:>3} {:>9} {:>9} {:>9} {:>9} {:>9} {:<13}",
            l.kernel,
            format!("{}x{}x{}", l.grid[0], l.grid[1], l.grid[2]),
            l.block.iter().product::<u32>(),
            if l.sampled() { format!("{}/{}", l.raw.ctas_run, l.raw.ctas_total) } else { l.raw.ctas_run.to_string() },
            pct(l.load_efficiency()),
            pct(l.store_efficiency()),
            wf(l.shared_load_wavefronts_per_request()),
            wf(l.shared_store_wavefronts_per_request()),
            p.flops / 1e9,
            format!("{}{:.2}", if p.dram_upper_bound { "≤" } else { "" }, p.dram_bytes / 1e6),
            (l.total(l.raw.barriers) / l.raw.ctas_total.max(1) as f64).round(),
            p.ctas_per_sm,
            us(p.tensor_s),
            p.issue_s.map_or("—".into(), us),
            us(p.dram_s),
            us(p.smem_s),
            us(p.time_s),
            p.bound
        );
    }
    println!(
        "modeled {:.1} µs over {} launches: {:.1} % of the tensor peak ({:.2} GFLOP useful), {:.1} % of DRAM bandwidth ({:.1} MB the op must move); {} uploads, {} downloads (host syncs)",
        total * 1e6,
        rows.len(),
        100.0 * flops / total / (card.tensor_tflops * 1e12),
        flops / 1e9,
        100.0 * bytes / total / (card.dram_gbs * 1e9),
        bytes / 1e6,
        session.uploads,
        session.downloads
    );
    eprintln!(
        "ld%/st%: global bytes used of the 32-byte sectors moved; ldWF/stWF: shared-memory wavefronts per request (ideal 1 \
         for 4-byte, 2 for 8-byte, 4 for 16-byte and ldmatrix.x4); bar: barriers per CTA; CTA: resident CTAs per SM on \
         the card; {static_note}; emulation {emu_s:.1} s{}",
        if rows.iter().any(|(l, _)| l.sampled()) {
            "; sampled launches ran their first CTAs, counts scaled"
        } else {
            ""
        }
    );
    if rows.iter().any(|(_, p)| p.dram_upper_bound) {
        eprintln!(
            "≤ DRAM: the sample held less than one wave at the kernel's occupancy, so no reuse beyond it is assumed (an \
             upper bound; --max-ctas raises the sample)"
        );
    }
    Ok(())
}

/// The static profiles of `names` on `arch`, and a note saying where the issue time came from.
#[cfg(feature = "cuda-emu")]
fn statics(a: &RunArgs, names: &[String], arch: &str) -> (Vec<kiln_cuda::prof::KernelStatic>, String) {
    if a.no_static {
        return (Vec::new(), "no static profile (--no-static): issue time omitted, one CTA per SM".into());
    }
    #[cfg(feature = "cuda")]
    match super::prof::static_of(names, arch, a.cuda_include.clone()) {
        Ok(s) => (s, format!("static profile: NVRTC + ptxas + nvdisasm for {arch}")),
        Err(e) => (Vec::new(), format!("no static profile ({e}): issue time omitted, one CTA per SM")),
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (names, arch);
        (Vec::new(), "no static profile (built without `cuda`): issue time omitted, one CTA per SM".into())
    }
}

#[cfg(feature = "cuda-emu")]
fn launch_json(
    l: &kiln_cuda::prof::dynamic::LaunchProfile,
    p: &kiln_cuda::prof::model::Prediction,
    c: &kiln_cuda::prof::model::Card,
) -> serde_json::Value {
    let r = &l.raw;
    serde_json::json!({"kernel": l.kernel, "grid": l.grid, "block": l.block, "dyn_smem": l.dyn_smem,
        "ctas_run": r.ctas_run, "ctas_total": r.ctas_total, "scale": l.scale(),
        "gld_requests": l.total(r.gld_req), "gld_bytes": l.total(r.gld_bytes), "gld_sectors": l.total(r.gld_sectors),
        "gld_width_1_2_4_8_16": r.gld_width, "gst_requests": l.total(r.gst_req), "gst_sectors": l.total(r.gst_sectors),
        "cpasync_requests": l.total(r.cpasync_req), "atomics": l.total(r.gatom_req),
        "load_efficiency": l.load_efficiency(), "store_efficiency": l.store_efficiency(),
        "lds_requests": l.total(r.lds_req), "lds_wavefronts": l.total(r.lds_wavefronts),
        "sts_requests": l.total(r.sts_req), "sts_wavefronts": l.total(r.sts_wavefronts),
        "ldsm_requests": l.total(r.ldsm_req), "ldsm_wavefronts": l.total(r.ldsm_wavefronts),
        "mma_sync": l.total(r.mma_warp), "wgmma": l.total(r.wgmma_group) / 16.0, "barriers": l.total(r.barriers),
        "dram_bytes": p.dram_bytes, "dram_upper_bound": p.dram_upper_bound, "ctas_per_sm": p.ctas_per_sm, "waves": p.waves, "tensor_s": p.tensor_s,
        "issue_s": p.issue_s, "instructions": p.instructions, "dram_s": p.dram_s, "smem_s": p.smem_s,
        "time_s": p.time_s, "bound": p.bound, "tensor_fraction": p.tensor_fraction(c), "dram_fraction": p.dram_fraction(c)})
}
