//! Elementwise ops (soft-capping among them), Σx², and the kernels of casts: a copy and the
//! f32 → bf16/f16 rounding (`shaders/elementwise.wgsl`).

use kiln_core::backend::ElementwiseOps;
use kiln_core::{DType, Error, Result, Tensor};

use super::instance::WgpuBackend;
use super::tensor::held;
use crate::runtime::{Bind, Device, Part, device};

pub(crate) const ELEMENTWISE: (&str, &str) = ("elementwise", include_str!("../../../../shaders/elementwise.wgsl"));

/// Parameters of the 1-D kernels (`shaders/elementwise.wgsl` and `shaders/glu.wgsl` `Params`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct P1 {
    pub n: u32,
    pub s: f32,
    pub threads: u32,
    pub pad: u32,
}

impl P1 {
    pub(crate) fn n(n: usize) -> P1 {
        P1 { n: n as u32, s: 0.0, threads: 0, pad: 0 }
    }
}

/// Checks that `a` and `b` have the same dims.
pub(crate) fn same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.dims(), b.dims())));
    }
    Ok(())
}

/// `y = a ⊕ b` by the entry point `entry` of `src`, one thread per element.
pub(crate) fn binary(
    be: &WgpuBackend,
    src: (&'static str, &'static str),
    entry: &'static str,
    a: &Tensor,
    b: &Tensor,
) -> Result<Tensor> {
    same(entry, a, b)?;
    let dev = device()?;
    let (ha, hb) = (held(a)?, held(b)?);
    let n = a.numel();
    let y = dev.alloc((n * 4) as u64)?;
    let parts = [Part::R(ha.buf(), 1), Part::R(hb.buf(), 1), Part::W(&y, 1)];
    dev.launch_rows(src, entry, &parts, n, |_, n| P1::n(n), Device::grid)?;
    Ok(be.tensor(y, a.shape().clone(), a.dtype()))
}

/// `t` (f32 on the device) rounded to nearest even into a 16-bit tensor of `dtype`.
pub(crate) fn round16(be: &WgpuBackend, dev: &Device, t: &Tensor, dtype: DType) -> Result<Tensor> {
    let n = t.numel();
    let x = held(t)?;
    let y = dev.alloc((n * 2) as u64)?;
    let mode = u32::from(dtype == DType::F16);
    // "Rows" of two values: two input words, one output word.
    let p = |r0: usize, rows: usize| P1 { threads: mode, ..P1::n((2 * rows).min(n - 2 * r0)) };
    let parts = [Part::R(x.buf(), 2), Part::W(&y, 1)];
    dev.launch_rows(ELEMENTWISE, "round16", &parts, n.div_ceil(2), p, Device::grid)?;
    Ok(be.tensor(y, t.shape().clone(), dtype))
}

/// A new device tensor holding `t`'s elements copied by `copy` (same shape and dtype).
pub(crate) fn dup(be: &WgpuBackend, dev: &Device, t: &Tensor) -> Result<Tensor> {
    let a = held(t)?;
    let y = dev.alloc((t.numel() * 4) as u64)?;
    let parts = [Part::R(a.buf(), 1), Part::W(&y, 1)];
    dev.launch_rows(ELEMENTWISE, "copy", &parts, t.numel(), |_, n| P1::n(n), Device::grid)?;
    Ok(be.tensor(y, t.shape().clone(), t.dtype()))
}

/// `cap·tanh(x/cap)` (`dy` None) or its gradient `dy·(1 − tanh²(x/cap))`, one thread per
/// element.
fn softcap(be: &WgpuBackend, x: &Tensor, dy: Option<&Tensor>, cap: f64) -> Result<Tensor> {
    let c = cap as f32;
    if !(cap.is_finite() && c.is_finite() && c > 0.0) {
        return Err(Error::Msg(format!("softcap: the cap {cap} must be a positive number")));
    }
    if let Some(d) = dy {
        same("softcap_bwd", x, d)?;
    }
    let dev = device()?;
    let hx = held(x)?;
    let hd = dy.map(held).transpose()?;
    let n = x.numel();
    let y = dev.alloc((n * 4) as u64)?;
    let p = |_, n| P1 { s: c, ..P1::n(n) };
    match &hd {
        None => {
            let parts = [Part::R(hx.buf(), 1), Part::W(&y, 1)];
            dev.launch_rows(ELEMENTWISE, "softcap_fwd", &parts, n, p, Device::grid)?
        }
        Some(hd) => {
            let parts = [Part::R(hx.buf(), 1), Part::R(hd.buf(), 1), Part::W(&y, 1)];
            dev.launch_rows(ELEMENTWISE, "softcap_bwd", &parts, n, p, Device::grid)?
        }
    }
    Ok(be.tensor(y, x.shape().clone(), DType::F32))
}

impl ElementwiseOps for WgpuBackend {
    fn softcap_fwd(&self, x: &Tensor, cap: f64) -> Result<Tensor> {
        softcap(self, x, None, cap)
    }
    fn softcap_bwd(&self, x: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor> {
        softcap(self, x, Some(dy), cap)
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, ELEMENTWISE, "add", a, b)
    }
    fn scale(&self, a: &Tensor, s: f64) -> Result<Tensor> {
        let dev = device()?;
        let ha = held(a)?;
        let n = a.numel();
        let y = dev.alloc((n * 4) as u64)?;
        let p = |_, n| P1 { s: s as f32, ..P1::n(n) };
        dev.launch_rows(ELEMENTWISE, "scale", &[Part::R(ha.buf(), 1), Part::W(&y, 1)], n, p, Device::grid)?;
        Ok(self.tensor(y, a.shape().clone(), a.dtype()))
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, ELEMENTWISE, "mul", a, b)
    }
    fn sum_squares(&self, a: &Tensor) -> Result<f64> {
        let dev = device()?;
        let ha = held(a)?;
        let total = a.numel();
        // Arrays over the binding limit are summed in aligned chunks.
        let align = u64::from(dev.limits.min_storage_buffer_offset_alignment).max(4);
        let chunk = ((dev.max_binding() - align) / align * align / 4) as usize;
        let mut sum = 0.0;
        for start in (0..total.max(1)).step_by(chunk) {
            let n = chunk.min(total - start.min(total));
            // At most 256 workgroups of 64 threads striding over the array: ≤ 256 partials to add.
            let groups = (n.div_ceil(64)).clamp(1, 256) as u32;
            let part = dev.alloc(groups as u64 * 4)?;
            let p = P1 { threads: groups * 64, ..P1::n(n) };
            let x = Bind::RAt(ha.buf(), (start * 4) as u64, (n * 4) as u64);
            dev.launch(ELEMENTWISE, "sum_squares", &p, &[x, Bind::W(&part)], (groups, 1, 1))?;
            let bytes = dev.read(part.raw(), 0, groups as u64 * 4)?;
            let v: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes);
            sum += v.iter().map(|&x| x as f64).sum::<f64>();
        }
        Ok(sum)
    }
}
