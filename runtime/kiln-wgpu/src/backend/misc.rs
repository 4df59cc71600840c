//! Embedding (`shaders/embedding.wgsl`), cross-entropy (`shaders/loss.wgsl`) and AdamW
//! (`shaders/optim.wgsl`).

use kiln_core::backend::{AdamWStep, CeOut, EmbeddingOps, LossOps, OptimOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::WgpuBackend;
use crate::runtime::{Bind, Device, Held, Part, device, held, tensor};

const EMB: (&str, &str) = ("embedding", include_str!("../../../../shaders/embedding.wgsl"));
/// The lookup from packed (16-bit or block-quantized) tables.
const EMB_Q: (&str, &str) = (
    "embedding_q",
    concat!(
        include_str!("../../../../shaders/embedding.wgsl"),
        include_str!("../../../../shaders/embedding_q.wgsl"),
        include_str!("../../../../shaders/dequant_decode.wgsl")
    ),
);
const LOSS: (&str, &str) = (
    "loss",
    concat!(include_str!("../../../../shaders/loss.wgsl"), include_str!("../../../../shaders/reduce_wg.wgsl")),
);
const OPTIM: (&str, &str) = ("optim", include_str!("../../../../shaders/optim.wgsl"));
/// The same kernels reducing with subgroup operations, for adapters that have them.
const LOSS_SG: (&str, &str) = (
    "loss_sg",
    concat!(include_str!("../../../../shaders/loss.wgsl"), include_str!("../../../../shaders/reduce_sg.wgsl")),
);

/// `Params` of embedding.wgsl and loss.wgsl (two counts).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct P2 {
    a: u32,
    b: u32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamP {
    n: u32,
    b1: f32,
    b2: f32,
    decay: f32,
    step: f32,
    bc2s: f32,
    eps: f32,
    pad: u32,
}

fn i32s(t: &Tensor) -> Result<Vec<i32>> {
    Ok(t.to_cpu()?.as_slice::<i32>()?.to_vec())
}

fn check_ids(ids: &[i32], vocab: usize) -> Result<()> {
    if let Some((i, &bad)) = ids.iter().enumerate().find(|&(_, &t)| t < 0 || t as usize >= vocab) {
        return Err(Error::Msg(format!("embedding: id {bad} at position {i} is outside the vocabulary of {vocab}")));
    }
    Ok(())
}

/// `Params` of embedding.wgsl.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EmbP {
    n: u32,
    h: u32,
    r0: u32,
    r1: u32,
    off: u32,
    ty: u32,
    block: u32,
    bytes: u32,
}

impl EmbP {
    /// `n` tokens of width `h` against table rows r0..r1 bound at element offset `off`; an f32
    /// table (packed ones set ty, block and bytes).
    fn rows(n: usize, h: usize, r0: usize, r1: usize, off: u32) -> EmbP {
        EmbP { n: n as u32, h: h as u32, r0: r0 as u32, r1: r1 as u32, off, ty: 0, block: 0, bytes: 0 }
    }
}

