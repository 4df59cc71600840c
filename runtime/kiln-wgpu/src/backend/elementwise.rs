//! Elementwise ops and Σx² (`shaders/elementwise.wgsl`).

use kiln_core::backend::{ElementwiseOps, GluOps};
use kiln_core::{Error, Result, Tensor};

use super::{ELEMENTWISE, P1, WgpuBackend};
use crate::runtime::{Bind, Device, Part, device, held, tensor};

fn same(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.dims(), b.dims())));
    }
    Ok(())
}

fn binary(entry: &'static str, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    same(entry, a, b)?;
    let dev = device()?;
    let (ha, hb) = (held(a)?, held(b)?);
    let n = a.numel();
    let y = dev.alloc((n * 4) as u64)?;
    let parts = [Part::R(ha.buf(), 1), Part::R(hb.buf(), 1), Part::W(&y, 1)];
    dev.launch_rows(ELEMENTWISE, entry, &parts, n, |_, n| P1::n(n), Device::grid)?;
    Ok(tensor(y, a.shape().clone(), a.dtype()))
}

impl ElementwiseOps for WgpuBackend {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary("add", a, b)
    }
    fn scale(&self, a: &Tensor, s: f64) -> Result<Tensor> {
        let dev = device()?;
        let ha = held(a)?;
        let n = a.numel();
        let y = dev.alloc((n * 4) as u64)?;
        let p = |_, n| P1 { s: s as f32, ..P1::n(n) };
        dev.launch_rows(ELEMENTWISE, "scale", &[Part::R(ha.buf(), 1), Part::W(&y, 1)], n, p, Device::grid)?;
        Ok(tensor(y, a.shape().clone(), a.dtype()))
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary("mul", a, b)
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

impl GluOps for WgpuBackend {
    fn swiglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        binary("swiglu_fwd", g, u)
    }
    fn swiglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        same("swiglu_bwd", g, u)?;
        same("swiglu_bwd", g, dy)?;
        let dev = device()?;
        let (hg, hu, hd) = (held(g)?, held(u)?, held(dy)?);
        let n = g.numel();
        let (dg, du) = (dev.alloc((n * 4) as u64)?, dev.alloc((n * 4) as u64)?);
        let b = [Part::R(hg.buf(), 1), Part::R(hu.buf(), 1), Part::R(hd.buf(), 1), Part::W(&dg, 1), Part::W(&du, 1)];
        dev.launch_rows(ELEMENTWISE, "swiglu_bwd", &b, n, |_, n| P1::n(n), Device::grid)?;
        Ok((tensor(dg, g.shape().clone(), g.dtype()), tensor(du, g.shape().clone(), g.dtype())))
    }
    fn geglu_fwd(&self, _g: &Tensor, _u: &Tensor) -> Result<Tensor> {
        Err(Error::Msg("geglu: no WGSL kernel yet".into()))
    }
    fn geglu_bwd(&self, _g: &Tensor, _u: &Tensor, _dy: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(Error::Msg("geglu_bwd: no WGSL kernel yet".into()))
    }
}
