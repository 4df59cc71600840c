//! Parity cases of the matmul family: the (LoRA) linear layer forward and backward over f32,
//! 16-bit and block-quantized weights, the decode path (a few rows), and plain matrix products
//! in every transposition.

use super::{Case, f32s, quantized, randn, rng, some};
use crate::backend::{LinearNeeds, LoraRef, Op};
use crate::quant::GgmlType as G;
use crate::{DType, Tensor};

/// A LoRA linear layer on `[x, W, bias, A, B, dy]`, forward and backward: y, u = x·Aᵀ, dx, dW,
/// db, dA, dB.
fn lora_linear(be: &dyn crate::Backend, x: &[Tensor]) -> crate::Result<Vec<Tensor>> {
    let l = || LoraRef { a: &x[3], b: &x[4], scale: 0.7 };
    let (y, u) = be.linear_fwd(&x[0], &x[1], Some(&x[2]), Some(l()))?;
    let u = some(u, "linear_fwd returned no u")?;
    let needs = LinearNeeds { x: true, w: true, bias: true, lora: true };
    let g = be.linear_bwd(&x[5], &x[0], &x[1], Some((l(), &u)), needs)?;
    let mut out = vec![y, u];
    for t in [g.dx, g.dw, g.dbias, g.da, g.db] {
        out.push(some(t, "linear_bwd left out a gradient")?);
    }
    Ok(out)
}

/// The matmul family's rows on fresh random inputs from `seed`.
pub fn matmul_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "matmul");
    let mut out = Vec::new();
    for &(m, k, n, rank) in &[(1, 1, 1, 1), (7, 13, 11, 3), (33, 70, 65, 8), (130, 96, 257, 4)] {
        for wd in [DType::F32, DType::BF16, DType::F16] {
            let mut inputs = f32s(&mut r, &[&[m, k]]);
            inputs.push(randn(&mut r, &[n, k], wd));
            inputs.extend(f32s(&mut r, &[&[n], &[rank, k], &[n, rank], &[m, n]]));
            out.push(Case::new(
                Op::Linear,
                format!("lora_linear {m}x{k}x{n} r{rank} W {}", wd.name()),
                wd,
                inputs,
                lora_linear,
            ));
        }
    }
    // The mixed-precision path: x and dy 16-bit, W of their type (or block-quantized under bf16,
    // or f32: widened around the f32 path); y and dx come back in x's type, dW, db, dA, dB in f32.
    for (m, k, n, rank, xt, wd) in [
        (33, 72, 40, 8, DType::BF16, DType::BF16),
        (66, 96, 136, 4, DType::BF16, DType::BF16),
        (7, 13, 11, 3, DType::BF16, DType::BF16),
        (29, 64, 48, 16, DType::F16, DType::F16),
        (21, 256, 24, 4, DType::BF16, DType::Quant(G::Q4K)),
        (17, 40, 24, 2, DType::BF16, DType::F32),
    ] {
        let w: Result<Tensor, String> = match wd {
            DType::Quant(ty) => quantized(&mut r, ty, n, k),
            d => Ok(randn(&mut r, &[n, k], d)),
        };
        let x = randn(&mut r, &[m, k], xt);
        let rest = [f32s(&mut r, &[&[n], &[rank, k], &[n, rank]]), vec![randn(&mut r, &[m, n], xt)]].concat();
        let inputs = w.map(|w| [vec![x, w], rest].concat());
        let name = format!("lora_linear {m}x{k}x{n} r{rank} W {} {} activations", wd.name(), xt.name());
        out.push(Case::built(Op::Linear, name, xt, inputs, lora_linear).with_needs(super::act16));
    }
    // QLoRA: block-quantized frozen weights (dequantized exactly, so f32 tolerances apply).
    for (i, ty) in
        [G::Q8_0, G::Q4_0, G::Q4_1, G::Q5_0, G::Q4K, G::Q5K, G::Q6K, G::NF4, G::NF4DQ].into_iter().enumerate()
    {
        let (m, k, n) = (5 + i, 256, 3 + 2 * i);
        let wq = quantized(&mut r, ty, n, k);
        let (x, dy) = (randn(&mut r, &[m, k], DType::F32), randn(&mut r, &[m, n], DType::F32));
        out.push(Case::built(
            Op::Linear,
            format!("linear {m}x{k}x{n} W {} (QLoRA base)", ty.name()),
            DType::Quant(ty),
            wq.map(|wq| vec![x, wq, dy]),
            |be, x| {
                let (y, _) = be.linear_fwd(&x[0], &x[1], None, None)?;
                let needs = LinearNeeds { x: true, ..Default::default() };
                let g = be.linear_bwd(&x[2], &x[0], &x[1], None, needs)?;
                Ok(vec![y, some(g.dx, "linear_bwd left out dx")?])
            },
        ));
    }
    // Decode steps (one or a few rows against each weight type, with an adapter): the GPU
    // backends' matrix-vector path.
    for (i, wd) in
        [DType::F32, DType::BF16, DType::F16, DType::Quant(G::Q4K), DType::Quant(G::NF4), DType::Quant(G::Q8_0)]
            .into_iter()
            .enumerate()
    {
        let (m, k, n, rank) = (1 + i % 3, 512, 37 + 2 * i, 4);
        let w: Result<Tensor, String> = match wd {
            DType::Quant(ty) => quantized(&mut r, ty, n, k),
            d => Ok(randn(&mut r, &[n, k], d)),
        };
        let x = randn(&mut r, &[m, k], DType::F32);
        let lora = f32s(&mut r, &[&[rank, k], &[n, rank]]);
        let inputs = w.map(|w| [vec![x, w], lora].concat());
        out.push(Case::built(
            Op::Linear,
            format!("linear {m}x{k}x{n} r{rank} W {} (decode)", wd.name()),
            wd,
            inputs,
            |be, x| {
                let (y, u) = be.linear_fwd(&x[0], &x[1], None, Some(LoraRef { a: &x[2], b: &x[3], scale: 0.7 }))?;
                Ok(vec![y, some(u, "linear_fwd returned no u")?])
            },
        ));
    }
    for &(m, k, n) in &[(1, 1, 1), (17, 33, 9), (70, 5, 129)] {
        let inputs = f32s(&mut r, &[&[m, k], &[k, n], &[k, m], &[n, k]]);
        out.push(Case::new(
            Op::Matmul,
            format!("matmul {m}x{k}x{n} (a, aᵀ) × (b, bᵀ)"),
            DType::F32,
            inputs,
            |be, x| {
                Ok(vec![
                    be.matmul(&x[0], &x[1], false, false)?,
                    be.matmul(&x[2], &x[1], true, false)?,
                    be.matmul(&x[0], &x[3], false, true)?,
                    be.matmul(&x[2], &x[3], true, true)?,
                ])
            },
        ));
    }
    out
}