/// Table rows per launch: all of them when the table fits a binding, else as many as fit,
/// starting at aligned offsets (and, for a packed table, at whole blocks).
fn table_rows(dev: &Device, v: usize, row_bytes: f64, step: usize) -> Result<usize> {
    let align = u64::from(dev.limits.min_storage_buffer_offset_alignment).max(4);
    let budget = dev.max_binding().saturating_sub(align) as f64;
    if v as f64 * row_bytes <= budget {
        return Ok(v.max(1));
    }
    let rows = (budget / row_bytes) as usize / step * step;
    if rows == 0 {
        return Err(Error::Msg(format!(
            "wgpu embedding: {step} table rows of {row_bytes} bytes exceed {}'s storage binding limit",
            dev.info.name
        )));
    }
    Ok(rows)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl EmbeddingOps for WgpuBackend {
    fn embedding_fwd(&self, w: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (v, h) = (w.shape().rows(), w.shape().last());
        check_ids(&i32s(ids)?, v)?;
        let n = ids.numel();
        let dev = device()?;
        let hi = held(ids)?;
        let y = dev.alloc((n * h * 4) as u64)?;
        // A packed table (16-bit or block-quantized) is decoded where it is read.
        let packed = match w.dtype() {
            DType::F16 => Some((1, 1, 2)),
            DType::BF16 => Some((30, 1, 2)),
            DType::Quant(t) => {
                let id = super::quant::kernel_id(t)
                    .ok_or_else(|| Error::Msg(format!("wgpu embedding: no decoder for {} tables", t.name())))?;
                let (block, bytes) = t.block();
                Some((id, block, bytes))
            }
            _ => None,
        };
        let (hw, raw);
        let (table, rows, src, entry) = match packed {
            None => {
                hw = held(w)?;
                (hw.buf(), table_rows(dev, v, (h * 4) as f64, 1)?, EMB, "embedding_fwd")
            }
            Some((_, block, bytes)) => {
                raw = super::packed(w, dev)?;
                let b = match &raw {
                    Ok(b) => *b,
                    Err(b) => b,
                };
                // Chunks start on whole blocks (rows·h a multiple of the block).
                let step = block / gcd(block, h);
                let per_row = h as f64 / block as f64 * bytes as f64;
                (b, table_rows(dev, v, per_row, step)?, EMB_Q, "embedding_fwd_q")
            }
        };
        let (ty, block, bytes) = packed.map_or((0, 1, 4), |(i, b, y)| (i, b, y));
        for r0 in (0..v.max(1)).step_by(rows) {
            let r1 = (r0 + rows).min(v);
            let (at, size, off) = if packed.is_some() {
                let (x, z) = ((r0 * h / block * bytes) as u64, ((r1 * h).div_ceil(block) * bytes) as u64);
                crate::runtime::sub_range(dev, x, z - x, 1)
            } else {
                crate::runtime::sub_range(dev, (r0 * h) as u64, ((r1 - r0) * h) as u64, 4)
            };
            let p =
                |_, n: usize| EmbP { ty, block: block as u32, bytes: bytes as u32, ..EmbP::rows(n, h, r0, r1, off) };
            let parts = [Part::Whole(Bind::RAt(table, at, size)), Part::R(hi.buf(), 1), Part::W(&y, h)];
            dev.launch_rows(src, entry, &parts, n, p, |n| Device::grid(n * h))?;
        }
        Ok(tensor(y, vec![n, h], DType::F32))
    }
    fn embedding_bwd(&self, dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
        let (n, h) = (ids.numel(), dy.shape().last());
        if dy.numel() != n * h {
            return Err(Error::shape("embedding_bwd", format!("dy {:?} for {n} ids", dy.shape())));
        }
        check_ids(&i32s(ids)?, vocab)?;
        let dev = device()?;
        let (hd, hi) = (held(dy)?, held(ids)?);
        let dw = dev.write(&vec![0u8; vocab * h * 4])?;
        let rows = table_rows(dev, vocab, (h * 4) as f64, 1)?;
        for r0 in (0..vocab.max(1)).step_by(rows) {
            let r1 = (r0 + rows).min(vocab);
            let (at, size, off) = crate::runtime::sub_range(dev, (r0 * h) as u64, ((r1 - r0) * h) as u64, 4);
            let p = |_, n: usize| EmbP::rows(n, h, r0, r1, off);
            // Token chunks (where dy is larger than a binding) add into dw in order.
            let parts = [Part::R(hd.buf(), h), Part::R(hi.buf(), 1), Part::Whole(Bind::WAt(&dw, at, size))];
            dev.launch_rows(EMB, "embedding_bwd", &parts, n, p, |_| (h.div_ceil(64) as u32, 1, 1))?;
        }
        Ok(tensor(dw, vec![vocab, h], DType::F32))
    }
}

fn ce_dims(logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    let (m, v) = (logits.shape().rows(), logits.shape().last());
    if targets.numel() != m {
        return Err(Error::shape(
            "cross_entropy",
            format!("logits {:?}, targets {:?}", logits.shape(), targets.shape()),
        ));
    }
    Ok((m, v))
}

fn ce_bwd(logits: &Tensor, targets: &Tensor, lse: &Tensor, w: Held<'_>) -> Result<Tensor> {
    let (m, v) = ce_dims(logits, targets)?;
    let dev = device()?;
    let (hx, ht, hl) = (held(logits)?, held(targets)?, held(lse)?);
    let d = dev.alloc((m * v * 4) as u64)?;
    let p = |_, n: usize| P2 { a: n as u32, b: v as u32, pad: [0; 2] };
    let b = [Part::R(hx.buf(), v), Part::R(ht.buf(), 1), Part::R(hl.buf(), 1), Part::R(w.buf(), 1), Part::W(&d, v)];
    dev.launch_rows(LOSS, "ce_bwd", &b, m, p, |n| Device::grid(n * v))?;
    Ok(tensor(d, logits.dims().to_vec(), DType::F32))
}

impl LossOps for WgpuBackend {
    fn cross_entropy_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<CeOut> {
        let (m, v) = ce_dims(logits, targets)?;
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
        dev.launch_rows(if dev.use_subgroups() { LOSS_SG } else { LOSS }, "ce_fwd", &b, m, p, grid)?;
        let nll = tensor(nll, vec![m], DType::F32);
        let n_valid = tv.iter().filter(|&&t| t >= 0).count();
        let sum: f64 = nll.to_vec_f64()?.iter().sum();
        let loss = if n_valid == 0 { 0.0 } else { sum / n_valid as f64 };
        Ok(CeOut { loss, n_valid, lse: tensor(lse, vec![m], DType::F32), nll })
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
        ce_bwd(logits, targets, lse, Held::Copy(w))
    }
    fn cross_entropy_bwd_rows(&self, logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor> {
        if drow.numel() != logits.shape().rows() {
            return Err(Error::shape(
                "cross_entropy_bwd_rows",
                format!("{:?} weights for {:?}", drow.shape(), logits.shape()),
            ));
        }
        ce_bwd(logits, targets, lse, held(drow)?)
    }
}

impl OptimOps for WgpuBackend {
    fn adamw_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: AdamWStep,
    ) -> Result<()> {
        let n = param.numel();
        if grad.numel() != n || m.numel() != n || v.numel() != n {
            return Err(Error::shape("adamw", format!("param {:?}, grad {:?}", param.shape(), grad.shape())));
        }
        let dev = device()?;
        let f = hp.factors();
        let p = |_, n: usize| AdamP {
            n: n as u32,
            b1: hp.beta1 as f32,
            b2: hp.beta2 as f32,
            decay: f.decay,
            step: f.step,
            bc2s: f.bc2s,
            eps: hp.eps as f32,
            pad: 0,
        };
        // In place: a view (never the case for parameters) is first made a tensor of its own.
        for t in [&mut *param, &mut *m, &mut *v] {
            let copy = match held(t)? {
                Held::Copy(b) => Some(b),
                Held::Own(_) => None,
            };
            if let Some(b) = copy {
                *t = tensor(b, t.dims().to_vec(), DType::F32);
            }
        }
        let (hg, hp_, hm, hv) = (held(grad)?, held(param)?, held(m)?, held(v)?);
        let b = [Part::R(hg.buf(), 1), Part::W(hp_.buf(), 1), Part::W(hm.buf(), 1), Part::W(hv.buf(), 1)];
        dev.launch_rows(OPTIM, "adamw", &b, n, p, Device::grid)
    }
}
