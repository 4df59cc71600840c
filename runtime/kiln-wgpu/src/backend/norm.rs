//! RMSNorm (`shaders/norm.wgsl`).

use kiln_core::backend::{NormDims, NormOps};
use kiln_core::{DType, Result, Tensor};

use super::instance::WgpuBackend;
use super::tensor::held;
use crate::runtime::{Bind, Part, device};

const NORM: (&str, &str) = (
    "norm",
    concat!(include_str!("../../../../shaders/norm.wgsl"), include_str!("../../../../shaders/reduce_wg.wgsl")),
);
/// The same kernels reducing with subgroup operations, for adapters that have them.
const NORM_SG: (&str, &str) = (
    "norm_sg",
    concat!(include_str!("../../../../shaders/norm.wgsl"), include_str!("../../../../shaders/reduce_sg.wgsl")),
);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormP {
    rows: u32,
    h: u32,
    eps: f32,
    /// rms_norm_bwd_dw: add to dw (the launches after the first of a split one).
    acc: u32,
}

/// One workgroup per row, folded into a 2-D grid.
fn rows_grid(rows: usize) -> (u32, u32, u32) {
    let x = rows.clamp(1, 65535);
    (x as u32, rows.div_ceil(x) as u32, 1)
}

impl WgpuBackend {
    fn norm_src(&self) -> Result<(&'static str, &'static str)> {
        Ok(if self.use_subgroups(device()?) { NORM_SG } else { NORM })
    }
}

impl NormOps for WgpuBackend {
    fn rms_norm_fwd(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let NormDims { rows, h } = NormDims::of(x, w)?;
        let dev = device()?;
        let (hx, hw) = (held(x)?, held(w)?);
        let (y, rstd) = (dev.alloc((rows * h * 4) as u64)?, dev.alloc((rows * 4) as u64)?);
        let p = |_, n: usize| NormP { rows: n as u32, h: h as u32, eps: eps as f32, acc: 0 };
        let b = [Part::R(hx.buf(), h), Part::Whole(Bind::R(hw.buf())), Part::W(&y, h), Part::W(&rstd, 1)];
        dev.launch_rows(self.norm_src()?, "rms_norm_fwd", &b, rows, p, rows_grid)?;
        Ok((self.tensor(y, x.dims().to_vec(), DType::F32), self.tensor(rstd, vec![rows], DType::F32)))
    }
    fn rms_norm_bwd(&self, dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)> {
        let dims = NormDims::of(x, w)?;
        dims.check_bwd(dy, rstd)?;
        let NormDims { rows, h } = dims;
        let dev = device()?;
        let (hdy, hx, hw, hr) = (held(dy)?, held(x)?, held(w)?, held(rstd)?);
        let (dx, dw) = (dev.alloc((rows * h * 4) as u64)?, dev.alloc((h * 4) as u64)?);
        // dw sums over rows: launches after the first add to it.
        let p = |r0: usize, n: usize| NormP { rows: n as u32, h: h as u32, eps: 0.0, acc: u32::from(r0 > 0) };
        let (dyp, xp, rp) = (Part::R(hdy.buf(), h), Part::R(hx.buf(), h), Part::R(hr.buf(), 1));
        let b = [dyp, xp, Part::Whole(Bind::R(hw.buf())), rp, Part::W(&dx, h)];
        dev.launch_rows(self.norm_src()?, "rms_norm_bwd_dx", &b, rows, p, rows_grid)?;
        let b = [dyp, xp, rp, Part::Whole(Bind::W(&dw))];
        dev.launch_rows(NORM, "rms_norm_bwd_dw", &b, rows, p, |_| (h.div_ceil(64) as u32, 1, 1))?;
        Ok((self.tensor(dx, x.dims().to_vec(), DType::F32), self.tensor(dw, w.dims().to_vec(), DType::F32)))
    }
}
