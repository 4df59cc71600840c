//! The embedding (`Op::Embedding`): row gather from f32, 16-bit or block-quantized tables, and
//! the scatter-add backward, on kernels/embedding.cu.

use kiln_core::backend::EmbeddingOps;
use kiln_core::{DType, Error, Result, Tensor};

use super::launch::type_name;
use super::{KernelBackend, want_f32};
use crate::exec::Launch;
use crate::kernels::EmbParams;

/// `1 + row` of the first out-of-range id, which the kernels leave in `err`, as the CPU's error.
/// Ids still on the host (a training batch) are checked there instead: no read-back, so the
/// step does not wait for the device.
fn check_err(be: &KernelBackend, err: &crate::exec::DevBuf, ids: &Tensor, vocab: usize) -> Result<()> {
    if let kiln_core::tensor::Storage::Cpu(_) = ids.storage() {
        return kiln_core::backend::check_token_ids(ids.as_slice::<i32>()?, vocab);
    }
    let e = bytemuck::pod_read_unaligned::<i32>(&be.exec.download(err, 0, 4)?);
    if e == 0 {
        return Ok(());
    }
    let row = (e - 1) as usize;
    let bad = ids.to_cpu()?.as_slice::<i32>()?.get(row).copied().unwrap_or(-1);
    Err(Error::Msg(format!("embedding: token id {bad} at position {row} is outside the vocabulary of {vocab}")))
}

impl EmbeddingOps for KernelBackend {
    fn embedding_fwd(&self, w: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let wd = w.dims();
        if wd.len() != 2 || ids.dtype() != DType::I32 {
            return Err(Error::shape("embedding", format!("w {wd:?}, ids {}", ids.dtype().name())));
        }
        // A block-quantized table is decoded where it is read.
        let q = match w.dtype() {
            DType::Quant(q) => Some(
                crate::kernels::quant_kernel_id(q)
                    .ok_or_else(|| Error::Msg(format!("embedding: no CUDA kernel for {} tables", q.name())))?,
            ),
            _ => None,
        };
        let ty = match q {
            Some(_) => "q",
            None => type_name(w.dtype()).ok_or_else(|| Error::Msg(format!("embedding: {} table", w.dtype().name())))?,
        };
        let (rows, h) = (ids.numel(), wd[1]);
        let (hw, hi) = (self.held(w)?, self.held(ids)?);
        let out = self.alloc(rows * h, DType::F32)?;
        let err = self.exec.alloc_zeroed(4)?;
        let p = EmbParams {
            src: hw.ptr(),
            ids: hi.ptr(),
            out: out.ptr,
            err: err.ptr,
            rows: rows as i64,
            h: h as i32,
            vocab: wd[0] as i32,
            qtype: q.map_or(0, |q| q.0),
            qblock: q.map_or(0, |q| q.1),
            qbytes: q.map_or(0, |q| q.2),
            pad: 0,
        };
        if rows > 0 {
            let kernel = format!("embedding_fwd_{}", if ty == "float" { "f32" } else { ty });
            self.exec.launch(&kernel, Launch::linear(rows, 128), bytemuck::bytes_of(&p))?;
        }
        check_err(self, &err, ids, wd[0])?;
        let mut dims = ids.dims().to_vec();
        dims.push(h);
        Ok(self.wrap(out, dims, DType::F32))
    }
    fn embedding_bwd(&self, dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
        want_f32("embedding_bwd", dy)?;
        let h = dy.shape().last();
        if dy.numel() != ids.numel() * h || ids.dtype() != DType::I32 {
            return Err(Error::shape("embedding_bwd", format!("dy {:?} for {} ids", dy.dims(), ids.numel())));
        }
        let rows = ids.numel();
        let (hd, hi) = (self.held(dy)?, self.held(ids)?);
        let out = self.exec.alloc_zeroed(vocab * h * 4)?;
        let err = self.exec.alloc_zeroed(4)?;
        let p = EmbParams {
            src: hd.ptr(),
            ids: hi.ptr(),
            out: out.ptr,
            err: err.ptr,
            rows: rows as i64,
            h: h as i32,
            vocab: vocab as i32,
            ..bytemuck::Zeroable::zeroed()
        };
        if rows > 0 {
            self.exec.launch("embedding_bwd_f32", Launch::linear(rows, 128), bytemuck::bytes_of(&p))?;
        }
        check_err(self, &err, ids, vocab)?;
        Ok(self.wrap(out, [vocab, h], DType::F32))
    }
}
