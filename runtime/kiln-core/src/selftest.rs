//! The op parity suite (the ggml test-backend-ops idea): every op's forward and backward
//! kernels on a backend against the CPU reference computed in f64, on fresh random inputs at
//! several shapes including ragged ones. Tolerances (DESIGN): ‖out−ref‖/‖ref‖ ≤ 1e-5 for f32 and
//! ≤ 1e-2 for bf16/f16 inputs, plus |out−ref| ≤ atol + |ref|·eps elementwise; NaN never passes.
//! A case a backend does not support is reported as skipped with the reason, never as passed.
//!
//! The same table runs in `cargo test` (each backend's parity test) and in `kiln selftest`.

use crate::backend::{AttnArgs, Backend, LinearNeeds, LoraRef, Op, Support};
use crate::rng::Rng;
use crate::{CpuBackend, DType, Tensor};

struct Tol {
    rel: f64,
    atol: f64,
    eps: f64,
}

fn tol(dtype: DType) -> Tol {
    match dtype {
        DType::F32 => Tol { rel: 1e-5, atol: 1e-5, eps: 1e-5 },
        DType::BF16 => Tol { rel: 1e-2, atol: 1e-2, eps: 0.08 },
        // Block-quantized inputs dequantize exactly: what is compared is f32 arithmetic.
        DType::Quant(_) => Tol { rel: 1e-5, atol: 1e-5, eps: 1e-5 },
        _ => Tol { rel: 1e-2, atol: 1e-3, eps: 0.01 },
    }
}

fn compare(what: &str, got: &Tensor, want: &Tensor, t: &Tol) -> Result<(), String> {
    if got.dims() != want.dims() {
        return Err(format!("{what}: shape {:?} vs {:?}", got.dims(), want.dims()));
    }
    let (g, w) = (got.to_vec_f64().map_err(|e| e.to_string())?, want.to_vec_f64().map_err(|e| e.to_string())?);
    let scale = w.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    // In 16-bit arithmetic an output that cancels to (near) zero keeps the rounding of its
    // order-one terms (attention's dq when P = 1: dP − δ is v's bf16 rounding), so the bound
    // never shrinks below the atol of a unit scale, as in PyTorch's bf16 testing defaults.
    let scale = if t.atol >= 1e-3 { scale.max(1.0) } else { scale };
    let (mut num, mut den) = (0.0, 0.0);
    for (i, (&x, &y)) in g.iter().zip(&w).enumerate() {
        if !x.is_finite() {
            return Err(format!("{what}: non-finite output at {i}"));
        }
        // atol is relative to the output's scale so the bound means the same at any magnitude.
        let bound = t.atol * scale + y.abs() * t.eps;
        if (x - y).abs() > bound {
            return Err(format!("{what}: element {i}: {x} vs {y} (bound {bound:e})"));
        }
        num += (x - y).powi(2);
        den += y * y;
    }
    // Outputs are order-one quantities (activations, log-sum-exps, decoded weights, updates): an
    // RMS below 0.1 is measured against 0.1, since an f32 result near zero by cancellation (a
    // log-sum-exp of 0.01 from terms of 1) carries the error of its terms, not of itself. The
    // elementwise bound above still applies at the output's own scale. In 16-bit arithmetic the
    // floor is a unit RMS, as for the elementwise bound.
    let floor = if t.atol >= 1e-3 { 1.0 } else { 0.01 };
    let rel = (num / den.max(floor * g.len() as f64).max(1e-300)).sqrt();
    if rel > t.rel {
        return Err(format!("{what}: relative error {rel:e} > {:e}", t.rel));
    }
    Ok(())
}

fn randn(rng: &mut Rng, dims: &[usize], dtype: DType) -> Tensor {
    let n = dims.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
    Tensor::from_vec(v, dims.to_vec()).unwrap().to_dtype(dtype).unwrap()
}

fn i32s(v: Vec<i32>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims.to_vec()).unwrap()
}

/// The f64 reference of the same values (inputs already rounded to the tested dtype).
fn f64_of(t: &Tensor) -> Tensor {
    if t.dtype() == DType::I32 { t.clone() } else { t.to_dtype(DType::F64).unwrap_or_else(|_| t.clone()) }
}

/// Runs a case's ops on a backend; an error is a failure of that backend.
type Run = fn(&dyn Backend, &[Tensor]) -> crate::Result<Vec<Tensor>>;

