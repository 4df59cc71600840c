//! Parity cases of the norm family: RMSNorm forward and backward.

use super::{Case, f32s, randn, rng};
use crate::DType;
use crate::backend::Op;

/// The norm family's rows on fresh random inputs from `seed`: rows of 2 to 1031 values, ragged
/// against any block size. (h = 1 would make RMSNorm's dx identically zero: pure cancellation,
/// nothing to compare.)
pub fn norm_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "norm");
    let mut out = Vec::new();
    for &(rows, h) in &[(1, 2), (5, 19), (64, 576), (3, 1031)] {
        let inputs = f32s(&mut r, &[&[rows, h], &[h], &[rows, h]]);
        out.push(Case::new(Op::RmsNorm, format!("rms_norm {rows}x{h}"), DType::F32, inputs, |be, x| {
            let (y, rstd) = be.rms_norm_fwd(&x[0], &x[1], 1e-5)?;
            let (dx, dw) = be.rms_norm_bwd(&x[2], &x[0], &x[1], &rstd)?;
            Ok(vec![y, dx, dw])
        }));
    }
    // The mixed-precision path: x and dy 16-bit (y and dx in their type), the weight f32.
    for (rows, h, dt) in [(5, 19, DType::BF16), (3, 1031, DType::BF16), (64, 576, DType::F16)] {
        let inputs =
            vec![randn(&mut r, &[rows, h], dt), randn(&mut r, &[h], DType::F32), randn(&mut r, &[rows, h], dt)];
        out.push(Case::new(
            Op::RmsNorm,
            format!("rms_norm {rows}x{h} {} activations", dt.name()),
            dt,
            inputs,
            |be, x| {
                let (y, rstd) = be.rms_norm_fwd(&x[0], &x[1], 1e-5)?;
                let (dx, dw) = be.rms_norm_bwd(&x[2], &x[0], &x[1], &rstd)?;
                Ok(vec![y, dx, dw])
            },
        ));
    }
    out
}
