//! Gated linear units (`Op::SwiGlu`, `Op::GeGlu`) on kernels/glu.cu: the activations' type in and
//! out (f32, bf16 or f16), one launch for the forward and one for both gradients.

use kiln_core::backend::GluOps;
use kiln_core::{Error, Result, Tensor};

use super::launch::{grid_of, ptr};
use super::{KernelBackend, act_types};
use crate::kernels::GluParams;

/// `act(g)·u` (`dy` None) or its gradients `(dg, du)`; `act` is the kernels' stem (`swiglu`,
/// `geglu`).
fn glu(
    be: &KernelBackend,
    act: &'static str,
    g: &Tensor,
    u: &Tensor,
    dy: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (dt, ty) = act_types(act, g, &[&[u], dy.as_slice()].concat())?;
    if g.dims() != u.dims() || dy.is_some_and(|d| d.dims() != g.dims()) {
        return Err(Error::shape(act, format!("g {:?}, u {:?}", g.dims(), u.dims())));
    }
    let n = g.numel();
    let (hg, hu) = (be.held(g)?, be.held(u)?);
    let hd = dy.map(|d| be.held(d)).transpose()?;
    let o0 = be.alloc(n, dt)?;
    let o1 = if dy.is_some() { Some(be.alloc(n, dt)?) } else { None };
    let p = GluParams {
        g: hg.ptr(),
        u: hu.ptr(),
        dy: ptr(&hd),
        out0: o0.ptr,
        out1: o1.as_ref().map_or(0, |b| b.ptr),
        n: n as i64,
    };
    let kernel = format!("{act}_{}_{ty}", if dy.is_some() { "bwd" } else { "fwd" });
    be.exec.launch(&kernel, grid_of(n, 256), bytemuck::bytes_of(&p))?;
    Ok((be.wrap(o0, g.dims().to_vec(), dt), o1.map(|b| be.wrap(b, g.dims().to_vec(), dt))))
}

/// The gradients of [`glu`].
fn glu_bwd(be: &KernelBackend, act: &'static str, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (dg, du) = glu(be, act, g, u, Some(dy))?;
    Ok((dg, du.ok_or_else(|| Error::Msg(format!("{act}_bwd: no du")))?))
}

impl GluOps for KernelBackend {
    fn swiglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        Ok(glu(self, "swiglu", g, u, None)?.0)
    }
    fn swiglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        glu_bwd(self, "swiglu", g, u, dy)
    }
    fn geglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        Ok(glu(self, "geglu", g, u, None)?.0)
    }
    fn geglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        glu_bwd(self, "geglu", g, u, dy)
    }
}
