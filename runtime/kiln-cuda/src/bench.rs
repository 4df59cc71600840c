//! Kernel benchmarks (`kiln bench kernels`, and the criterion bench of this crate): each op and
//! GEMM variant at realistic shapes, the median device time over repeats after a warm-up, the
//! L2 cache flushed between repeats, and the work done (FLOPs or bytes) so callers report
//! TFLOP/s or GB/s against the card's peak. In the emulation the times measure the CPU harness
//! and mean nothing about a GPU: rows say so.

use kiln_core::backend::{LinearNeeds, LoraRef};
use kiln_core::{DType, Result, Tensor};

use crate::GemmVariant;
use crate::backend::KernelBackend;

/// One measured case.
#[derive(Clone, Debug)]
pub struct Row {
    pub op: String,
    pub variant: String,
    pub dtype: String,
    pub shape: String,
    pub median_s: f64,
    pub repeats: usize,
    /// Floating-point operations per run (matrix ops).
    pub flops: Option<f64>,
    /// Bytes moved per run (memory-bound ops).
    pub bytes: Option<f64>,
}

/// What to run.
pub struct Plan {
    /// Any of "gemm", "lora", "qgemm", "gemv", "dequant", "elementwise", "embedding".
    pub ops: Vec<String>,
    /// GEMM shapes `(tokens, in, out)`; LoRA uses the same.
    pub shapes: Vec<(usize, usize, usize)>,
    pub ranks: Vec<usize>,
    /// Elements of the memory-bound ops.
    pub elements: usize,
    /// Timed seconds per case (at least 3 repeats).
    pub seconds: f64,
}

impl Plan {
    /// Shapes for a GPU: tokens 4096–16384 × hidden 4096, ranks 16 and 64.
    pub fn gpu(quick: bool) -> Plan {
        let shapes = if quick { vec![(4096, 4096, 4096)] } else { vec![(4096, 4096, 4096), (16384, 4096, 4096)] };
        Plan {
            ops: ["gemm", "lora", "qgemm", "gemv", "dequant", "elementwise", "embedding"].map(String::from).to_vec(),
            shapes,
            ranks: if quick { vec![16] } else { vec![16, 64] },
            elements: 1 << 26,
            seconds: if quick { 0.3 } else { 1.0 },
        }
    }
    /// Small shapes for the CPU emulation (correctness of the bench path, not speed).
    pub fn emulation() -> Plan {
        Plan {
            ops: ["gemm", "lora", "qgemm", "gemv", "dequant", "elementwise", "embedding"].map(String::from).to_vec(),
            shapes: vec![(64, 256, 80)],
            ranks: vec![8],
            elements: 1 << 14,
            seconds: 0.0,
        }
    }
}

/// Normal values × 0.1 from `seed` (the benches' and the profiler's inputs).
pub(crate) fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = kiln_core::rng::Rng::new(seed);
    (0..n).map(|_| r.normal() as f32 * 0.1).collect()
}

fn up(be: &KernelBackend, v: Vec<f32>, dims: &[usize], dtype: DType) -> Result<Tensor> {
    use kiln_core::backend::MemoryOps;
    be.upload(&Tensor::from_vec(v, dims.to_vec())?.to_dtype(dtype)?)
}

/// Median device seconds of `run` (after one warm-up run), and the repeats taken.
fn time(be: &KernelBackend, seconds: f64, run: &mut dyn FnMut() -> Result<()>) -> Result<(f64, usize)> {
    run()?;
    be.exec.synchronize()?;
    let mut t = Vec::new();
    let start = std::time::Instant::now();
    while t.len() < 3 || (start.elapsed().as_secs_f64() < seconds && t.len() < 200) {
        be.exec.flush_l2()?;
        t.push(be.exec.elapsed(run)?);
    }
    t.sort_by(f64::total_cmp);
    Ok((t[t.len() / 2], t.len()))
}

/// A named memory-bound case: bytes moved per element and the run.
type Case<'a> = (&'static str, f64, &'a mut dyn FnMut() -> Result<()>);

