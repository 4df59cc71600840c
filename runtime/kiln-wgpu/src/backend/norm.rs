//! RMSNorm (`shaders/norm.wgsl`) and RoPE (`shaders/rope.wgsl`).

use kiln_core::backend::{NormOps, RopeOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::WgpuBackend;
use crate::runtime::{Bind, Device, Part, device, held, tensor};

const NORM: (&str, &str) = (
    "norm",
    concat!(include_str!("../../../../shaders/norm.wgsl"), include_str!("../../../../shaders/reduce_wg.wgsl")),
);
/// The same kernels reducing with subgroup operations, for adapters that have them.
const NORM_SG: (&str, &str) = (
    "norm_sg",
    concat!(include_str!("../../../../shaders/norm.wgsl"), include_str!("../../../../shaders/reduce_sg.wgsl")),
);

fn norm_src(dev: &Device) -> (&'static str, &'static str) {
    if dev.use_subgroups() { NORM_SG } else { NORM }
}
const ROPE: (&str, &str) = ("rope", include_str!("../../../../shaders/rope.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct NormP {
    rows: u32,
    h: u32,
    eps: f32,
    /// rms_norm_bwd_dw: add to dw (the launches after the first of a split one).
    acc: u32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RopeP {
    pairs: u32,
    heads: u32,
    half: u32,
    sign: f32,
}

fn dims(x: &Tensor, w: &Tensor) -> Result<(usize, usize)> {
    let h = x.shape().last();
    if w.numel() != h {
        return Err(Error::shape("rms_norm", format!("x {:?} with w {:?}", x.shape(), w.shape())));
    }
    Ok((x.shape().rows(), h))
}

/// One workgroup per row, folded into a 2-D grid.
fn rows_grid(rows: usize) -> (u32, u32, u32) {
    let x = rows.clamp(1, 65535);
    (x as u32, rows.div_ceil(x) as u32, 1)
}

impl NormOps for WgpuBackend {
    fn rms_norm_fwd(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let (rows, h) = dims(x, w)?;
        let dev = device()?;
        let (hx, hw) = (held(x)?, held(w)?);
        let (y, rstd) = (dev.alloc((rows * h * 4) as u64)?, dev.alloc((rows * 4) as u64)?);
        let p = |_, n: usize| NormP { rows: n as u32, h: h as u32, eps: eps as f32, acc: 0 };
        let b = [Part::R(hx.buf(), h), Part::Whole(Bind::R(hw.buf())), Part::W(&y, h), Part::W(&rstd, 1)];
        dev.launch_rows(norm_src(dev), "rms_norm_fwd", &b, rows, p, rows_grid)?;
        Ok((tensor(y, x.dims().to_vec(), DType::F32), tensor(rstd, vec![rows], DType::F32)))
    }
    fn rms_norm_bwd(&self, dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)> {
        let (rows, h) = dims(x, w)?;
        if dy.numel() != rows * h || rstd.numel() != rows {
            return Err(Error::shape("rms_norm_bwd", format!("dy {:?}", dy.shape())));
        }
        let dev = device()?;
        let (hdy, hx, hw, hr) = (held(dy)?, held(x)?, held(w)?, held(rstd)?);
        let (dx, dw) = (dev.alloc((rows * h * 4) as u64)?, dev.alloc((h * 4) as u64)?);
        // dw sums over rows: launches after the first add to it.
        let p = |r0: usize, n: usize| NormP { rows: n as u32, h: h as u32, eps: 0.0, acc: u32::from(r0 > 0) };
        let (dyp, xp, rp) = (Part::R(hdy.buf(), h), Part::R(hx.buf(), h), Part::R(hr.buf(), 1));
        let b = [dyp, xp, Part::Whole(Bind::R(hw.buf())), rp, Part::W(&dx, h)];
        dev.launch_rows(norm_src(dev), "rms_norm_bwd_dx", &b, rows, p, rows_grid)?;
        let b = [dyp, xp, rp, Part::Whole(Bind::W(&dw))];
        dev.launch_rows(NORM, "rms_norm_bwd_dw", &b, rows, p, |_| (h.div_ceil(64) as u32, 1, 1))?;
        Ok((tensor(dx, x.dims().to_vec(), DType::F32), tensor(dw, w.dims().to_vec(), DType::F32)))
    }
}

impl RopeOps for WgpuBackend {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, inverse: bool) -> Result<Tensor> {
        let d = x.dims();
        if d.len() != 4 || !d[3].is_multiple_of(2) {
            return Err(Error::shape("rope", format!("x must be [B,T,H,D] with even D, got {d:?}")));
        }
        let (bt, h, half) = (d[0] * d[1], d[2], d[3] / 2);
        if inv_freq.numel() != half || pos.numel() != bt {
            return Err(Error::shape(
                "rope",
                format!("inv_freq {:?}, pos {:?} for x {d:?}", inv_freq.shape(), pos.shape()),
            ));
        }
        let dev = device()?;
        let (hx, hp, hf) = (held(x)?, held(pos)?, held(inv_freq)?);
        let y = dev.alloc((x.numel() * 4) as u64)?;
        let sign = if inverse { -1.0 } else { 1.0 };
        let p = |_, n: usize| RopeP { pairs: (n * h * half) as u32, heads: h as u32, half: half as u32, sign };
        let row = h * 2 * half;
        let b = [Part::R(hx.buf(), row), Part::R(hp.buf(), 1), Part::Whole(Bind::R(hf.buf())), Part::W(&y, row)];
        dev.launch_rows(ROPE, "rope", &b, bt, p, |n| Device::grid(n * h * half))?;
        Ok(tensor(y, d.to_vec(), DType::F32))
    }
}
