//! How a backend's outputs are compared with the f64 reference: the tolerances per compute type
//! (DESIGN), each op's absolute floor, the elementwise and RMS checks, and 8-bit codes.

use crate::backend::Op;
use crate::{DType, Tensor};

/// The bounds a case's outputs must meet.
#[derive(Clone, Copy)]
pub(super) struct Tol {
    rel: f64,
    atol: f64,
    eps: f64,
    /// The op's absolute floor (see [`atol_floor`]), in the output's units.
    floor: f64,
}

/// The unit roundoff of arithmetic in `dtype` (half an ulp of 1): f32 2⁻²⁴, f16 2⁻¹¹, bf16 2⁻⁸.
pub(super) fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 2f64.powi(-8),
        DType::F16 => 2f64.powi(-11),
        _ => 2f64.powi(-24),
    }
}

/// The tolerances for `op`'s arithmetic in `dtype` (the backend's `compute_dtype`).
///
/// f32: ‖out−ref‖/‖ref‖ ≤ 1e-5 (RMS) and |out−ref| ≤ 1e-5·max|ref| + 1e-5·|ref| elementwise
/// (DESIGN). 16-bit arithmetic (operands rounded to bf16/f16, f32 accumulation): 1e-2 RMS, and
/// elementwise 1e-2·max|ref| + 2 %·|ref| for bf16 (the tensor cores' largest error measured is
/// 1.1 % of the output's scale, in attention) and 1e-3·max|ref| + 1 %·|ref| for f16. Each op adds
/// its absolute floor ([`atol_floor`]) to both bounds; nothing else keeps an output that
/// cancels to (near) zero from being measured against itself.
pub(super) fn tol(op: Op, dtype: DType) -> Tol {
    let (rel, atol, eps) = match dtype {
        DType::BF16 => (1e-2, 1e-2, 0.02),
        DType::F16 => (1e-2, 1e-3, 0.01),
        // f32 (and f64) arithmetic; block-quantized inputs dequantize exactly.
        _ => (1e-5, 1e-5, 1e-5),
    };
    Tol { rel, atol, eps, floor: atol_floor(op, dtype) * unit_roundoff(dtype) }
}

/// The absolute floor of each op's bounds, in units of the compute type's roundoff
/// ([`unit_roundoff`]): an output that cancels to (near) zero keeps the rounding of the terms
/// it came from, which no bound relative to the output itself can hold. The table's inputs are
/// standard normal, so those terms are order one; the factor says how many roundings of such a
/// term an output may keep. In 16-bit arithmetic (tensor-core GEMMs and attention, f16 GEMMs)
/// only the operands are rounded, once each, and the sums run in f32: one unit.
pub(super) fn atol_floor(op: Op, dtype: DType) -> f64 {
    let sixteen = matches!(dtype, DType::BF16 | DType::F16);
    match op {
        // Correctly rounded elementwise arithmetic, Σx² of non-negative terms, exact casts
        // and decodes, and lookups that copy: nothing cancels, the relative bounds hold alone.
        Op::Add | Op::Scale | Op::Cast | Op::Embedding => 0.0,
        // Attention at one key (t = 1, or a sequence's first position): P = 1, so dS = P·(dP − δ)
        // and with it dk (and dq) are exactly zero, but 16-bit v and dO leave dP − δ at the
        // operands' rounding (measured: 0.5 unit of bf16).
        Op::Attention if sixteen => 1.0,
        // The same cancellation in f32, over up to 100 keys: δ = Σ P·dP against each dP, and
        // the forward's log-sum-exp.
        Op::Attention => 16.0,
        // nll = lse − x[target] cancels when the target dominates its row, from a log-sum-exp
        // of up to 4136 order-one terms (lse ≈ 8); the loss averages such rows.
        Op::CrossEntropy => 16.0,
        // Operands rounded once in 16-bit GEMMs; a dot product that cancels to (near) zero.
        Op::Linear | Op::Matmul if sixteen => 1.0,
        // Soft-capping's gradient dy·(1 − t²), t = tanh(x/cap), keeps t's rounding where |x| ≫ cap
        // and 1 − t² cancels (the CPU's f32 arithmetic; the GPU kernels' 4e/(1 + e)² does not
        // cancel): a unit or two of a dy of order one.
        Op::Softcap => 4.0,
        // f32 dot products of order-one terms (1×1×1 rows: x·w + b + s·(x·a)·b cancel), RMSNorm's
        // dx = rstd·(w·dy − x·mean(x·w·dy)·rstd²), the gated activations' derivatives, RoPE's
        // x·cos − x'·sin, and AdamW's p·(1 − lr·wd) − lr·m̂/(√v̂ + ε).
        Op::Linear | Op::Matmul | Op::RmsNorm | Op::SwiGlu | Op::GeGlu | Op::Rope | Op::AdamW => 4.0,
    }
}