/// Runs the plan, handing each row to `on_row` as it is measured. The GEMM rows run every
/// variant the device has; the others run on `be`'s variant, except LoRA and the quantized
/// GEMM, which are measured on v3's tensor cores.
pub fn run(be: &KernelBackend, plan: &Plan, on_row: &mut dyn FnMut(&Row)) -> Result<Vec<Row>> {
    use kiln_core::backend::{ElementwiseOps, EmbeddingOps, MatmulOps, MemoryOps};
    let mut rows = Vec::new();
    let mut push = |r: Row, rows: &mut Vec<Row>| {
        on_row(&r);
        rows.push(r);
    };
    for op in &plan.ops {
        match op.as_str() {
            "gemm" => {
                for &(m, k, n) in &plan.shapes {
                    let x = up(be, randn(m * k, 1), &[m, k], DType::F32)?;
                    for dtype in [DType::BF16, DType::F32] {
                        let w = up(be, randn(n * k, 2), &[n, k], dtype)?;
                        for v in GemmVariant::ALL {
                            // f32 weights run v2 under every tensor-core variant; v5 only where
                            // it is itself (else the row would time v4 again).
                            if v.runs_for(dtype) != v || !be.runs(v) {
                                continue;
                            }
                            let bv = be.with_gemm(v);
                            let (s, reps) =
                                time(bv, plan.seconds, &mut || bv.linear_fwd(&x, &w, None, None).map(drop))?;
                            let row = Row {
                                op: "gemm x·Wᵀ".into(),
                                variant: v.full_name().into(),
                                dtype: format!("x f32, W {}", dtype.name()),
                                shape: format!("{m}x{k}x{n}"),
                                median_s: s,
                                repeats: reps,
                                flops: Some(2.0 * (m * k * n) as f64),
                                bytes: None,
                            };
                            push(row, &mut rows);
                        }
                    }
                }
            }
            "lora" => {
                // The backend's variant (the one training runs).
                let v = be.gemm();
                let be = be.with_gemm(v);
                for &(m, k, n) in &plan.shapes {
                    let x = up(be, randn(m * k, 3), &[m, k], DType::F32)?;
                    let w = up(be, randn(n * k, 4), &[n, k], DType::BF16)?;
                    let dy = up(be, randn(m * n, 5), &[m, n], DType::F32)?;
                    let gemm_flops = 2.0 * (m * k * n) as f64;
                    let shape = format!("{m}x{k}x{n}");
                    let plain_fwd = time(be, plan.seconds, &mut || be.linear_fwd(&x, &w, None, None).map(drop))?;
                    let needs = LinearNeeds { x: true, ..Default::default() };
                    let plain_fb = time(be, plan.seconds, &mut || {
                        be.linear_fwd(&x, &w, None, None)?;
                        be.linear_bwd(&dy, &x, &w, None, needs).map(drop)
                    })?;
                    for (name, (s, reps), f) in
                        [("plain fwd", plain_fwd, gemm_flops), ("plain fwd+bwd(dx)", plain_fb, 2.0 * gemm_flops)]
                    {
                        let row = Row {
                            op: format!("lora baseline: {name}"),
                            variant: v.full_name().into(),
                            dtype: "x f32, W bf16".into(),
                            shape: shape.clone(),
                            median_s: s,
                            repeats: reps,
                            flops: Some(f),
                            bytes: None,
                        };
                        push(row, &mut rows);
                    }
                    for &r in &plan.ranks {
                        let a = up(be, randn(r * k, 6), &[r, k], DType::F32)?;
                        let b = up(be, randn(n * r, 7), &[n, r], DType::F32)?;
                        let l = || LoraRef { a: &a, b: &b, scale: 2.0 };
                        let fwd = time(be, plan.seconds, &mut || be.linear_fwd(&x, &w, None, Some(l())).map(drop))?;
                        let needs = LinearNeeds { x: true, lora: true, ..Default::default() };
                        let fb = time(be, plan.seconds, &mut || {
                            let (_, u) = be.linear_fwd(&x, &w, None, Some(l()))?;
                            let u = u.ok_or_else(|| kiln_core::Error::Msg("no u".into()))?;
                            be.linear_bwd(&dy, &x, &w, Some((l(), &u)), needs).map(drop)
                        })?;
                        let lora_flops = 2.0 * (m * r * (k + n)) as f64;
                        for (name, (s, reps), base, f) in [
                            ("fused fwd", fwd, plain_fwd.0, gemm_flops + lora_flops),
                            ("fused fwd+bwd (dx, dA, dB)", fb, plain_fb.0, 2.0 * gemm_flops + 3.0 * lora_flops),
                        ] {
                            let row = Row {
                                op: format!("lora r{r}: {name} ({:+.1} % vs plain)", 100.0 * (s / base - 1.0)),
                                variant: format!("{v} + rank-r pre-pass"),
                                dtype: "x f32, W bf16, A/B f32".into(),
                                shape: shape.clone(),
                                median_s: s,
                                repeats: reps,
                                flops: Some(f),
                                bytes: None,
                            };
                            push(row, &mut rows);
                        }
                    }
                }
            }
            "qgemm" => {
                // The QLoRA base: x·Wᵀ with W in its blocks, decoded inside the GEMM, beside the
                // bf16 tensor-core GEMM of the same shape.
                use kiln_core::quant::GgmlType as G;
                let v = be.gemm();
                let be = be.with_gemm(v);
                let how = if matches!(v, GemmVariant::V6 | GemmVariant::V7) {
                    format!("{v} (decoded to bf16 first)")
                } else {
                    format!("{v}_q (decode in the loader, bf16 tensor cores)")
                };
                for &(m, k, n) in &plan.shapes {
                    let x = up(be, randn(m * k, 11), &[m, k], DType::F32)?;
                    let wb = up(be, randn(n * k, 12), &[n, k], DType::BF16)?;
                    let (base, _) = time(be, plan.seconds, &mut || be.linear_fwd(&x, &wb, None, None).map(drop))?;
                    for ty in [G::NF4, G::Q4K, G::Q4_1] {
                        let q = kiln_core::quant::quantize(ty, &randn(n * k, 13))?;
                        let w = be.upload(&Tensor::from_quant_bytes(q, ty, [n, k])?)?;
                        let (s, reps) = time(be, plan.seconds, &mut || be.linear_fwd(&x, &w, None, None).map(drop))?;
                        let row = Row {
                            op: format!("qgemm x·Wᵀ ({:.0} % of the bf16 GEMM's rate)", 100.0 * base / s),
                            variant: how.clone(),
                            dtype: format!("x f32, W {}", ty.name()),
                            shape: format!("{m}x{k}x{n}"),
                            median_s: s,
                            repeats: reps,
                            flops: Some(2.0 * (m * k * n) as f64),
                            bytes: None,
                        };
                        push(row, &mut rows);
                    }
                }
            }
            "gemv" => {
                // A decode step: one row against each weight, read once (GB/s of the weight,
                // x and y against the measured copy bandwidth).
                use kiln_core::quant::GgmlType as G;
                let (_, k, n) = plan.shapes[0];
                let x = up(be, randn(k, 15), &[1, k], DType::F32)?;
                let wf = randn(n * k, 16);
                let mut ws: Vec<(String, Tensor)> = vec![("bf16".into(), up(be, wf.clone(), &[n, k], DType::BF16)?)];
                for ty in [G::Q4K, G::NF4, G::Q8_0] {
                    let q = Tensor::from_quant_bytes(kiln_core::quant::quantize(ty, &wf)?, ty, [n, k])?;
                    ws.push((ty.name().into(), be.upload(&q)?));
                }
                for (name, w) in ws {
                    let (s, reps) = time(be, plan.seconds, &mut || be.linear_fwd(&x, &w, None, None).map(drop))?;
                    let row = Row {
                        op: format!("gemv 1x{k}x{n} W {name} (decode)"),
                        variant: "gemv (warp per output, weight read once)".into(),
                        dtype: format!("x f32, W {name}"),
                        shape: format!("1x{k}x{n}"),
                        median_s: s,
                        repeats: reps,
                        flops: None,
                        bytes: Some((w.dtype().bytes(n * k) + 4 * (k + n)) as f64),
                    };
                    push(row, &mut rows);
                }
            }
            "dequant" => {
                use kiln_core::quant::GgmlType as G;
                let n = (plan.elements * 4).div_ceil(256) * 256;
                for ty in [G::NF4, G::Q4K, G::Q4_1, G::Q8_0, G::Q6K] {
                    let q = kiln_core::quant::quantize(ty, &randn(n, 14))?;
                    let qbytes = q.len();
                    let w = be.upload(&Tensor::from_quant_bytes(q, ty, [n])?)?;
                    let (s, reps) = time(be, plan.seconds, &mut || be.cast(&w, DType::F32).map(drop))?;
                    let row = Row {
                        op: format!("dequant {}", ty.name()),
                        variant: "16-byte loads of tiles, thread per value".into(),
                        dtype: format!("{} → f32", ty.name()),
                        shape: format!("{n}"),
                        median_s: s,
                        repeats: reps,
                        flops: None,
                        bytes: Some((qbytes + 4 * n) as f64),
                    };
                    push(row, &mut rows);
                }
            }
            "elementwise" => {
                let n = plan.elements;
                let a = up(be, randn(n, 8), &[n], DType::F32)?;
                let b = up(be, randn(n, 9), &[n], DType::F32)?;
                let cases: [Case<'_>; 3] = [
                    ("add f32", 12.0, &mut || be.add(&a, &b).map(drop)),
                    ("cast f32→bf16", 6.0, &mut || be.cast(&a, DType::BF16).map(drop)),
                    ("sum_squares f32", 4.0, &mut || be.sum_squares(&a).map(drop)),
                ];
                for (name, per, f) in cases {
                    let (s, reps) = time(be, plan.seconds, f)?;
                    let row = Row {
                        op: name.into(),
                        variant: "grid-stride".into(),
                        dtype: "f32".into(),
                        shape: format!("{n}"),
                        median_s: s,
                        repeats: reps,
                        flops: None,
                        bytes: Some(per * n as f64),
                    };
                    push(row, &mut rows);
                }
            }
            "embedding" => {
                let (vocab, h) = (32_000.min(plan.elements / 64).max(64), 4096.min(plan.elements / 256).max(64));
                let rows_n = (plan.elements / h).max(1);
                let w = up(be, randn(vocab * h, 10), &[vocab, h], DType::BF16)?;
                let ids: Vec<i32> = (0..rows_n).map(|i| (i * 7919 % vocab) as i32).collect();
                let ids = be.upload(&Tensor::from_vec(ids, [rows_n])?)?;
                let (s, reps) = time(be, plan.seconds, &mut || be.embedding_fwd(&w, &ids).map(drop))?;
                let row = Row {
                    op: "embedding fwd".into(),
                    variant: "row gather".into(),
                    dtype: "table bf16 → f32".into(),
                    shape: format!("{rows_n} ids × {h} of {vocab}"),
                    median_s: s,
                    repeats: reps,
                    flops: None,
                    bytes: Some((rows_n * h * 6) as f64),
                };
                push(row, &mut rows);
            }
            other => {
                return Err(kiln_core::Error::Msg(format!(
                    "--op {other}: one of gemm, lora, qgemm, dequant, elementwise, embedding"
                )));
            }
        }
    }
    Ok(rows)
}

/// Dense bf16 tensor-core TFLOP/s (f32 accumulate) from NVIDIA's datasheets, by device name.
pub fn datasheet_bf16_tflops(name: &str) -> Option<f64> {
    let n = name.to_ascii_lowercase();
    let table: [(&str, f64); 14] = [
        ("h200", 989.0),
        ("h100 pcie", 756.0),
        ("h100 nvl", 835.0),
        ("h100", 989.0),
        ("gh200", 989.0),
        ("a100", 312.0),
        ("l40s", 362.0),
        ("l4", 121.0),
        ("a10", 125.0),
        ("rtx 4090", 165.0),
        ("rtx 3090", 71.0),
        ("rtx 5090", 209.0),
        ("t4", 65.0),
        ("b200", 2250.0),
    ];
    table.iter().find(|(k, _)| n.contains(k)).map(|&(_, v)| v)
}
