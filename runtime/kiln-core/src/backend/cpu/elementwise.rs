//! Elementwise ops: residual add, product, scale, sum of squares.

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read, same_shape};
use crate::backend::ElementwiseOps;
use crate::{Result, Tensor};

const CHUNK: usize = 1 << 14;

fn add<T: Real>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (x, y) = (read::<T>(a)?, read::<T>(b)?);
    let mut o = vec![T::zero(); x.len()];
    o.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
        let base = c * CHUNK;
        for (i, v) in oc.iter_mut().enumerate() {
            *v = x[base + i] + y[base + i];
        }
    });
    out(o, a.shape().clone())
}

fn mul<T: Real>(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (x, y) = (read::<T>(a)?, read::<T>(b)?);
    let o: Vec<T> = x.par_iter().zip(y.par_iter()).map(|(&p, &q)| p * q).collect();
    out(o, a.shape().clone())
}

fn scale<T: Real>(a: &Tensor, s: f64) -> Result<Tensor> {
    let s = T::from_f64(s);
    let o: Vec<T> = read::<T>(a)?.par_iter().map(|&v| v * s).collect();
    out(o, a.shape().clone())
}

/// `cap · tanh(x / cap)`.
fn softcap_fwd<T: Real>(x: &Tensor, cap: f64) -> Result<Tensor> {
    let c = T::from_f64(cap);
    let o: Vec<T> = read::<T>(x)?.par_iter().map(|&v| c * (v / c).tanh()).collect();
    out(o, x.shape().clone())
}

/// `dy · (1 − tanh²(x / cap))`.
fn softcap_bwd<T: Real>(x: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor> {
    let c = T::from_f64(cap);
    let (xv, dv) = (read::<T>(x)?, read::<T>(dy)?);
    let o: Vec<T> = xv
        .par_iter()
        .zip(dv.par_iter())
        .map(|(&v, &d)| {
            let t = (v / c).tanh();
            d * (T::one() - t * t)
        })
        .collect();
    out(o, x.shape().clone())
}

fn check_cap(cap: f64) -> Result<()> {
    if cap.is_finite() && cap > 0.0 {
        Ok(())
    } else {
        Err(crate::Error::Msg(format!("softcap: the cap {cap} must be a positive number")))
    }
}

impl ElementwiseOps for CpuBackend {
    fn softcap_fwd(&self, x: &Tensor, cap: f64) -> Result<Tensor> {
        check_cap(cap)?;
        by_prec!(prec(&[x]), softcap_fwd(x, cap))
    }
    fn softcap_bwd(&self, x: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor> {
        check_cap(cap)?;
        same_shape("softcap_bwd", x, dy)?;
        by_prec!(prec(&[x, dy]), softcap_bwd(x, dy, cap))
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_shape("add", a, b)?;
        by_prec!(prec(&[a, b]), add(a, b))
    }
    fn scale(&self, a: &Tensor, s: f64) -> Result<Tensor> {
        by_prec!(prec(&[a]), scale(a, s))
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        same_shape("mul", a, b)?;
        by_prec!(prec(&[a, b]), mul(a, b))
    }
    fn sum_squares(&self, a: &Tensor) -> Result<f64> {
        let v = a.to_vec_f64()?;
        Ok(v.par_iter().map(|x| x * x).sum())
    }
}
