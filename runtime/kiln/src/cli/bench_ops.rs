//! `kiln bench ops`: the memory-bound and attention ops through the backend trait, so the same
//! bench runs on every backend (cpu, wgpu, cuda, cuda-emu): causal grouped-query attention
//! forward and forward+backward (TFLOP/s), dequantization of each block type (GB/s of bytes
//! read + written), RMSNorm and cross-entropy (GB/s), beside a device-to-device copy measured the
//! same way (the bandwidth the memory-bound rates are a fraction of).

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use kiln::core::backend::AttnArgs;
use kiln::core::quant::GgmlType;
use kiln::core::rng::Rng;
use kiln::core::{Backend, DType, Tensor};
use serde_json::{Value, json};

#[derive(Args, Debug)]
pub struct OpsArgs {
    /// cpu, wgpu, cuda or cuda-emu.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Ops to run: attention, dequant, norm, ce, copy [default: all].
    #[arg(long, value_delimiter = ',')]
    op: Vec<String>,
    /// Attention sequence lengths (batch 1, causal) [default: 1024,4096].
    #[arg(long, value_delimiter = ',')]
    seq: Vec<usize>,
    /// Attention heads as HQ:HKV:D [default: 16:4:128, a 1B-class model's].
    #[arg(long, default_value = "16:4:128")]
    heads: String,
    /// Values per dequantized tensor [default: 4096×4096].
    #[arg(long, default_value_t = 4096 * 4096)]
    values: usize,
    /// Small shapes (a check that every op runs, e.g. on lavapipe or the CUDA emulation).
    #[arg(long)]
    quick: bool,
    /// Seconds of timed repeats per row (after one warm-up; at least 3 repeats).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

/// Median seconds of `f` on `be`: GPU timestamps on wgpu where the adapter has them, else the
/// host clock around `f` and a read-back of one element of what it returns (which waits for
/// the device). Also returns the timing source and the repeats.
pub(super) fn time_repeats(
    be: &dyn Backend,
    seconds: f64,
    f: &dyn Fn() -> Result<Tensor>,
) -> Result<(f64, &'static str, usize)> {
    let run = || -> Result<()> {
        let t = f()?;
        if t.numel() > 0 {
            t.reshape([t.numel()])?.narrow0(0, 1)?.to_cpu()?;
        }
        Ok(())
    };
    run()?;
    let (mut times, mut source) = (Vec::new(), "host clock");
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed().as_secs_f64() < seconds && times.len() < 1000) {
        let t = Instant::now();
        let (r, gpu) = if be.name() == "wgpu" { kiln_wgpu::gpu_time(run) } else { (run(), None) };
        r?;
        if gpu.is_some() {
            source = "gpu timestamps";
        }
        times.push(gpu.unwrap_or_else(|| t.elapsed().as_secs_f64()));
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], source, times.len()))
}

fn time(be: &dyn Backend, seconds: f64, f: &dyn Fn() -> Result<Tensor>) -> Result<(f64, &'static str)> {
    time_repeats(be, seconds, f).map(|(s, source, _)| (s, source))
}

fn randn(rng: &mut Rng, dims: &[usize]) -> Result<Tensor> {
    let n = dims.iter().product();
    Ok(Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), dims.to_vec())?)
}