/// One row of the table: an op at a shape and dtype, its inputs, and what to run.
pub struct Case {
    /// The op (for `Backend::supports`).
    pub op: Op,
    /// Shown in reports.
    pub name: String,
    /// dtype of the inputs under test (weights for the linear ops).
    dtype: DType,
    inputs: Vec<Tensor>,
    run: Run,
}

/// The table on fresh random inputs from `seed`.
pub fn cases(seed: u64) -> Vec<Case> {
    let mut r = Rng::new(seed);
    let mut out = Vec::new();
    for &(m, k, n, rank) in &[(1, 1, 1, 1), (7, 13, 11, 3), (33, 70, 65, 8), (130, 96, 257, 4)] {
        for wd in [DType::F32, DType::BF16, DType::F16] {
            let inputs = vec![
                randn(&mut r, &[m, k], DType::F32),
                randn(&mut r, &[n, k], wd),
                randn(&mut r, &[n], DType::F32),
                randn(&mut r, &[rank, k], DType::F32),
                randn(&mut r, &[n, rank], DType::F32),
                randn(&mut r, &[m, n], DType::F32),
            ];
            out.push(Case {
                op: Op::Linear,
                name: format!("lora_linear {m}x{k}x{n} r{rank} W {}", wd.name()),
                dtype: wd,
                inputs,
                run: |be, x| {
                    let l = || LoraRef { a: &x[3], b: &x[4], scale: 0.7 };
                    let (y, u) = be.linear_fwd(&x[0], &x[1], Some(&x[2]), Some(l()))?;
                    let u = u.ok_or_else(|| crate::Error::Msg("linear_fwd returned no u".into()))?;
                    let needs = LinearNeeds { x: true, w: true, bias: true, lora: true };
                    let g = be.linear_bwd(&x[5], &x[0], &x[1], Some((l(), &u)), needs)?;
                    let got = [g.dx, g.dw, g.dbias, g.da, g.db];
                    let mut out = vec![y];
                    for t in got {
                        out.push(t.ok_or_else(|| crate::Error::Msg("linear_bwd left out a gradient".into()))?);
                    }
                    Ok(out)
                },
            });
        }
    }
    // (h = 1 would make RMSNorm's dx identically zero: pure cancellation, nothing to compare.)
    for &(rows, h) in &[(1, 2), (5, 19), (64, 576), (3, 1031)] {
        let inputs = vec![
            randn(&mut r, &[rows, h], DType::F32),
            randn(&mut r, &[h], DType::F32),
            randn(&mut r, &[rows, h], DType::F32),
        ];
        out.push(Case {
            op: Op::RmsNorm,
            name: format!("rms_norm {rows}x{h}"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                let (y, rstd) = be.rms_norm_fwd(&x[0], &x[1], 1e-5)?;
                let (dx, dw) = be.rms_norm_bwd(&x[2], &x[0], &x[1], &rstd)?;
                Ok(vec![y, dx, dw])
            },
        });
        let inputs = vec![
            randn(&mut r, &[rows, h], DType::F32),
            randn(&mut r, &[rows, h], DType::F32),
            randn(&mut r, &[rows, h], DType::F32),
        ];
        out.push(Case {
            op: Op::SwiGlu,
            name: format!("swiglu {rows}x{h}"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                let y = be.swiglu_fwd(&x[0], &x[1])?;
                let (dg, du) = be.swiglu_bwd(&x[0], &x[1], &x[2])?;
                Ok(vec![y, dg, du, be.add(&x[0], &x[1])?, be.scale(&x[0], -1.5)?])
            },
        });
        let inputs = vec![
            randn(&mut r, &[rows, h], DType::F32),
            randn(&mut r, &[rows, h], DType::F32),
            randn(&mut r, &[rows, h], DType::F32),
        ];
        out.push(Case {
            op: Op::GeGlu,
            name: format!("geglu {rows}x{h}"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                let y = be.geglu_fwd(&x[0], &x[1])?;
                let (dg, du) = be.geglu_bwd(&x[0], &x[1], &x[2])?;
                Ok(vec![y, dg, du])
            },
        });
    }
    // QLoRA: block-quantized frozen weights (dequantized exactly, so f32 tolerances apply).
    use crate::quant::GgmlType as G;
    for (i, ty) in
        [G::Q8_0, G::Q4_0, G::Q4_1, G::Q5_0, G::Q4K, G::Q5K, G::Q6K, G::NF4, G::NF4DQ].into_iter().enumerate()
    {
        let (m, k, n) = (5 + i, 256, 3 + 2 * i);
        let wf = randn(&mut r, &[n, k], DType::F32);
        let Ok(wq) = wf
            .to_vec_f32()
            .and_then(|v| crate::quant::quantize(ty, &v))
            .and_then(|b| Tensor::from_quant_bytes(b, ty, [n, k]))
        else {
            continue;
        };
        let inputs = vec![randn(&mut r, &[m, k], DType::F32), wq, randn(&mut r, &[m, n], DType::F32)];
        out.push(Case {
            op: Op::Linear,
            name: format!("linear {m}x{k}x{n} W {} (QLoRA base)", ty.name()),
            dtype: DType::Quant(ty),
            inputs,
            run: |be, x| {
                let (y, _) = be.linear_fwd(&x[0], &x[1], None, None)?;
                let needs = LinearNeeds { x: true, ..Default::default() };
                let g = be.linear_bwd(&x[2], &x[0], &x[1], None, needs)?;
                let dx = g.dx.ok_or_else(|| crate::Error::Msg("linear_bwd left out dx".into()))?;
                Ok(vec![y, dx])
            },
        });
    }
    // Decode steps (one or a few rows against each weight type, with an adapter): the GPU
    // backends' matrix-vector path.
    for (i, wd) in
        [DType::F32, DType::BF16, DType::F16, DType::Quant(G::Q4K), DType::Quant(G::NF4), DType::Quant(G::Q8_0)]
            .into_iter()
            .enumerate()
    {
        let (m, k, n, rank) = (1 + i % 3, 512, 37 + 2 * i, 4);
        let wf = randn(&mut r, &[n, k], DType::F32);
        let w = match wd {
            DType::Quant(ty) => {
                let Ok(q) = wf
                    .to_vec_f32()
                    .and_then(|v| crate::quant::quantize(ty, &v))
                    .and_then(|b| Tensor::from_quant_bytes(b, ty, [n, k]))
                else {
                    continue;
                };
                q
            }
            d => wf.to_dtype(d).unwrap_or(wf),
        };
        let inputs = vec![
            randn(&mut r, &[m, k], DType::F32),
            w,
            randn(&mut r, &[rank, k], DType::F32),
            randn(&mut r, &[n, rank], DType::F32),
        ];
        out.push(Case {
            op: Op::Linear,
            name: format!("linear {m}x{k}x{n} r{rank} W {} (decode)", wd.name()),
            dtype: wd,
            inputs,
            run: |be, x| {
                let (y, u) = be.linear_fwd(&x[0], &x[1], None, Some(LoraRef { a: &x[2], b: &x[3], scale: 0.7 }))?;
                Ok(vec![y, u.ok_or_else(|| crate::Error::Msg("linear_fwd returned no u".into()))?])
            },
        });
    }
    for &(m, k, n) in &[(1, 1, 1), (17, 33, 9), (70, 5, 129)] {
        let inputs = vec![
            randn(&mut r, &[m, k], DType::F32),
            randn(&mut r, &[k, n], DType::F32),
            randn(&mut r, &[k, m], DType::F32),
            randn(&mut r, &[n, k], DType::F32),
        ];
        out.push(Case {
            op: Op::Matmul,
            name: format!("matmul {m}x{k}x{n} (a, aᵀ) × (b, bᵀ)"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                Ok(vec![
                    be.matmul(&x[0], &x[1], false, false)?,
                    be.matmul(&x[2], &x[1], true, false)?,
                    be.matmul(&x[0], &x[3], false, true)?,
                    be.matmul(&x[2], &x[3], true, true)?,
                ])
            },
        });
    }
    for &n in &[1usize, 77, 4099] {
        let inputs = vec![
            randn(&mut r, &[n], DType::F32),
            randn(&mut r, &[n], DType::F32),
            randn(&mut r, &[n], DType::F32),
            // The second moment is never negative.
            randn(&mut r, &[n], DType::F32).map_f32(f32::abs),
        ];
        out.push(Case {
            op: Op::AdamW,
            name: format!("adamw {n} (step 3, weight decay)"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                // AdamW keeps f32 state on every backend: the reference runs in f32 too.
                let f = |t: &Tensor| be.cast(t, DType::F32);
                let (mut p, g, mut m, mut v) = (f(&x[0])?, f(&x[1])?, f(&x[2])?, f(&x[3])?);
                let hp = crate::backend::AdamWStep {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.1,
                    step: 3,
                };
                be.adamw_step(&mut p, &g, &mut m, &mut v, hp)?;
                Ok(vec![p, m, v])
            },
        });
    }
    // A parameter group in one fused step (three tensors, one larger than a chunk), gradients
    // scaled by a clipping factor, and the group's Σg².
    {
        let sizes = [5usize, 16_385 + 7, 300];
        let mut inputs = Vec::new();
        for &n in &sizes {
            for _ in 0..4 {
                inputs.push(randn(&mut r, &[n], DType::F32));
            }
        }
        out.push(Case {
            op: Op::AdamW,
            name: "adamw_multi 3 tensors (clipped 0.7) + sum_squares_multi".into(),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                let f = |t: &Tensor| be.cast(t, DType::F32);
                let mut st: Vec<[Tensor; 4]> = Vec::new();
                for c in x.chunks(4) {
                    // The second moment is never negative.
                    let v = f(&c[3])?;
                    st.push([f(&c[0])?, f(&c[1])?, f(&c[2])?, be.mul(&v, &v)?]);
                }
                let grads: Vec<&Tensor> = st.iter().map(|s| &s[1]).collect();
                let ss = Tensor::from_vec(vec![be.sum_squares_multi(&grads)?], [1])?;
                let hp = crate::backend::AdamWStep {
                    lr: 0.01,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: 0.05,
                    step: 2,
                };
                let mut items: Vec<crate::backend::AdamWItem<'_>> =
                    st.iter_mut().map(|[p, g, m, v]| crate::backend::AdamWItem { param: p, grad: &*g, m, v }).collect();
                be.adamw_multi(&mut items, hp, 0.7)?;
                drop(items);
                let mut out = vec![ss];
                for [p, _, m, v] in st {
                    out.extend([p, m, v]);
                }
                Ok(out)
            },
        });
    }
    for &n in &[1usize, 63, 65, 4099, 70_001] {
        let inputs = vec![randn(&mut r, &[n], DType::F32), randn(&mut r, &[n], DType::F32)];
        out.push(Case {
            op: Op::Add,
            name: format!("add/mul/scale/sum_squares/cast {n}"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                let ss = be.sum_squares(&x[0])?;
                let ss = Tensor::from_vec(vec![ss], [1])?;
                let c = be.cast(&x[1], x[1].dtype())?;
                Ok(vec![be.add(&x[0], &x[1])?, be.mul(&x[0], &x[1])?, be.scale(&x[1], 0.25)?, ss, c])
            },
        });
    }
    // Casts between f32, bf16 and f16 (round to nearest even); listed under the 16-bit type, as
    // a backend that keeps 16-bit values in f32 does not support them.
    for &n in &[1usize, 77, 4099] {
        out.push(Case {
            op: Op::Cast,
            name: format!("cast f32/bf16/f16 chains {n}"),
            dtype: DType::BF16,
            inputs: vec![randn(&mut r, &[n], DType::F32)],
            run: |be, x| {
                let (b, h) = (be.cast(&x[0], DType::BF16)?, be.cast(&x[0], DType::F16)?);
                Ok(vec![
                    be.cast(&b, DType::F16)?,
                    be.cast(&b, DType::F32)?,
                    be.cast(&b, DType::BF16)?,
                    be.cast(&h, DType::BF16)?,
                    be.cast(&h, DType::F32)?,
                    be.cast(&h, DType::F16)?,
                ])
            },
        });
    }
    // Block-quantized embedding tables (a GGUF's token_embd stays quantized on the device).
    for (i, ty) in [G::Q8_0, G::Q4_1, G::Q4K, G::NF4].into_iter().enumerate() {
        let v = 5 + 3 * i;
        let wf = randn(&mut r, &[v, 256], DType::F32);
        let Ok(wq) = wf
            .to_vec_f32()
            .and_then(|x| crate::quant::quantize(ty, &x))
            .and_then(|b| Tensor::from_quant_bytes(b, ty, [v, 256]))
        else {
            continue;
        };
        let ids = i32s((0..11).map(|j| ((j * 7 + i) % v) as i32).collect(), &[11]);
        out.push(Case {
            op: Op::Embedding,
            name: format!("embedding 11 ids, {} table {v}x256", ty.name()),
            dtype: DType::Quant(ty),
            inputs: vec![wq, ids],
            run: |be, x| Ok(vec![be.embedding_fwd(&x[0], &x[1])?]),
        });
    }
    // Block-quantized tensors decoded (bit-exact) and rounded to the 16-bit types.
    for (i, ty) in [G::Q8_0, G::Q4_1, G::Q5_0, G::Q4K, G::Q6K, G::NF4DQ].into_iter().enumerate() {
        let wf = randn(&mut r, &[3 + i, 256], DType::F32);
        let Ok(wq) = wf
            .to_vec_f32()
            .and_then(|v| crate::quant::quantize(ty, &v))
            .and_then(|b| Tensor::from_quant_bytes(b, ty, [3 + i, 256]))
        else {
            continue;
        };
        out.push(Case {
            op: Op::Cast,
            name: format!("dequantize {} {}x256 to f32/bf16/f16", ty.name(), 3 + i),
            dtype: DType::Quant(ty),
            inputs: vec![wq],
            run: |be, x| {
                Ok(vec![be.cast(&x[0], DType::F32)?, be.cast(&x[0], DType::BF16)?, be.cast(&x[0], DType::F16)?])
            },
        });
    }
    for &(b, t, hq, hkv, d) in &[
        (1, 1, 1, 1, 2),
        (2, 37, 4, 2, 6),
        (1, 70, 9, 3, 64),
        (3, 33, 2, 1, 10),
        (1, 100, 4, 2, 128),
        (2, 65, 3, 1, 96),
    ] {
        let seg: Vec<i32> = (0..b * t).map(|i| ((i % t) * 3 / t) as i32).collect();
        let pos: Vec<i32> = (0..b * t).map(|i| (i % t) as i32 * 7 % 50).collect();
        let inputs = vec![
            randn(&mut r, &[b, t, hq, d], DType::F32),
            randn(&mut r, &[b, t, hkv, d], DType::F32),
            randn(&mut r, &[b, t, hkv, d], DType::F32),
            randn(&mut r, &[b, t, hq, d], DType::F32),
            i32s(seg, &[b, t]),
            i32s(pos, &[b, t]),
            crate::ops::inv_freq(d, 10000.0, None).unwrap(),
        ];
        // Preference layout: prompt (4g), chosen (4g+1), rejected (4g+2) branches, then padding.
        let tree: Vec<i32> = (0..b * t)
            .map(|i| match (i % t) * 8 / t {
                0..=2 => 4,
                3..=4 => 5,
                5..=6 => 6,
                _ => -1,
            })
            .collect();
        let mut tinputs = vec![
            randn(&mut r, &[b, t, hq, d], DType::F32),
            randn(&mut r, &[b, t, hkv, d], DType::F32),
            randn(&mut r, &[b, t, hkv, d], DType::F32),
            randn(&mut r, &[b, t, hq, d], DType::F32),
        ];
        tinputs.push(i32s(tree, &[b, t]));
        out.push(Case {
            op: Op::Attention,
            name: format!("attention b{b} t{t} hq{hq} hkv{hkv} d{d} shared prefix"),
            dtype: DType::F32,
            inputs: tinputs,
            run: |be, x| {
                let a = AttnArgs { q: &x[0], k: &x[1], v: &x[2], seg: Some(&x[4]), shared_prefix: true, scale: 0.3 };
                let (o, lse) = be.attention_fwd(&a)?;
                let (dq, dk, dv) = be.attention_bwd(&a, &o, &lse, &x[3])?;
                Ok(vec![o, lse, dq, dk, dv])
            },
        });
        out.push(Case {
            op: Op::Attention,
            name: format!("attention b{b} t{t} hq{hq} hkv{hkv} d{d} packed"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                let a = AttnArgs { q: &x[0], k: &x[1], v: &x[2], seg: Some(&x[4]), shared_prefix: false, scale: 0.3 };
                let (o, lse) = be.attention_fwd(&a)?;
                let (dq, dk, dv) = be.attention_bwd(&a, &o, &lse, &x[3])?;
                let rq = be.rope(&x[0], &x[5], &x[6], false)?;
                let rk = be.rope(&x[1], &x[5], &x[6], true)?;
                Ok(vec![o, lse, dq, dk, dv, rq, rk])
            },
        });
    }
    for &(m, v) in &[(1, 2), (9, 4136), (17, 96)] {
        let targets: Vec<i32> = (0..m).map(|i| if i % 4 == 1 { -100 } else { (i * 31 % v) as i32 }).collect();
        let inputs = vec![randn(&mut r, &[m, v], DType::F32), i32s(targets, &[m])];
        out.push(Case {
            op: Op::CrossEntropy,
            name: format!("cross_entropy {m}x{v}"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                let ce = be.cross_entropy_fwd(&x[0], &x[1])?;
                let d = be.cross_entropy_bwd(&x[0], &x[1], &ce.lse, 1.3, ce.n_valid)?;
                // Per-row weights (preference losses): the rows' own NLL as weights.
                let dr = be.cross_entropy_bwd_rows(&x[0], &x[1], &ce.lse, &ce.nll)?;
                let loss = Tensor::from_vec(vec![ce.loss], [1])?;
                Ok(vec![loss, ce.lse, ce.nll, d, dr])
            },
        });
        // 16-bit tables too (frozen embeddings kept in their type on the device).
        for td in [DType::BF16, DType::F16] {
            let inputs = vec![randn(&mut r, &[m, v], td), i32s((0..m).map(|i| (i * 5 % m) as i32).collect(), &[m])];
            out.push(Case {
                op: Op::Embedding,
                name: format!("embedding {m} ids, {} table {m}x{v}", td.name()),
                dtype: td,
                inputs,
                run: |be, x| Ok(vec![be.embedding_fwd(&x[0], &x[1])?]),
            });
        }
        let inputs =
            vec![randn(&mut r, &[m, v], DType::F32), i32s((0..m).map(|i| (i * 7 % m / 2) as i32).collect(), &[m])];
        out.push(Case {
            op: Op::Embedding,
            name: format!("embedding {m} ids, table {m}x{v}"),
            dtype: DType::F32,
            inputs,
            run: |be, x| {
                // x[0] [m, v] serves as an m-row table and as the gradient of m lookups (ids repeat).
                let e = be.embedding_fwd(&x[0], &x[1])?;
                let de = be.embedding_bwd(&x[0], &x[1], x[0].dims()[0])?;
                Ok(vec![e, de])
            },
        });
    }
    out
}

