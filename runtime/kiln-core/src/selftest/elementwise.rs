//! Parity cases of the elementwise family: add, mul, scale, Σx² and soft-capping in f32, casts
//! between f32, bf16 and f16, and block-quantized tensors decoded to each of them.

use super::{Case, f32s, quantized, randn, rng};
use crate::backend::Op;
use crate::quant::GgmlType as G;
use crate::{DType, Tensor};

/// The elementwise family's rows on fresh random inputs from `seed`: sizes around a workgroup
/// (63, 65), a ragged multiple of one (4099) and many (70 001).
pub fn elementwise_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "elementwise");
    let mut out = Vec::new();
    for &n in &[1usize, 63, 65, 4099, 70_001] {
        out.push(Case::new(
            Op::Add,
            format!("add/mul/scale/sum_squares/cast {n}"),
            DType::F32,
            f32s(&mut r, &[&[n], &[n]]),
            |be, x| {
                let ss = Tensor::from_vec(vec![be.sum_squares(&x[0])?], [1])?;
                let c = be.cast(&x[1], x[1].dtype())?;
                Ok(vec![be.add(&x[0], &x[1])?, be.mul(&x[0], &x[1])?, be.scale(&x[1], 0.25)?, ss, c])
            },
        ));
    }
    for &n in &[1usize, 77, 4099] {
        out.push(Case::new(
            Op::Scale,
            format!("scale {n} by -1.5 and 0.25"),
            DType::F32,
            f32s(&mut r, &[&[n]]),
            |be, x| Ok(vec![be.scale(&x[0], -1.5)?, be.scale(&x[0], 0.25)?]),
        ));
    }
    // Soft-capping forward and gradient at Gemma 2's caps (30 on the final logits, 50 on
    // attention scores) and a small one, on inputs from 0.01 to 1000 in magnitude (log-uniform,
    // either sign: well inside and well beyond ±cap), with 0 and ±1e30 among them.
    for &n in &[1usize, 63, 65, 4099] {
        let x: Vec<f64> = (0..n)
            .map(|i| match i {
                1 => 0.0,
                2 => 1e30,
                3 => -1e30,
                _ => {
                    let m = 10f64.powf(5.0 * r.uniform() - 2.0);
                    if r.uniform() < 0.5 { -m } else { m }
                }
            })
            .collect();
        let x = Tensor::from_vec(x, [n]).and_then(|t| t.to_dtype(DType::F32)).map_err(|e| e.to_string());
        let dy = randn(&mut r, &[n], DType::F32);
        out.push(Case::built(
            Op::Softcap,
            format!("softcap {n} at caps 0.5/30/50, forward and gradient"),
            DType::F32,
            x.map(|x| vec![x, dy]),
            |be, x| {
                let mut v = Vec::new();
                for cap in [0.5, 30.0, 50.0] {
                    v.push(be.softcap_fwd(&x[0], cap)?);
                    v.push(be.softcap_bwd(&x[0], &x[1], cap)?);
                }
                Ok(v)
            },
        ));
    }
    // Soft-capping on the mixed-precision path: 16-bit x and dy, the same type out.
    for (n, dt) in [(1000usize, DType::BF16), (77, DType::F16)] {
        let x: Vec<f64> = (0..n).map(|_| 20.0 * r.normal()).collect();
        let inputs = vec![Tensor::from_vec(x, [n]).and_then(|t| t.to_dtype(dt)).unwrap(), randn(&mut r, &[n], dt)];
        out.push(Case::new(
            Op::Softcap,
            format!("softcap {n} at cap 30 {} activations", dt.name()),
            dt,
            inputs,
            |be, x| Ok(vec![be.softcap_fwd(&x[0], 30.0)?, be.softcap_bwd(&x[0], &x[1], 30.0)?]),
        ));
    }
    // Casts between f32, bf16 and f16 (round to nearest even); listed under the 16-bit type, as
    // a backend that keeps 16-bit values in f32 does not support them.
    for &n in &[1usize, 77, 4099] {
        out.push(Case::new(
            Op::Cast,
            format!("cast f32/bf16/f16 chains {n}"),
            DType::BF16,
            f32s(&mut r, &[&[n]]),
            |be, x| {
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
        ));
    }
    // Block-quantized tensors decoded (bit-exact) and rounded to the 16-bit types.
    for (i, ty) in [G::Q8_0, G::Q4_1, G::Q5_0, G::Q4K, G::Q6K, G::NF4DQ].into_iter().enumerate() {
        let wq = quantized(&mut r, ty, 3 + i, 256);
        out.push(Case::built(
            Op::Cast,
            format!("dequantize {} {}x256 to f32/bf16/f16", ty.name(), 3 + i),
            DType::Quant(ty),
            wq.map(|wq| vec![wq]),
            |be, x| Ok(vec![be.cast(&x[0], DType::F32)?, be.cast(&x[0], DType::BF16)?, be.cast(&x[0], DType::F16)?]),
        ));
    }
    out
}
