//! RMSNorm (`Op::RmsNorm`) on kernels/norm.cu.

use kiln_core::backend::{NormDims, NormOps};
use kiln_core::{DType, Result, Tensor};

use super::launch::grid_of;
use super::{KernelBackend, act_type, act_types, want_f32};
use crate::exec::Launch;
use crate::kernels::NormParams;

impl NormOps for KernelBackend {
    fn rms_norm_fwd(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        let (dt, ty) = act_type("rms_norm x", x)?;
        want_f32("rms_norm w", w)?;
        let NormDims { rows, h } = NormDims::of(x, w)?;
        let (hx, hw) = (self.held(x)?, self.held(w)?);
        let (y, rstd) = (self.alloc(rows * h, dt)?, self.alloc(rows, DType::F32)?);
        let p = NormParams {
            x: hx.ptr(),
            w: hw.ptr(),
            dy: 0,
            rstd: 0,
            y: y.ptr,
            rstd_out: rstd.ptr,
            rows: rows as i64,
            h: h as i32,
            eps: eps as f32,
        };
        if rows > 0 {
            self.exec.launch(&format!("rms_norm_fwd_{ty}"), Launch::linear(rows, 256), bytemuck::bytes_of(&p))?;
        }
        Ok((self.wrap(y, x.dims().to_vec(), dt), self.wrap(rstd, [rows], DType::F32)))
    }
    fn rms_norm_bwd(&self, dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)> {
        let d = NormDims::of(x, w)?;
        d.check_bwd(dy, rstd)?;
        let NormDims { rows, h } = d;
        let (dt, ty) = act_types("rms_norm", x, &[dy])?;
        want_f32("rms_norm w", w)?;
        let (hd, hx, hw, hr) = (self.held(dy)?, self.held(x)?, self.held(w)?, self.held(rstd)?);
        let (dx, dw) = (self.alloc(rows * h, dt)?, self.alloc(h, DType::F32)?);
        let mut p = NormParams {
            x: hx.ptr(),
            w: hw.ptr(),
            dy: hd.ptr(),
            rstd: hr.ptr(),
            y: dx.ptr,
            rstd_out: 0,
            rows: rows as i64,
            h: h as i32,
            eps: 0.0,
        };
        if rows > 0 {
            self.exec.launch(&format!("rms_norm_bwd_dx_{ty}"), Launch::linear(rows, 256), bytemuck::bytes_of(&p))?;
        }
        p.y = dw.ptr;
        self.exec.launch(&format!("rms_norm_bwd_dw_{ty}"), grid_of(h, 256), bytemuck::bytes_of(&p))?;
        Ok((self.wrap(dx, x.dims().to_vec(), dt), self.wrap(dw, w.dims().to_vec(), DType::F32)))
    }
}
