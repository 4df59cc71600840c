//! Embedding lookup and its gradient (`shaders/embedding.wgsl`, and `shaders/embedding_q.wgsl`
//! for packed 16-bit or block-quantized tables, decoded where they are read).

use kiln_core::backend::EmbeddingOps;
use kiln_core::{DType, Error, Result, Tensor};

use super::instance::WgpuBackend;
use super::quant;
use super::tensor::{self, held, i32s};
use crate::runtime::{Bind, Device, Part, device, sub_range};

const EMB: (&str, &str) = ("embedding", include_str!("../../../../shaders/embedding.wgsl"));
/// The lookup from packed (16-bit or block-quantized) tables.
const EMB_Q: (&str, &str) = (
    "embedding_q",
    concat!(
        include_str!("../../../../shaders/embedding.wgsl"),
        include_str!("../../../../shaders/embedding_q.wgsl"),
        include_str!("../../../../shaders/quant_decode.wgsl")
    ),
);

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
                let id = quant::kernel_id(t)
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
                raw = tensor::packed(w, dev)?;
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
                sub_range(dev, x, z - x, 1)
            } else {
                sub_range(dev, (r0 * h) as u64, ((r1 - r0) * h) as u64, 4)
            };
            let p =
                |_, n: usize| EmbP { ty, block: block as u32, bytes: bytes as u32, ..EmbP::rows(n, h, r0, r1, off) };
            let parts = [Part::Whole(Bind::RAt(table, at, size)), Part::R(hi.buf(), 1), Part::W(&y, h)];
            dev.launch_rows(src, entry, &parts, n, p, |n| Device::grid(n * h))?;
        }
        Ok(self.tensor(y, vec![n, h], DType::F32))
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
            let (at, size, off) = sub_range(dev, (r0 * h) as u64, ((r1 - r0) * h) as u64, 4);
            let p = |_, n: usize| EmbP::rows(n, h, r0, r1, off);
            // Token chunks (where dy is larger than a binding) add into dw in order.
            let parts = [Part::R(hd.buf(), h), Part::R(hi.buf(), 1), Part::Whole(Bind::WAt(&dw, at, size))];
            dev.launch_rows(EMB, "embedding_bwd", &parts, n, p, |_| (h.div_ceil(64) as u32, 1, 1))?;
        }
        Ok(self.tensor(dw, vec![vocab, h], DType::F32))
    }
}
