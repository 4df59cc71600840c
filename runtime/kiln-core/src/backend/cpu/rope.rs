//! Rotary position embedding in HF's "rotate half" layout: dims `i` and `i + D/2` form a pair
//! rotated by `pos · inv_freq[i]`. The backward is the same rotation by the negative angle.

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read, read_i32};
use crate::backend::{RopeDims, RopeOps};
use crate::{Result, Tensor};

fn rope<T: Real>(x: &Tensor, pos: &Tensor, inv_freq: &Tensor, inverse: bool) -> Result<Tensor> {
    let RopeDims { h, d: hd, .. } = RopeDims::of(x, pos, inv_freq)?;
    let half = hd / 2;
    let (xv, fv, pv) = (read::<T>(x)?, read::<T>(inv_freq)?, read_i32(pos)?);
    let sign = if inverse { -T::one() } else { T::one() };
    let mut y = vec![T::zero(); xv.len()];
    y.par_chunks_mut(h * hd).enumerate().for_each(|(t, yt)| {
        let p = T::from_f64(pv[t] as f64);
        // Angles are formed in the compute precision, as HF does in f32.
        let cs: Vec<(T, T)> = fv.iter().map(|&f| ((f * p).cos(), sign * (f * p).sin())).collect();
        for head in 0..h {
            let base = t * h * hd + head * hd;
            let (xr, yr) = (&xv[base..base + hd], &mut yt[head * hd..(head + 1) * hd]);
            for i in 0..half {
                let (c, s) = cs[i];
                let (a, b) = (xr[i], xr[i + half]);
                yr[i] = a * c - b * s;
                yr[i + half] = b * c + a * s;
            }
        }
    });
    out(y, x.dims().to_vec())
}

impl RopeOps for CpuBackend {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, inverse: bool) -> Result<Tensor> {
        by_prec!(prec(&[x]), rope(x, pos, inv_freq, inverse))
    }
}
