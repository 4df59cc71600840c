//! Rotary position embedding in HF's "rotate half" layout: dims `i` and `i + D/2` form a pair
//! rotated by `pos · inv_freq[i]`. The backward is the same rotation by the negative angle.

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read, read_i32};
use crate::backend::RopeOps;
use crate::{Error, Result, Tensor};

fn rope<T: Real>(x: &Tensor, pos: &Tensor, inv_freq: &Tensor, inverse: bool) -> Result<Tensor> {
    let d = x.dims();
    if d.len() != 4 || !d[3].is_multiple_of(2) {
        return Err(Error::shape("rope", format!("x must be [B,T,H,D] with even D, got {:?}", d)));
    }
    let (bt, h, hd) = (d[0] * d[1], d[2], d[3]);
    let half = hd / 2;
    let (xv, fv, pv) = (read::<T>(x)?, read::<T>(inv_freq)?, read_i32(pos)?);
    if fv.len() != half || pv.len() != bt {
        return Err(Error::shape(
            "rope",
            format!("inv_freq {:?}, pos {:?} for x {:?}", inv_freq.shape(), pos.shape(), d),
        ));
    }
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
    out(y, d.to_vec())
}

impl RopeOps for CpuBackend {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, inverse: bool) -> Result<Tensor> {
        by_prec!(prec(&[x]), rope(x, pos, inv_freq, inverse))
    }
}
