//! Cross-entropy over the vocabulary with ignored targets (< 0, HF's -100).
//!
//! Each row's log-sum-exp is built over vocabulary chunks of `VCHUNK` with an online max, so a
//! row is read once per pass and the GPU kernels can use the same structure.

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read, read_i32};
use crate::backend::{CeDims, CeOut, LossOps};
use crate::{Result, Tensor};

const VCHUNK: usize = 4096;

fn lse_row<T: Real>(row: &[T]) -> T {
    let (mut m, mut s) = (T::neg_infinity(), T::zero());
    for c in row.chunks(VCHUNK) {
        let cm = c.iter().fold(T::neg_infinity(), |a, &b| a.max(b));
        if cm == T::neg_infinity() {
            continue;
        }
        let nm = m.max(cm);
        s = s * (m - nm).exp() + c.iter().map(|&x| (x - nm).exp()).sum::<T>();
        m = nm;
    }
    m + s.ln()
}

fn fwd<T: Real>(logits: &Tensor, targets: &Tensor) -> Result<CeOut> {
    let CeDims { m, v } = CeDims::of(logits, targets)?;
    let (lv, tv) = (read::<T>(logits)?, read_i32(targets)?);
    crate::backend::check_targets("cross_entropy", tv, v)?;
    let lse: Vec<T> = (0..m).into_par_iter().map(|r| lse_row(&lv[r * v..(r + 1) * v])).collect();
    let nll: Vec<T> =
        (0..m).map(|r| if tv[r] >= 0 { lse[r] - lv[r * v + tv[r] as usize] } else { T::zero() }).collect();
    let n = tv.iter().filter(|&&t| t >= 0).count();
    let sum = nll.iter().fold(0.0f64, |a, &x| a + x.to_f64());
    let loss = if n == 0 { 0.0 } else { sum / n as f64 };
    Ok(CeOut { loss, n_valid: n, lse: out(lse, [m])?, nll: out(nll, [m])? })
}

fn bwd<T: Real>(logits: &Tensor, targets: &Tensor, lse: &Tensor, dloss: f64, n_valid: usize) -> Result<Tensor> {
    let dims = CeDims::of(logits, targets)?;
    let g = if n_valid == 0 { 0.0 } else { dloss / n_valid as f64 };
    bwd_rows::<T>(dims, logits, targets, lse, &vec![T::from_f64(g); dims.m])
}

fn bwd_rows_t<T: Real>(logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor> {
    let dims = CeDims::of(logits, targets)?;
    dims.check_rows("row weights", drow)?;
    bwd_rows::<T>(dims, logits, targets, lse, &read::<T>(drow)?)
}

/// `(softmax − onehot) · w[r]` per row (`w` one weight per row), zero where the target is
/// ignored.
fn bwd_rows<T: Real>(dims: CeDims, logits: &Tensor, targets: &Tensor, lse: &Tensor, w: &[T]) -> Result<Tensor> {
    let CeDims { m, v } = dims;
    dims.check_rows("lse", lse)?;
    let (lv, tv, sv) = (read::<T>(logits)?, read_i32(targets)?, read::<T>(lse)?);
    let mut d = vec![T::zero(); m * v];
    d.par_chunks_mut(v.max(1)).enumerate().for_each(|(r, dr)| {
        if tv[r] < 0 {
            return;
        }
        let g = w[r];
        let lr = &lv[r * v..(r + 1) * v];
        for (o, &x) in dr.iter_mut().zip(lr) {
            *o = (x - sv[r]).exp() * g;
        }
        dr[tv[r] as usize] -= g;
    });
    out(d, logits.dims().to_vec())
}

impl LossOps for CpuBackend {
    fn cross_entropy_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<CeOut> {
        by_prec!(prec(&[logits]), fwd(logits, targets))
    }
    fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: f64,
        n_valid: usize,
    ) -> Result<Tensor> {
        by_prec!(prec(&[logits]), bwd(logits, targets, lse, dloss, n_valid))
    }
    fn cross_entropy_bwd_rows(&self, logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor> {
        by_prec!(prec(&[logits]), bwd_rows_t(logits, targets, lse, drow))
    }
}
