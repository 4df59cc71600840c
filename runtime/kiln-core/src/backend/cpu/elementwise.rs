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

impl ElementwiseOps for CpuBackend {
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