/// The f64 reference of the same values (inputs already rounded to the tested dtype).
pub(super) fn f64_of(t: &Tensor) -> Tensor {
    if t.dtype() == DType::I32 { t.clone() } else { t.to_dtype(DType::F64).unwrap_or_else(|_| t.clone()) }
}

/// Checks `got` against `want` within `t`; the error names `what` and the first violation.
pub(super) fn compare(what: &str, got: &Tensor, want: &Tensor, t: &Tol) -> Result<(), String> {
    if got.dims() != want.dims() {
        return Err(format!("{what}: shape {:?} vs {:?}", got.dims(), want.dims()));
    }
    let (g, w) = (got.to_vec_f64().map_err(|e| e.to_string())?, want.to_vec_f64().map_err(|e| e.to_string())?);
    let scale = w.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
    let (mut num, mut den) = (0.0, 0.0);
    for (i, (&x, &y)) in g.iter().zip(&w).enumerate() {
        if !x.is_finite() {
            return Err(format!("{what}: non-finite output at {i}"));
        }
        // A reference that is NaN would pass every bound (NaN compares false).
        if !y.is_finite() {
            return Err(format!("{what}: non-finite reference at {i}"));
        }
        // atol is relative to the output's scale so the bound means the same at any magnitude;
        // the op's floor holds outputs that cancel to (near) zero.
        let bound = t.atol * scale + y.abs() * t.eps + t.floor;
        if (x - y).abs() > bound {
            return Err(format!("{what}: element {i}: {x} vs {y} (bound {bound:e})"));
        }
        num += (x - y).powi(2);
        den += y * y;
    }
    // The RMS error within `rel` of the reference's RMS, plus the op's floor.
    let n = g.len().max(1) as f64;
    let (err, size) = ((num / n).sqrt(), (den / n).sqrt());
    if err > t.rel * size + t.floor {
        return Err(format!(
            "{what}: RMS error {err:e} > {:e} · RMS {size:e} + floor {:e} (relative {:e})",
            t.rel,
            t.floor,
            err / size.max(1e-300)
        ));
    }
    Ok(())
}

