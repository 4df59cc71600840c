//! Elementwise ops (`Op::Add`, `Op::Scale`, mul, `Op::Softcap`), casts (`Op::Cast`,
//! block-quantized tensors decoded by kernels/quant.cu) and reductions (sums of squares, column
//! sums) on kernels/elementwise.cu.

use kiln_core::backend::{ElementwiseOps, MemoryOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::launch::{THREADS, grid, type_name};
use super::{KernelBackend, act_type, act_types};
use crate::exec::Launch;
use crate::kernels::{EwParams, ReduceParams};

/// `<stem>_<type>` over `a` (and `b`, same shape and type), the output in their type.
fn binary(be: &KernelBackend, stem: &'static str, a: &Tensor, b: Option<&Tensor>, s: f32) -> Result<Tensor> {
    let (dt, ty) = act_types(stem, a, b.as_slice())?;
    if let Some(b) = b
        && a.dims() != b.dims()
    {
        return Err(Error::shape(stem, format!("{:?} and {:?}", a.dims(), b.dims())));
    }
    let n = a.numel();
    let ha = be.held(a)?;
    let hb = b.map(|b| be.held(b)).transpose()?;
    let out = be.alloc(n, dt)?;
    let p = EwParams { a: ha.ptr(), b: hb.map_or(0, |h| h.ptr()), out: out.ptr, n: n as i64, s, pad: 0 };
    be.exec.launch(&format!("{stem}_{ty}"), grid(n), bytemuck::bytes_of(&p))?;
    Ok(be.wrap(out, a.shape().clone(), dt))
}

/// The soft-cap as the kernels take it: a positive number that stays one in f32.
fn softcap_cap(cap: f64) -> Result<f32> {
    let c = cap as f32;
    if cap.is_finite() && c.is_finite() && c > 0.0 {
        Ok(c)
    } else {
        Err(Error::Msg(format!("softcap: the cap {cap} must be a positive number")))
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The `n` values of block-quantized `q` data at `w` decoded into a new device buffer of type
/// `dtype` (f32, or bf16/f16 rounded to nearest even): kernels/quant.cu `dequant_*`.
pub(super) fn dequant(
    be: &KernelBackend,
    w: u64,
    n: usize,
    q: kiln_core::quant::GgmlType,
    dtype: DType,
) -> Result<(crate::exec::DevBuf, DType)> {
    let (ty, block, bytes) = crate::kernels::quant_kernel_id(q)
        .ok_or_else(|| Error::Msg(format!("cuda cast: no kernel for {} weights", q.name())))?;
    let (kernel, out_t) = match dtype {
        DType::F32 | DType::F64 => ("dequant_f32", DType::F32),
        DType::BF16 => ("dequant_bf16", DType::BF16),
        DType::F16 => ("dequant_f16", DType::F16),
        d => return Err(Error::Msg(format!("cuda cast: {} to {}", q.name(), d.name()))),
    };
    let out = be.alloc(n, out_t)?;
    // Tiles of g·k blocks, g the fewest whose bytes are a multiple of 16, about 4 KB each.
    let g = 16 / gcd(16, bytes as usize);
    let tile = g * (4096 / (g * bytes as usize)).max(1);
    let tiles = (n / block as usize).div_ceil(tile);
    let p = crate::kernels::DequantParams { w, out: out.ptr, n: n as i64, ty, block, bytes, tile: tile as i32 };
    let cfg = Launch { grid: [tiles.clamp(1, 65535) as u32, 1, 1], block: [256, 1, 1], smem: tile * bytes as usize };
    be.exec.launch(kernel, cfg, bytemuck::bytes_of(&p))?;
    Ok((out, out_t))
}

pub(super) fn cast(be: &KernelBackend, t: &Tensor, dtype: DType) -> Result<Tensor> {
    if let DType::Quant(q) = t.dtype() {
        let h = be.held(t)?;
        let (out, out_t) = dequant(be, h.ptr(), t.numel(), q, dtype)?;
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

impl ElementwiseOps for KernelBackend {
    fn softcap_fwd(&self, x: &Tensor, cap: f64) -> Result<Tensor> {
        binary(self, "softcap_fwd", x, None, softcap_cap(cap)?)
    }
    fn softcap_bwd(&self, x: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor> {
        binary(self, "softcap_bwd", x, Some(dy), softcap_cap(cap)?)
    }
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, "add", a, Some(b), 0.0)
    }
    fn scale(&self, a: &Tensor, s: f64) -> Result<Tensor> {
        binary(self, "scale", a, None, s as f32)
    }
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        binary(self, "mul", a, Some(b), 0.0)
    }
    fn sum_squares(&self, a: &Tensor) -> Result<f64> {
        let (_, ty) = act_type("sum_squares", a)?;
        let n = a.numel();
        let cfg = Launch::linear(n.div_ceil(THREADS as usize).clamp(1, 1024), THREADS);
        let blocks = cfg.grid[0] as usize;
        let h = self.held(a)?;
        let part = self.exec.alloc(blocks * 8)?;
        let p = EwParams { a: h.ptr(), b: 0, out: part.ptr, n: n as i64, s: 0.0, pad: 0 };
        self.exec.launch(&format!("sum_squares_{ty}"), cfg, bytemuck::bytes_of(&p))?;
        let bytes = self.exec.download(&part, 0, blocks * 8)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f64>(&bytes).iter().sum())
    }
}

/// Column sums of a `[rows, cols]` activation (bias gradients), in f32.
pub(super) fn col_sum(be: &KernelBackend, a: &Tensor, rows: usize, cols: usize) -> Result<Tensor> {
    let (_, ty) = act_type("col_sum", a)?;
    let h = be.held(a)?;
    let out = be.alloc(cols, DType::F32)?;
    let p = ReduceParams { a: h.ptr(), out: out.ptr, rows: rows as i64, cols: cols as i64 };
    be.exec.launch(&format!("col_sum_{ty}"), grid(cols), bytemuck::bytes_of(&p))?;
    Ok(be.wrap(out, [cols], DType::F32))
}

/// [`Backend::scale_by`](kiln_core::Backend::scale_by) for f32 `a` and `s` on the device: no
/// read-back; `None` where the types are others (the caller takes the default path).
pub(super) fn scale_by(be: &KernelBackend, a: &Tensor, s: &Tensor) -> Result<Option<Tensor>> {
    if a.dtype() != DType::F32
        || s.dtype() != DType::F32
        || !matches!(s.storage(), kiln_core::tensor::Storage::Device(_))
    {
        return Ok(None);
    }
    if s.numel() != 1 {
        return Err(Error::shape("scale_by", format!("a scale of {} elements", s.numel())));
    }
    let n = a.numel();
    let (ha, hs) = (be.held(a)?, be.held(s)?);
    let out = be.alloc(n, DType::F32)?;
    let p = EwParams { a: ha.ptr(), b: hs.ptr(), out: out.ptr, n: n as i64, s: 0.0, pad: 0 };
    if n > 0 {
        be.exec.launch("scale_by_f32", grid(n), bytemuck::bytes_of(&p))?;
    }
    Ok(Some(be.wrap(out, a.shape().clone(), DType::F32)))
}

/// [`Backend::concat0`](kiln_core::Backend::concat0) on the device: one copy launch a part.
pub(super) fn concat0(be: &KernelBackend, parts: &[Tensor]) -> Result<Tensor> {
    let (dims, dtype) = kiln_core::backend::concat0_dims(parts)?;
    // f64 parts live in f32 on the device.
    let dtype = if dtype == DType::F64 { DType::F32 } else { dtype };
    let numel: usize = dims.iter().product();
    let out = be.alloc(numel, dtype)?;
    let elem = super::dev_size(dtype)?;
    let mut at = 0u64;
    for part in parts {
        let h = be.held(part)?;
        let n = part.numel() * elem;
        let p = EwParams { a: h.ptr(), b: 0, out: out.ptr + at, n: n as i64, s: 0.0, pad: 0 };
        if n > 0 {
            be.exec.launch("copy_bytes", grid(n.div_ceil(16)), bytemuck::bytes_of(&p))?;
        }
        at += n as u64;
    }
    Ok(be.wrap(out, dims, dtype))
}
