//! Cross-entropy with ignored targets (`Op::CrossEntropy`) on kernels/loss.cu.

use kiln_core::backend::{CeDims, CeOut, LossOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::launch::grid_of;
use super::{Held, KernelBackend, want_f32};
use crate::exec::Launch;
use crate::kernels::CeParams;

/// The sizes of a cross-entropy, after the checks every backend makes ([`CeDims::of`]) and the
/// types the kernels read (f32 logits, i32 targets).
fn ce_dims(logits: &Tensor, targets: &Tensor) -> Result<CeDims> {
    let d = CeDims::of(logits, targets)?;
    if targets.dtype() != DType::I32 {
        return Err(Error::shape("cross_entropy", format!("{} targets (i32 expected)", targets.dtype().name())));
    }
    want_f32("cross_entropy", logits)?;
    Ok(d)
}

fn ce_bwd(be: &KernelBackend, logits: &Tensor, targets: &Tensor, lse: &Tensor, g: Held<'_>) -> Result<Tensor> {
    let d = ce_dims(logits, targets)?;
    d.check_rows("lse", lse)?;
    let CeDims { m, v } = d;
    let (hx, ht, hl) = (be.held(logits)?, be.held(targets)?, be.held(lse)?);
    let dx = be.alloc(m * v, DType::F32)?;
    let p = CeParams {
        x: hx.ptr(),
        t: ht.ptr(),
        lse: hl.ptr(),
        g: g.ptr(),
        out0: dx.ptr,
        out1: 0,
        m: m as i64,
        v: v as i32,
        s: 0.0,
    };
    if m * v > 0 {
        be.exec.launch("ce_bwd_f32", grid_of(m * v, 256), bytemuck::bytes_of(&p))?;
    }
    Ok(be.wrap(dx, logits.dims().to_vec(), DType::F32))
}

impl LossOps for KernelBackend {
    fn cross_entropy_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<CeOut> {
        let CeDims { m, v } = ce_dims(logits, targets)?;
        let tv = targets.to_cpu()?.as_slice::<i32>()?.to_vec();
        kiln_core::backend::check_targets("cross_entropy", &tv, v)?;
        let (hx, ht) = (self.held(logits)?, self.held(targets)?);
        let (lse, nll) = (self.alloc(m, DType::F32)?, self.alloc(m, DType::F32)?);
        let p = CeParams {
            x: hx.ptr(),
            t: ht.ptr(),
            lse: 0,
            g: 0,
            out0: lse.ptr,
            out1: nll.ptr,
            m: m as i64,
            v: v as i32,
            s: 0.0,
        };
        if m > 0 {
            self.exec.launch("ce_fwd_f32", Launch::linear(m, 256), bytemuck::bytes_of(&p))?;
        }
        let nll = self.wrap(nll, [m], DType::F32);
        let n_valid = tv.iter().filter(|&&t| t >= 0).count();
        let sum: f64 = nll.to_vec_f64()?.iter().sum();
        let loss = if n_valid == 0 { 0.0 } else { sum / n_valid as f64 };
        Ok(CeOut { loss, n_valid, lse: self.wrap(lse, [m], DType::F32), nll })
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
        let w = self.exec.upload(bytemuck::cast_slice(&vec![g; m.max(1)]))?;
        ce_bwd(self, logits, targets, lse, Held::Owned(w))
    }
    fn cross_entropy_bwd_rows(&self, logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor> {
        ce_dims(logits, targets)?.check_rows("row weights", drow)?;
        want_f32("cross_entropy_bwd_rows", drow)?;
        ce_bwd(self, logits, targets, lse, self.held(drow)?)
    }
}

/// Rows of logits and of their gradient (f32) a chunk of the fused LM head may hold together.
const LOSS_CHUNK_BYTES: usize = 1 << 30;

/// [`Backend::loss_chunk_rows`](kiln_core::Backend::loss_chunk_rows) on a GPU: as many rows as
/// keep a chunk's logits and dlogits within 1 GiB (1024 rows at Llama 3's 128 256 tokens, 2688
/// at SmolLM2's 49 152), a multiple of 128, 128 … 8192: the head's GEMMs then fill the device.
pub(super) fn loss_chunk_rows(vocab: usize) -> usize {
    (LOSS_CHUNK_BYTES / (8 * vocab.max(1)) / 128 * 128).clamp(128, 8192)
}

/// [`Backend::cross_entropy_chunk`](kiln_core::Backend::cross_entropy_chunk): one kernel, no
/// read-back (the caller checked the targets).
pub(super) fn cross_entropy_chunk(
    be: &KernelBackend,
    logits: &Tensor,
    targets: &Tensor,
    grad: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    let CeDims { m, v } = ce_dims(logits, targets)?;
    let (hx, ht) = (be.held(logits)?, be.held(targets)?);
    let nll = be.alloc(m, DType::F32)?;
    let dx = grad.map(|_| be.alloc(m * v, DType::F32)).transpose()?;
    let p = CeParams {
        x: hx.ptr(),
        t: ht.ptr(),
        lse: 0,
        g: 0,
        out0: dx.as_ref().map_or(0, |d| d.ptr),
        out1: nll.ptr,
        m: m as i64,
        v: v as i32,
        s: grad.unwrap_or(0.0) as f32,
    };
    if m > 0 {
        be.exec.launch("ce_chunk_f32", Launch::linear(m, 256), bytemuck::bytes_of(&p))?;
    }
    Ok((be.wrap(nll, [m], DType::F32), dx.map(|d| be.wrap(d, logits.dims().to_vec(), DType::F32))))
}

/// [`Backend::loss_sum`](kiln_core::Backend::loss_sum) in one block of 1024 threads.
pub(super) fn loss_sum(be: &KernelBackend, acc: Option<&Tensor>, nll: &Tensor, s: f64) -> Result<Tensor> {
    want_f32("loss_sum", nll)?;
    if let Some(a) = acc {
        want_f32("loss_sum", a)?;
        if a.numel() != 1 {
            return Err(Error::shape("loss_sum", format!("a running sum of {} elements", a.numel())));
        }
    }
    let (hx, ha) = (be.held(nll)?, acc.map(|a| be.held(a)).transpose()?);
    let out = be.alloc(1, DType::F32)?;
    let p = CeParams {
        x: hx.ptr(),
        t: 0,
        lse: ha.map_or(0, |h| h.ptr()),
        g: 0,
        out0: out.ptr,
        out1: 0,
        m: nll.numel() as i64,
        v: 0,
        s: s as f32,
    };
    be.exec.launch("loss_sum_f32", Launch { grid: [1, 1, 1], block: [1024, 1, 1], smem: 0 }, bytemuck::bytes_of(&p))?;
    Ok(be.wrap(out, [1], DType::F32))
}