/// What a suite run found.
#[derive(Debug, Default)]
pub struct Report {
    pub passed: Vec<String>,
    /// `(case, why)` for cases the backend does not support.
    pub skipped: Vec<(String, String)>,
    /// `(case, what failed)`.
    pub failed: Vec<(String, String)>,
}

/// Runs the table (seeds 1 and 2) on `be` against the f64 CPU reference; `on` sees each case's
/// outcome as it finishes (`None` passed, `Some(msg)` skipped or failed).
pub fn run(be: &dyn Backend, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    run_where(be, &|_| true, on)
}

/// [`run`] over the cases `keep` accepts (a kernel variant checked on the cases that reach it).
pub fn run_where(be: &dyn Backend, keep: &dyn Fn(&Case) -> bool, on: &mut dyn FnMut(&str, Option<&str>)) -> Report {
    let reference = CpuBackend;
    let mut rep = Report::default();
    for seed in [1, 2] {
        for case in cases(seed).into_iter().filter(|c| keep(c)) {
            let name = format!("{} {}", be.name(), case.name);
            if let Support::No(why) = be.supports(case.op, case.dtype) {
                on(&name, Some(&format!("skipped: {why}")));
                rep.skipped.push((name, why));
                continue;
            }
            let outcome = (|| -> Result<(), String> {
                let up = case
                    .inputs
                    .iter()
                    .map(|t| be.upload(t))
                    .collect::<crate::Result<Vec<_>>>()
                    .map_err(|e| e.to_string())?;
                let got = (case.run)(be, &up).map_err(|e| format!("{name}: {e}"))?;
                let r64: Vec<Tensor> = case.inputs.iter().map(f64_of).collect();
                let want = (case.run)(&reference, &r64).map_err(|e| format!("{name}: reference: {e}"))?;
                let t = tol(be.compute_dtype(case.op, case.dtype));
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    compare(&format!("{name} output {i}"), g, w, &t)?;
                }
                Ok(())
            })();
            match outcome {
                Ok(()) => {
                    on(&name, None);
                    rep.passed.push(name);
                }
                Err(e) => {
                    on(&name, Some(&e));
                    rep.failed.push((name, e));
                }
            }
        }
    }
    rep
}
