//! Gated linear units, SwiGLU and GeGLU (`shaders/glu.wgsl`): `act(g)·u` and its gradients.

use kiln_core::backend::GluOps;
use kiln_core::{Result, Tensor};

use super::elementwise::{P1, binary, same};
use super::instance::WgpuBackend;
use super::tensor::held;
use crate::runtime::{Device, Part, device};

const GLU: (&str, &str) = ("glu", include_str!("../../../../shaders/glu.wgsl"));

/// `(dg, du)` of `act(g)·u` by the backward entry point `entry`, one thread per element.
fn bwd(be: &WgpuBackend, entry: &'static str, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    same(entry, g, u)?;
    same(entry, g, dy)?;
    let dev = device()?;
    let (hg, hu, hd) = (held(g)?, held(u)?, held(dy)?);
    let n = g.numel();
    let (dg, du) = (dev.alloc((n * 4) as u64)?, dev.alloc((n * 4) as u64)?);
    let b = [Part::R(hg.buf(), 1), Part::R(hu.buf(), 1), Part::R(hd.buf(), 1), Part::W(&dg, 1), Part::W(&du, 1)];
    dev.launch_rows(GLU, entry, &b, n, |_, n| P1::n(n), Device::grid)?;
    Ok((be.tensor(dg, g.shape().clone(), g.dtype()), be.tensor(du, g.shape().clone(), g.dtype())))
}

impl GluOps for WgpuBackend {
    fn swiglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        binary(self, GLU, "swiglu_fwd", g, u)
    }
    fn swiglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        bwd(self, "swiglu_bwd", g, u, dy)
    }
    fn geglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        binary(self, GLU, "geglu_fwd", g, u)
    }
    fn geglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        bwd(self, "geglu_bwd", g, u, dy)
    }
}
