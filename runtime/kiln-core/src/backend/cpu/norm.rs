//! RMSNorm: `y = x / sqrt(mean(x²) + eps) · w`, as HF computes it (in f32 for f16/bf16 inputs).

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read};
use crate::backend::{NormDims, NormOps};
use crate::{Result, Tensor};

fn fwd<T: Real>(x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let NormDims { rows, h } = NormDims::of(x, w)?;
    let (xv, wv) = (read::<T>(x)?, read::<T>(w)?);
    let mut y = vec![T::zero(); rows * h];
    let mut rstd = vec![T::zero(); rows];
    y.par_chunks_mut(h.max(1)).zip(rstd.par_iter_mut()).enumerate().for_each(|(r, (yr, rs))| {
        let xr = &xv[r * h..(r + 1) * h];
        let ms = xr.iter().map(|&v| v * v).sum::<T>() / T::from_f64(h as f64);
        let s = T::one() / (ms + T::from_f64(eps)).sqrt();
        *rs = s;
        for i in 0..h {
            yr[i] = xr[i] * s * wv[i];
        }
    });
    Ok((out(y, x.dims().to_vec())?, out(rstd, [rows])?))
}

fn bwd<T: Real>(dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)> {
    let nd = NormDims::of(x, w)?;
    nd.check_bwd(dy, rstd)?;
    let NormDims { rows, h } = nd;
    let (dyv, xv, wv, rv) = (read::<T>(dy)?, read::<T>(x)?, read::<T>(w)?, read::<T>(rstd)?);
    let mut dx = vec![T::zero(); rows * h];
    // dx = r·(g − x̂·mean(g·x̂)), g = dy·w, x̂ = x·r; dw = Σ_rows dy·x̂ (per-thread partials).
    dx.par_chunks_mut(h.max(1)).enumerate().for_each(|(r, dxr)| {
        let (xr, dr, s) = (&xv[r * h..(r + 1) * h], &dyv[r * h..(r + 1) * h], rv[r]);
        let dot = (0..h).map(|i| dr[i] * wv[i] * xr[i] * s).sum::<T>() / T::from_f64(h as f64);
        for i in 0..h {
            dxr[i] = s * (dr[i] * wv[i] - xr[i] * s * dot);
        }
    });
    let dw = (0..rows)
        .into_par_iter()
        .fold(
            || vec![T::zero(); h],
            |mut acc, r| {
                let s = rv[r];
                for i in 0..h {
                    acc[i] += dyv[r * h + i] * xv[r * h + i] * s;
                }
                acc
            },
        )
        .reduce(
            || vec![T::zero(); h],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        );
    Ok((out(dx, x.dims().to_vec())?, out(dw, w.dims().to_vec())?))
}

impl NormOps for CpuBackend {
    fn rms_norm_fwd(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        by_prec!(prec(&[x, w]), fwd(x, w, eps))
    }
    fn rms_norm_bwd(&self, dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)> {
        by_prec!(prec(&[dy, x, w]), bwd(dy, x, w, rstd))
    }
}
