//! Cross-entropy over logits rows, forward (log-sum-exp and per-row loss) and backward
//! (`shaders/loss.wgsl`).

use kiln_core::backend::{CeDims, CeOut, LossOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::instance::WgpuBackend;
use super::tensor::{Held, held, i32s};
use crate::runtime::{Device, Part, device};

const LOSS: (&str, &str) = (
    "loss",
    concat!(include_str!("../../../../shaders/loss.wgsl"), include_str!("../../../../shaders/reduce_wg.wgsl")),
);
/// The same kernels reducing with subgroup operations, for adapters that have them.
const LOSS_SG: (&str, &str) = (
    "loss_sg",
    concat!(include_str!("../../../../shaders/loss.wgsl"), include_str!("../../../../shaders/reduce_sg.wgsl")),
);

/// `Params` of loss.wgsl (two counts).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct P2 {
    a: u32,
    b: u32,
    pad: [u32; 2],
}

fn ce_bwd(be: &WgpuBackend, logits: &Tensor, targets: &Tensor, lse: &Tensor, w: Held<'_>) -> Result<Tensor> {
    let dims = CeDims::of(logits, targets)?;
    dims.check_rows("lse", lse)?;
    let CeDims { m, v } = dims;
    let dev = device()?;
    let (hx, ht, hl) = (held(logits)?, held(targets)?, held(lse)?);
    let d = dev.alloc((m * v * 4) as u64)?;
    let p = |_, n: usize| P2 { a: n as u32, b: v as u32, pad: [0; 2] };
    let b = [Part::R(hx.buf(), v), Part::R(ht.buf(), 1), Part::R(hl.buf(), 1), Part::R(w.buf(), 1), Part::W(&d, v)];
    dev.launch_rows(LOSS, "ce_bwd", &b, m, p, |n| Device::grid(n * v))?;
    Ok(be.tensor(d, logits.dims().to_vec(), DType::F32))
}

impl LossOps for WgpuBackend {
    fn cross_entropy_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<CeOut> {
        let CeDims { m, v } = CeDims::of(logits, targets)?;
        let tv = i32s(targets)?;
        if let Some((r, &bad)) = tv.iter().enumerate().find(|&(_, &t)| t >= v as i32) {
            return Err(Error::Msg(format!("cross_entropy: target {bad} in row {r} is outside the vocabulary of {v}")));
        }
        let dev = device()?;
        let (hx, ht) = (held(logits)?, held(targets)?);
        let (lse, nll) = (dev.alloc((m * 4) as u64)?, dev.alloc((m * 4) as u64)?);
        let p = |_, n: usize| P2 { a: n as u32, b: v as u32, pad: [0; 2] };
        let grid = |n: usize| {
            let x = n.clamp(1, 65535);
            (x as u32, n.div_ceil(x) as u32, 1)
        };
        let b = [Part::R(hx.buf(), v), Part::R(ht.buf(), 1), Part::W(&lse, 1), Part::W(&nll, 1)];
        dev.launch_rows(if self.use_subgroups(dev) { LOSS_SG } else { LOSS }, "ce_fwd", &b, m, p, grid)?;
        let nll = self.tensor(nll, vec![m], DType::F32);
        let n_valid = tv.iter().filter(|&&t| t >= 0).count();
        let sum: f64 = nll.to_vec_f64()?.iter().sum();
        let loss = if n_valid == 0 { 0.0 } else { sum / n_valid as f64 };
        Ok(CeOut { loss, n_valid, lse: self.tensor(lse, vec![m], DType::F32), nll })
    }
    fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: f64,
        n_valid: usize,
    ) -> Result<Tensor> {
        let m = logits.shape().rows();
        let g = if n_valid == 0 { 0.0 } else { dloss / n_valid as f64 } as f32;
        let w = device()?.write(bytemuck::cast_slice(&vec![g; m]))?;
        ce_bwd(self, logits, targets, lse, Held::Copy(w))
    }
    fn cross_entropy_bwd_rows(&self, logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor> {
        CeDims::of(logits, targets)?.check_rows("row weights", drow)?;
        ce_bwd(self, logits, targets, lse, held(drow)?)
    }
}