pub fn run(a: OpsArgs, be: &'static dyn Backend) -> Result<()> {
    let want = |op: &str| a.op.is_empty() || a.op.iter().any(|o| o == op);
    let mut rows: Vec<Value> = Vec::new();
    let mut rng = Rng::new(0);
    let emit = |row: Value, rows: &mut Vec<Value>| {
        if !a.json {
            let rate = row["tflops"]
                .as_f64()
                .map(|t| format!("{t:.3} TFLOP/s"))
                .or_else(|| row["gbps"].as_f64().map(|g| format!("{g:.1} GB/s")))
                .unwrap_or_default();
            let frac = row["pct_of_copy"].as_f64().map(|p| format!(" ({p:.0} % of copy)")).unwrap_or_default();
            eprintln!(
                "{} {} {} on {}: {:.3} ms, {rate}{frac}",
                row["op"].as_str().unwrap_or(""),
                row["variant"].as_str().unwrap_or(""),
                row["shape"].as_str().unwrap_or(""),
                be.name(),
                row["median_s"].as_f64().unwrap_or(0.0) * 1e3
            );
        }
        rows.push(row);
    };
    let values = if a.quick { 256 * 64 } else { a.values };
    // The copy every memory-bound rate is compared with: f32 → f32, bytes read + written.
    let x = be.upload(&randn(&mut rng, &[values])?)?;
    let (copy_s, source) = time(be, a.seconds, &|| Ok(be.cast(&x, DType::F32)?))?;
    let copy_gbps = 8.0 * values as f64 / copy_s / 1e9;
    if want("copy") || want("dequant") || want("norm") || want("ce") {
        let row = json!({"op": "copy", "variant": "cast f32→f32", "backend": be.name(), "dtype": "f32",
            "shape": format!("{values}"), "median_s": copy_s, "gbps": copy_gbps, "timing": source});
        emit(row, &mut rows);
    }
    let mb = |bytes: f64, s: f64| bytes / s / 1e9;
    if want("dequant") {
        let xs = x.to_cpu()?.to_vec_f32()?;
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q4K, GgmlType::Q6K, GgmlType::NF4] {
            let n = values / 256 * 256;
            let q = kiln::core::quant::quantize(ty, &xs[..n])?;
            let qbytes = q.len() as f64;
            let t = be.upload(&Tensor::from_quant_bytes(q, ty, [n])?)?;
            for to in [DType::F32, DType::BF16] {
                let (s, source) = time(be, a.seconds, &|| Ok(be.cast(&t, to)?))?;
                let g = mb(qbytes + (n * to.bytes(1)) as f64, s);
                let row = json!({"op": "dequant", "variant": format!("{} → {}", ty.name(), to.name()),
                    "backend": be.name(), "dtype": ty.name(), "shape": format!("{n}"), "median_s": s, "gbps": g,
                    "pct_of_copy": 100.0 * g / copy_gbps, "timing": source});
                emit(row, &mut rows);
            }
        }
    }
    if want("norm") {
        let (r, h) = if a.quick { (64, 576) } else { (8192, 2048) };
        let (xn, w) = (be.upload(&randn(&mut rng, &[r, h])?)?, be.upload(&randn(&mut rng, &[h])?)?);
        let (s, source) = time(be, a.seconds, &|| Ok(be.rms_norm_fwd(&xn, &w, 1e-5)?.0))?;
        let g = mb(8.0 * (r * h) as f64, s);
        let row = json!({"op": "rms_norm", "variant": "fwd", "backend": be.name(), "dtype": "f32",
            "shape": format!("{r}x{h}"), "median_s": s, "gbps": g, "pct_of_copy": 100.0 * g / copy_gbps, "timing": source});
        emit(row, &mut rows);
    }
    if want("ce") {
        let (r, v) = if a.quick { (16, 4096) } else { (512, 49152) };
        let logits = be.upload(&randn(&mut rng, &[r, v])?)?;
        let targets = Tensor::from_vec((0..r).map(|i| (i * 7919 % v) as i32).collect::<Vec<_>>(), [r])?;
        let (s, source) = time(be, a.seconds, &|| Ok(be.cross_entropy_fwd(&logits, &targets)?.lse))?;
        let g = mb(4.0 * (r * v) as f64, s);
        let row = json!({"op": "cross_entropy", "variant": "fwd", "backend": be.name(), "dtype": "f32",
            "shape": format!("{r}x{v}"), "median_s": s, "gbps": g, "pct_of_copy": 100.0 * g / copy_gbps, "timing": source});
        emit(row, &mut rows);
    }
    if want("attention") {
        let hs: Vec<usize> = a.heads.split(':').map(str::parse).collect::<Result<_, _>>()?;
        let [hq, hkv, d] = hs[..] else { anyhow::bail!("--heads {}: HQ:HKV:D", a.heads) };
        let seqs = if a.quick {
            vec![64]
        } else if a.seq.is_empty() {
            vec![1024, 4096]
        } else {
            a.seq.clone()
        };
        for t in seqs {
            let q = be.upload(&randn(&mut rng, &[1, t, hq, d])?)?;
            let k = be.upload(&randn(&mut rng, &[1, t, hkv, d])?)?;
            let v = be.upload(&randn(&mut rng, &[1, t, hkv, d])?)?;
            let d_o = be.upload(&randn(&mut rng, &[1, t, hq, d])?)?;
            let args = AttnArgs::causal(&q, &k, &v);
            // Causal: half of the 2·T²·D multiply-adds of QKᵀ and of PV per head.
            let fwd_flops = 2.0 * (hq * t * t * d) as f64;
            let (sf, source) = time(be, a.seconds, &|| Ok(be.attention_fwd(&args)?.0))?;
            let (o, lse) = be.attention_fwd(&args)?;
            let (sb, _) = time(be, a.seconds, &|| Ok(be.attention_bwd(&args, &o, &lse, &d_o)?.0))?;
            let shape = format!("b1 t{t} hq{hq} hkv{hkv} d{d} causal");
            for (variant, s, flops) in [("fwd", sf, fwd_flops), ("fwd+bwd", sf + sb, 3.5 * fwd_flops)] {
                let row = json!({"op": "attention", "variant": variant, "backend": be.name(), "dtype": "f32",
                    "shape": shape, "median_s": s, "tflops": flops / s / 1e12, "timing": source,
                    "flops_convention": "causal half of 4·T²·D per head forward; backward 2.5× forward"});
                emit(row, &mut rows);
            }
        }
    }
    if a.backend == "cuda-emu" {
        for r in &mut rows {
            r["timing"] = json!("host clock: the CUDA emulation on the CPU, meaningless for speed");
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
