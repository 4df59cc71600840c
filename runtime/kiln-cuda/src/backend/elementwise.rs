//! Elementwise ops, casts, reductions and the embedding (kernels/elementwise.cu, embedding.cu).

use kiln_core::backend::{ElementwiseOps, EmbeddingOps, GluOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::{KernelBackend, want_f32};
use crate::exec::Launch;
use crate::kernels::{EmbParams, EwParams, ReduceParams};

const THREADS: u32 = 256;

/// Enough blocks of 256 threads for `n` elements (grid-stride kernels take any grid).
fn grid(n: usize) -> Launch {
    Launch::linear(n.div_ceil(THREADS as usize).min(4096), THREADS)
}

fn binary(be: &KernelBackend, kernel: &'static str, a: &Tensor, b: Option<&Tensor>, s: f32) -> Result<Tensor> {
    want_f32(kernel, a)?;
    if let Some(b) = b {
        want_f32(kernel, b)?;
        if a.dims() != b.dims() {
            return Err(Error::shape(kernel, format!("{:?} and {:?}", a.dims(), b.dims())));
        }
    }
    let n = a.numel();
    let ha = be.held(a)?;
    let hb = b.map(|b| be.held(b)).transpose()?;
    let out = be.alloc(n, DType::F32)?;
    let p = EwParams { a: ha.ptr(), b: hb.map_or(0, |h| h.ptr()), out: out.ptr, n: n as i64, s, pad: 0 };
    be.exec.launch(kernel, grid(n), bytemuck::bytes_of(&p))?;
    Ok(be.wrap(out, a.shape().clone(), DType::F32))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn type_name(d: DType) -> Option<&'static str> {
    match d {
        DType::F32 | DType::F64 => Some("float"),
        DType::BF16 => Some("bf16"),
        DType::F16 => Some("f16"),
        _ => None,
    }
}

pub(super) fn cast(be: &KernelBackend, t: &Tensor, dtype: DType) -> Result<Tensor> {
    if let DType::Quant(q) = t.dtype() {
        let (ty, block, bytes) = crate::kernels::quant_kernel_id(q)
            .ok_or_else(|| Error::Msg(format!("cuda cast: no kernel for {} weights", q.name())))?;
        let (kernel, out_t) = match dtype {
            DType::F32 | DType::F64 => ("dequant_f32", DType::F32),
            DType::BF16 => ("dequant_bf16", DType::BF16),
            DType::F16 => ("dequant_f16", DType::F16),
            d => return Err(Error::Msg(format!("cuda cast: {} to {}", q.name(), d.name()))),
        };
        let n = t.numel();
        let h = be.held(t)?;
        let out = be.alloc(n, out_t)?;
        // Tiles of g·k blocks, g the fewest whose bytes are a multiple of 16, about 4 KB each.
        let g = 16 / gcd(16, bytes as usize);
        let tile = g * (4096 / (g * bytes as usize)).max(1);
        let tiles = (n / block as usize).div_ceil(tile);
        let p = crate::kernels::DequantParams {
            w: h.ptr(),
            out: out.ptr,
            n: n as i64,
            ty,
            block,
            bytes,
            tile: tile as i32,
        };
        let cfg =
            Launch { grid: [tiles.clamp(1, 65535) as u32, 1, 1], block: [256, 1, 1], smem: tile * bytes as usize };
        be.exec.launch(kernel, cfg, bytemuck::bytes_of(&p))?;
        return Ok(be.wrap(out, t.shape().clone(), out_t));
    }
    let (Some(from), Some(to)) = (type_name(t.dtype()), type_name(dtype)) else {
        if t.dtype() == dtype {
            return be.upload(t);
        }
        return Err(Error::Msg(format!("cuda cast: {} to {}", t.dtype().name(), dtype.name())));
    };
    let n = t.numel();
    let h = be.held(t)?;
    let out_t = if dtype == DType::F64 { DType::F32 } else { dtype };
    let out = be.alloc(n, out_t)?;
    let p = EwParams { a: h.ptr(), b: 0, out: out.ptr, n: n as i64, s: 0.0, pad: 0 };
    be.exec.launch(&format!("cast_{from}_{to}"), grid(n), bytemuck::bytes_of(&p))?;
    Ok(be.wrap(out, t.shape().clone(), out_t))
}

use kiln_core::backend::MemoryOps;

impl ElementwiseOps for KernelBackend {
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, "add_f32", a, Some(b), 0.0)
    }
    fn scale(&self, a: &Tensor, s: f64) -> Result<Tensor> {
        binary(self, "scale_f32", a, None, s as f32)
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, "mul_f32", a, Some(b), 0.0)
    }
    fn sum_squares(&self, a: &Tensor) -> Result<f64> {
        want_f32("sum_squares", a)?;
        let n = a.numel();
        let cfg = Launch::linear(n.div_ceil(THREADS as usize).clamp(1, 1024), THREADS);
        let blocks = cfg.grid[0] as usize;
        let h = self.held(a)?;
        let part = self.exec.alloc(blocks * 8)?;
        let p = EwParams { a: h.ptr(), b: 0, out: part.ptr, n: n as i64, s: 0.0, pad: 0 };
        self.exec.launch("sum_squares_f32", cfg, bytemuck::bytes_of(&p))?;
        let bytes = self.exec.download(&part, 0, blocks * 8)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f64>(&bytes).iter().sum())
    }
}

impl GluOps for KernelBackend {
    fn swiglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor> {
        Ok(super::train_ops::swiglu(self, g, u, None)?.0)
    }
    fn swiglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (dg, du) = super::train_ops::swiglu(self, g, u, Some(dy))?;
        Ok((dg, du.ok_or_else(|| Error::Msg("swiglu_bwd: no du".into()))?))
    }
    fn geglu_fwd(&self, _g: &Tensor, _u: &Tensor) -> Result<Tensor> {
        Err(Error::Msg("geglu: no CUDA kernel yet".into()))
    }
    fn geglu_bwd(&self, _g: &Tensor, _u: &Tensor, _dy: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(Error::Msg("geglu_bwd: no CUDA kernel yet".into()))
    }
}

/// `1 + row` of the first out-of-range id, which the kernels leave in `err`, as the CPU's error.
fn check_err(be: &KernelBackend, err: &crate::exec::DevBuf, ids: &Tensor, vocab: usize) -> Result<()> {
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

/// Column sums of a `[rows, cols]` f32 tensor (bias gradients).
pub(super) fn col_sum(be: &KernelBackend, a: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let h = be.held(a)?;
    let out = be.alloc(cols, DType::F32)?;
    let p = ReduceParams { a: h.ptr(), out: out.ptr, rows: rows as i64, cols: cols as i64 };
    be.exec.launch("col_sum_f32", grid(cols), bytemuck::bytes_of(&p))?;
    Ok(be.wrap(out, [cols], DType::F32))
}