/// Checks 8-bit codes `got` against the reference's unrounded code values `want`: each code must
/// be the nearest integer (either neighbour within f32 rounding of a tie).
pub(super) fn codes(what: &str, got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dims() != want.dims() {
        return Err(format!("{what}: shape {:?} vs {:?}", got.dims(), want.dims()));
    }
    let (g, w) = (got.to_vec_f64().map_err(|e| e.to_string())?, want.to_vec_f64().map_err(|e| e.to_string())?);
    for (i, (&x, &y)) in g.iter().zip(&w).enumerate() {
        // The f32 kernel's value before rounding differs from the f64 one by ~1e-5 of a code.
        if !y.is_finite() || !x.is_finite() || x.fract() != 0.0 || (x - y).abs() > 0.5 + 1e-3 {
            return Err(format!("{what}: code {i}: {x}, the reference's value before rounding is {y}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>) -> Tensor {
        let n = v.len();
        Tensor::from_vec(v, [n]).unwrap()
    }

    /// NaN on either side fails: NaN compares false against every bound, so without the explicit
    /// checks a NaN reference would pass anything.
    #[test]
    fn nan_or_infinity_on_either_side_fails() {
        let tol = Tol { rel: 1e-5, atol: 1e-5, eps: 1e-5, floor: 0.0 };
        assert!(compare("ok", &t(vec![1.0, 2.0]), &t(vec![1.0, 2.0]), &tol).is_ok());
        for bad in [f32::NAN, f32::INFINITY] {
            let e = compare("x", &t(vec![1.0, bad]), &t(vec![1.0, 2.0]), &tol).unwrap_err();
            assert!(e.contains("non-finite output"), "{e}");
            let e = compare("x", &t(vec![1.0, 2.0]), &t(vec![1.0, bad]), &tol).unwrap_err();
            assert!(e.contains("non-finite reference"), "{e}");
        }
    }

    /// The bounds before they followed the arithmetic: the tolerances of the case's dtype label,
    /// the error scale never below 1 in 16-bit, and the RMS measured against at least 0.1 (f32)
    /// or 1 (16-bit).
    fn old_pass(got: &[f64], want: &[f64], label: DType) -> bool {
        let (rel, atol, eps) = match label {
            DType::BF16 => (1e-2, 1e-2, 0.08),
            DType::F16 => (1e-2, 1e-3, 0.01),
            _ => (1e-5, 1e-5, 1e-5),
        };
        let sixteen = atol >= 1e-3;
        let scale = want.iter().fold(0.0f64, |a, &b| a.max(b.abs()));
        let scale = if sixteen { scale.max(1.0) } else { scale };
        let elementwise = got.iter().zip(want).all(|(x, y)| (x - y).abs() <= atol * scale + y.abs() * eps);
        let num: f64 = got.iter().zip(want).map(|(x, y)| (x - y).powi(2)).sum();
        let den: f64 = want.iter().map(|y| y * y).sum();
        let floor = if sixteen { 1.0 } else { 0.01 };
        elementwise && (num / den.max(floor * want.len() as f64)).sqrt() <= rel
    }

    fn f64s(v: &[f64]) -> Tensor {
        Tensor::from_vec(v.to_vec(), [v.len()]).unwrap()
    }

    /// Two perturbations the old bounds passed and these fail. (1) A bf16-labelled linear case
    /// the CPU (and wgpu, and CUDA's v1/v2) computes in f32 on exactly widened weights: one
    /// gradient element scaled by 1.01 passed the 16-bit label's 8 % per element. (2) A case in
    /// real bf16 arithmetic (tensor cores) whose outputs are gradient-sized (0.05): every value
    /// 15 % off passed, the unit floor making the bound 0.01 + 8 %, i.e. 28 % of each value (and
    /// the RMS measured against 1); now the bound is 1e-2·max + 2 % + one bf16 unit, 11 %.
    #[test]
    fn the_old_bounds_passed_what_these_catch() {
        use crate::Backend;
        let grad: Vec<f64> = (0..64).map(|i| ((i * 37 % 17) as f64 - 8.0) * 0.31).collect();
        let mut one = grad.clone();
        one[5] *= 1.01;
        assert!(old_pass(&one, &grad, DType::BF16), "the old bounds passed it");
        let cd = crate::CpuBackend.compute_dtype(Op::Linear, DType::BF16);
        assert_eq!(cd, DType::F32, "the CPU widens bf16 weights exactly and computes in f32");
        let e = compare("dw", &f64s(&one), &f64s(&grad), &tol(Op::Linear, cd)).unwrap_err();
        assert!(e.contains("element 5"), "{e}");

        let small: Vec<f64> = (0..64).map(|i| 0.05 + 0.0005 * i as f64 * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let off: Vec<f64> = small.iter().map(|v| v * 1.15).collect();
        assert!(old_pass(&off, &small, DType::BF16), "the old unit floor passed it");
        let e = compare("dx", &f64s(&off), &f64s(&small), &tol(Op::Linear, DType::BF16)).unwrap_err();
        assert!(e.contains("element 0"), "{e}");
        // The same outputs within bf16 rounding (0.4 %) pass.
        let ok: Vec<f64> = small.iter().map(|v| v * 1.004).collect();
        assert!(compare("dx", &f64s(&ok), &f64s(&small), &tol(Op::Linear, DType::BF16)).is_ok());
    }

    /// An op's floor holds an output that cancels to zero (attention's dk at one key is exactly
    /// 0; bf16 operands leave their rounding), and only up to its stated size.
    #[test]
    fn the_floor_holds_cancellation_and_no_more() {
        let t = tol(Op::Attention, DType::BF16);
        let zero = f64s(&[0.0; 4]);
        assert!(compare("dk", &f64s(&[2e-3, -1.5e-3, 0.0, 1e-3]), &zero, &t).is_ok());
        assert!(compare("dk", &f64s(&[5e-3, 0.0, 0.0, 0.0]), &zero, &t).is_err());
        // Exact ops have none: the smallest error in a zero output fails.
        assert!(compare("x", &f64s(&[1e-30]), &f64s(&[0.0]), &tol(Op::Cast, DType::F32)).is_err());
    }

    /// An 8-bit code is the nearest integer to the reference's value before rounding.
    #[test]
    fn codes_are_the_nearest_integer() {
        let want = f64s(&[12.4, -3.6, 0.0, 127.0, 7.5004]);
        assert!(codes("m", &f64s(&[12.0, -4.0, 0.0, 127.0, 8.0]), &want).is_ok());
        assert!(codes("m", &f64s(&[12.0, -4.0, 0.0, 127.0, 7.0]), &want).is_ok(), "either side of a tie");
        let e = codes("m", &f64s(&[13.0, -4.0, 0.0, 127.0, 8.0]), &want).unwrap_err();
        assert!(e.contains("code 0"), "{e}");
        assert!(codes("m", &f64s(&[12.0, -3.0, 0.0, 127.0, 8.0]), &want).is_err());
        assert!(codes("m", &f64s(&[12.0, -4.0, 0.5, 127.0, 8.0]), &want).is_err(), "codes are integers");
    }
}
