//! Rotary position embedding (`shaders/rope.wgsl`), forward and (as the inverse rotation)
//! backward, partial rotary included (`RopeDims::r` < `D`).

use kiln_core::backend::{RopeDims, RopeOps};
use kiln_core::{DType, Result, Tensor};

use super::instance::WgpuBackend;
use super::tensor::held;
use crate::runtime::{Bind, Device, Part, device};

const ROPE: (&str, &str) = ("rope", include_str!("../../../../shaders/rope.wgsl"));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RopeP {
    items: u32,
    heads: u32,
    d: u32,
    rh: u32,
    sign: f32,
    mscale: f32,
    pad: [u32; 2],
}

impl RopeOps for WgpuBackend {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, mscale: f32, inverse: bool) -> Result<Tensor> {
        let RopeDims { bt, h, d, r } = RopeDims::of(x, pos, inv_freq)?;
        // A thread per rotated pair or copied dim: D − r/2 items per head.
        let (rh, per) = (r / 2, d - r / 2);
        let dev = device()?;
        let (hx, hp, hf) = (held(x)?, held(pos)?, held(inv_freq)?);
        let y = dev.alloc((x.numel() * 4) as u64)?;
        let sign = if inverse { -1.0 } else { 1.0 };
        let p = |_, n: usize| RopeP {
            items: (n * h * per) as u32,
            heads: h as u32,
            d: d as u32,
            rh: rh as u32,
            sign,
            mscale,
            pad: [0; 2],
        };
        let row = h * d;
        let b = [Part::R(hx.buf(), row), Part::R(hp.buf(), 1), Part::Whole(Bind::R(hf.buf())), Part::W(&y, row)];
        dev.launch_rows(ROPE, "rope", &b, bt, p, |n| Device::grid(n * h * per))?;
        Ok(self.tensor(y, x.dims().to_vec(), DType::F32))
    }
}
