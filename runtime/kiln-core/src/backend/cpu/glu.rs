//! Gated linear units: `act(g) · u` with SiLU (SwiGLU) or tanh-approximate GELU (GeGLU), and
//! their gradients for both inputs.

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read, same_shape};
use crate::backend::GluOps;
use crate::{Result, Tensor};

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// `silu(g)` and its derivative `s + g·s·(1−s)`, `s = sigmoid(g)`.
fn silu<T: Real>(g: T) -> (T, T) {
    let s = sigmoid(g);
    (g * s, s + g * s * (T::one() - s))
}

/// PyTorch's `gelu(approximate="tanh")` and its derivative:
/// `y = g/2·(1 + t)`, `t = tanh(k·(g + c·g³))`, `dy/dg = (1 + t)/2 + g/2·(1 − t²)·k·(1 + 3c·g²)`.
fn gelu_tanh<T: Real>(g: T) -> (T, T) {
    let k = T::from_f64((2.0 / std::f64::consts::PI).sqrt());
    let c = T::from_f64(0.044715);
    let half = T::from_f64(0.5);
    let t = (k * (g + c * g * g * g)).tanh();
    let y = half * g * (T::one() + t);
    let dy = half * (T::one() + t) + half * g * (T::one() - t * t) * k * (T::one() + T::from_f64(3.0) * c * g * g);
    (y, dy)
}

fn fwd<T: Real>(g: &Tensor, u: &Tensor, act: fn(T) -> (T, T)) -> Result<Tensor> {
    let (gv, uv) = (read::<T>(g)?, read::<T>(u)?);
    let o: Vec<T> = gv.par_iter().zip(uv.par_iter()).map(|(&g, &u)| act(g).0 * u).collect();
    out(o, g.shape().clone())
}

fn bwd<T: Real>(g: &Tensor, u: &Tensor, dy: &Tensor, act: fn(T) -> (T, T)) -> Result<(Tensor, Tensor)> {
    let (gv, uv, dv) = (read::<T>(g)?, read::<T>(u)?, read::<T>(dy)?);
    let (dg, du): (Vec<T>, Vec<T>) = (0..gv.len())
        .into_par_iter()
        .map(|i| {
            let (a, da) = act(gv[i]);
            (dv[i] * uv[i] * da, dv[i] * a)
        })
        .unzip();
    Ok((out(dg, g.shape().clone())?, out(du, g.shape().clone())?))
}

fn swiglu_fwd<T: Real>(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    fwd::<T>(g, u, silu)
}
fn swiglu_bwd<T: Real>(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    bwd::<T>(g, u, dy, silu)
}
fn geglu_fwd<T: Real>(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    fwd::<T>(g, u, gelu_tanh)
}
fn geglu_bwd<T: Real>(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    bwd::<T>(g, u, dy, gelu_tanh)
}

impl GluOps for CpuBackend {
    fn swiglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        same_shape("swiglu", g, u)?;
        by_prec!(prec(&[g, u]), swiglu_fwd(g, u))
    }
    fn swiglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        same_shape("swiglu_bwd", g, u)?;
        same_shape("swiglu_bwd", g, dy)?;
        by_prec!(prec(&[g, u, dy]), swiglu_bwd(g, u, dy))
    }
    fn geglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        same_shape("geglu", g, u)?;
        by_prec!(prec(&[g, u]), geglu_fwd(g, u))
    }
    fn geglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        same_shape("geglu_bwd", g, u)?;
        same_shape("geglu_bwd", g, dy)?;
        by_prec!(prec(&[g, u, dy]), geglu_bwd(g, u, dy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's `gelu(x, approximate="tanh")` at a few points (f64, from the formula in its
    /// documentation), so a wrong constant or a sign slip fails here and not only in parity
    /// (which compares the backends with this same code).
    #[test]
    fn gelu_tanh_matches_pytorch_values() {
        for (x, want) in [
            (1.0, 0.8411919906082768),
            (-0.5, -0.15428599017485606),
            (2.0, 1.954597694087775),
            (-3.0, -0.0036373920817729943),
        ] {
            let (y, dy) = gelu_tanh::<f64>(x);
            assert!((y - want).abs() < 1e-15, "gelu_tanh({x}) = {y}, want {want}");
            let h = 1e-6;
            let fd = (gelu_tanh::<f64>(x + h).0 - gelu_tanh::<f64>(x - h).0) / (2.0 * h);
            assert!((dy - fd).abs() < 1e-8, "gelu_tanh'({x}) = {dy}, finite difference {fd}");
        }
    }
}
