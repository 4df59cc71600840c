//! Parity cases of the glu family: SwiGLU and GeGLU forward and backward.

use super::{Case, f32s, randn, rng};
use crate::DType;
use crate::backend::Op;

/// Gated MLP activations of 2 to 1031 values a row (the norm family's shapes).
const SHAPES: [(usize, usize); 4] = [(1, 2), (5, 19), (64, 576), (3, 1031)];

/// The glu family's rows on fresh random inputs from `seed`.
pub fn glu_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "glu");
    let mut out = Vec::new();
    for &(rows, h) in &SHAPES {
        let inputs = f32s(&mut r, &[&[rows, h], &[rows, h], &[rows, h]]);
        out.push(Case::new(Op::SwiGlu, format!("swiglu {rows}x{h}"), DType::F32, inputs, |be, x| {
            let y = be.swiglu_fwd(&x[0], &x[1])?;
            let (dg, du) = be.swiglu_bwd(&x[0], &x[1], &x[2])?;
            Ok(vec![y, dg, du, be.add(&x[0], &x[1])?, be.scale(&x[0], -1.5)?])
        }));
        let inputs = f32s(&mut r, &[&[rows, h], &[rows, h], &[rows, h]]);
        out.push(Case::new(Op::GeGlu, format!("geglu {rows}x{h}"), DType::F32, inputs, |be, x| {
            let y = be.geglu_fwd(&x[0], &x[1])?;
            let (dg, du) = be.geglu_bwd(&x[0], &x[1], &x[2])?;
            Ok(vec![y, dg, du])
        }));
    }
    // The mixed-precision path: 16-bit activations in, the same type out (add, scale, mul and
    // the sum of squares too).
    for (rows, h, dt) in [(5, 19, DType::BF16), (3, 1031, DType::BF16), (64, 576, DType::F16)] {
        let inputs: Vec<_> = (0..3).map(|_| randn(&mut r, &[rows, h], dt)).collect();
        out.push(Case::new(Op::SwiGlu, format!("swiglu {rows}x{h} {} activations", dt.name()), dt, inputs, |be, x| {
            let y = be.swiglu_fwd(&x[0], &x[1])?;
            let (dg, du) = be.swiglu_bwd(&x[0], &x[1], &x[2])?;
            let (z, (eg, eu)) = (be.geglu_fwd(&x[0], &x[1])?, be.geglu_bwd(&x[0], &x[1], &x[2])?);
            let ss = crate::Tensor::from_vec(vec![be.sum_squares(&x[2])?], [1])?;
            Ok(vec![y, dg, du, z, eg, eu, be.add(&x[0], &x[1])?, be.scale(&x[0], -1.5)?, be.mul(&x[0], &x[2])?, ss])
        }));
    }
    out
}
