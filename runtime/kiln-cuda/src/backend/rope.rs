//! RoPE (`Op::Rope`) on kernels/rope.cu, partial rotary included (`RopeDims::r` < `D`).

use kiln_core::backend::{RopeDims, RopeOps};
use kiln_core::{Result, Tensor};

use super::launch::grid_of;
use super::{KernelBackend, act_type};
use crate::kernels::RopeParams;

impl RopeOps for KernelBackend {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, mscale: f32, inverse: bool) -> Result<Tensor> {
        let (dt, ty) = act_type("rope", x)?;
        let RopeDims { bt, h, d: hd, r } = RopeDims::of(x, pos, inv_freq)?;
        let (hx, hp, hf) = (self.held(x)?, self.held(pos)?, self.held(inv_freq)?);
        let y = self.alloc(x.numel(), dt)?;
        let p = RopeParams {
            x: hx.ptr(),
            pos: hp.ptr(),
            inv_freq: hf.ptr(),
            y: y.ptr,
            bt: bt as i64,
            h: h as i32,
            d: hd as i32,
            sign: if inverse { -1.0 } else { 1.0 },
            rh: (r / 2) as i32,
            mscale,
            _pad: 0,
        };
        // A thread per rotated pair or copied dim: D − r/2 of them per head.
        self.exec.launch(&format!("rope_{ty}"), grid_of(bt * h * (hd - r / 2), 256), bytemuck::bytes_of(&p))?;
        Ok(self.wrap(y, x.dims().to_vec(), dt))
    }
}
