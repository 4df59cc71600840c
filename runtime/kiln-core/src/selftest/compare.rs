//! How a backend's outputs are compared with the f64 CPU reference: the tolerances per compute
//! type (DESIGN) and the elementwise and relative-error checks.

use crate::backend::Op;
use crate::{DType, Tensor};

/// The bounds a case's outputs must meet.
pub(super) struct Tol {
    rel: f64,
    atol: f64,
    eps: f64,
}

/// The tolerances for `op`'s arithmetic in `dtype`.
pub(super) fn tol(_op: Op, dtype: DType) -> Tol {
    match dtype {
        DType::F32 => Tol { rel: 1e-5, atol: 1e-5, eps: 1e-5 },
        DType::BF16 => Tol { rel: 1e-2, atol: 1e-2, eps: 0.08 },
        // Block-quantized inputs dequantize exactly: what is compared is f32 arithmetic.
        DType::Quant(_) => Tol { rel: 1e-5, atol: 1e-5, eps: 1e-5 },
        _ => Tol { rel: 1e-2, atol: 1e-3, eps: 0.01 },
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
    // In 16-bit arithmetic an output that cancels to (near) zero keeps the rounding of its
    // order-one terms (attention's dq when P = 1: dP − δ is v's bf16 rounding), so the bound
    // never shrinks below the atol of a unit scale, as in PyTorch's bf16 testing defaults.
    let scale = if t.atol >= 1e-3 { scale.max(1.0) } else { scale };
    let (mut num, mut den) = (0.0, 0.0);
    for (i, (&x, &y)) in g.iter().zip(&w).enumerate() {
        if !x.is_finite() {
            return Err(format!("{what}: non-finite output at {i}"));
        }
        // A reference that is NaN would pass every bound (NaN compares false).
        if !y.is_finite() {
            return Err(format!("{what}: non-finite reference at {i}"));
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
        let tol = Tol { rel: 1e-5, atol: 1e-5, eps: 1e-5 };
        assert!(compare("ok", &t(vec![1.0, 2.0]), &t(vec![1.0, 2.0]), &tol).is_ok());
        for bad in [f32::NAN, f32::INFINITY] {
            let e = compare("x", &t(vec![1.0, bad]), &t(vec![1.0, 2.0]), &tol).unwrap_err();
            assert!(e.contains("non-finite output"), "{e}");
            let e = compare("x", &t(vec![1.0, 2.0]), &t(vec![1.0, bad]), &tol).unwrap_err();
            assert!(e.contains("non-finite reference"), "{e}");
        }
    }
}
