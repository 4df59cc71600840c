//! AdamW (`Op::AdamW`): multi-tensor f32 AdamW with clipping inside, the sum of squares for the
//! gradient norm, and 8-bit AdamW, on kernels/optim.cu.

use kiln_core::backend::{Adam8State, AdamWItem, AdamWStep, OptimOps};
use kiln_core::tensor::Storage;
use kiln_core::{Error, Result, Tensor};

use super::{CudaBuf, KernelBackend, want_f32};
use crate::exec::{DevBuf, Launch};
use crate::kernels::{Adam8Params, AdamCoeffs, EwParams, MultiParams, MultiTensor};

impl OptimOps for KernelBackend {
    /// A table of one for the multi-tensor kernel (`kernels/optim.cu`).
    fn adamw_step(&self, it: AdamWItem<'_>, hp: AdamWStep) -> Result<()> {
        adamw_multi(self, &mut [it], hp, 1.0)
    }
}

/// Elements per chunk of the multi-tensor kernels (kernels/optim.cu): a block's share at a time.
const CHUNK: usize = 16384;

/// Uploads the tensor table and chunk list of a multi-tensor launch; returns them (kept alive
/// until the launch) and the chunk count.
fn multi_table(be: &KernelBackend, rows: &[MultiTensor]) -> Result<(DevBuf, DevBuf, usize)> {
    let mut chunks: Vec<i32> = Vec::new();
    for (t, r) in rows.iter().enumerate() {
        for c in 0..(r.n as usize).div_ceil(CHUNK) {
            chunks.extend([t as i32, c as i32]);
        }
    }
    let n = chunks.len() / 2;
    let table = be.exec.upload(bytemuck::cast_slice(rows))?;
    let list = be.exec.upload(bytemuck::cast_slice(&chunks))?;
    Ok((table, list, n))
}

fn multi_launch(nchunks: usize) -> Launch {
    Launch { grid: [nchunks.clamp(1, 4096) as u32, 1, 1], block: [256, 1, 1], smem: 0 }
}

/// AdamW over a parameter group in one launch (`kernels/optim.cu` `adamw_multi_f32`).
pub(super) fn adamw_multi(
    be: &KernelBackend,
    items: &mut [AdamWItem<'_>],
    hp: AdamWStep,
    grad_scale: f64,
) -> Result<()> {
    // Parameters and moments become buffers of their own first (as adamw_step does).
    for it in items.iter_mut() {
        let n = it.param.numel();
        if it.grad.numel() != n || it.m.numel() != n || it.v.numel() != n {
            return Err(Error::shape("adamw", format!("param {:?}, grad {:?}", it.param.shape(), it.grad.shape())));
        }
        for t in [&*it.param, it.grad, &*it.m, &*it.v] {
            want_f32("adamw", t)?;
        }
        for t in [&mut *it.param, &mut *it.m, &mut *it.v] {
            own(be, t)?;
        }
    }
    let mut held = Vec::with_capacity(items.len());
    for it in items.iter() {
        held.push((be.held(it.grad)?, be.held(it.param)?, be.held(it.m)?, be.held(it.v)?, it.param.numel()));
    }
    let rows: Vec<MultiTensor> = held
        .iter()
        .filter(|h| h.4 > 0)
        .map(|(g, p, m, v, n)| MultiTensor { g: g.ptr(), p: p.ptr(), m: m.ptr(), v: v.ptr(), n: *n as i64 })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    let (table, list, nchunks) = multi_table(be, &rows)?;
    let p = MultiParams {
        table: table.ptr,
        chunks: list.ptr,
        nchunks: nchunks as i32,
        chunk: CHUNK as i32,
        c: AdamCoeffs::new(&hp, grad_scale),
        ..Default::default()
    };
    be.exec.launch("adamw_multi_f32", multi_launch(nchunks), bytemuck::bytes_of(&p))
}

/// Σ x² over several f32 tensors: one launch, one read-back of a partial per chunk.
pub(super) fn sum_squares_multi(be: &KernelBackend, ts: &[&Tensor]) -> Result<f64> {
    Ok(sum_squares_multi_and(be, ts, &[])?.0)
}

/// Σ x² over several f32 tensors and the values of one-element f32 tensors `scalars`: the
/// partials (one f64 a chunk) and the scalars (copied behind them) come back in one read.
pub(super) fn sum_squares_multi_and(
    be: &KernelBackend,
    ts: &[&Tensor],
    scalars: &[&Tensor],
) -> Result<(f64, Vec<f64>)> {
    let mut held = Vec::with_capacity(ts.len());
    for t in ts {
        want_f32("sum_squares", t)?;
        held.push((be.held(t)?, t.numel()));
    }
    for t in scalars {
        want_f32("sum_squares_multi_and", t)?;
        if t.numel() != 1 {
            return Err(Error::shape("sum_squares_multi_and", format!("a scalar of {} elements", t.numel())));
        }
    }
    let rows: Vec<MultiTensor> = held
        .iter()
        .filter(|h| h.1 > 0)
        .map(|(h, n)| MultiTensor { g: h.ptr(), n: *n as i64, ..Default::default() })
        .collect();
    if rows.is_empty() && scalars.is_empty() {
        return Ok((0.0, Vec::new()));
    }
    let tables = if rows.is_empty() { None } else { Some(multi_table(be, &rows)?) };
    let nchunks = tables.as_ref().map_or(0, |t| t.2);
    let len = nchunks * 8 + scalars.len() * 4;
    let out = be.exec.alloc(len)?;
    if let Some((table, list, _)) = &tables {
        let p = MultiParams {
            table: table.ptr,
            chunks: list.ptr,
            out: out.ptr,
            nchunks: nchunks as i32,
            chunk: CHUNK as i32,
            ..Default::default()
        };
        be.exec.launch("sum_squares_multi_f32", multi_launch(nchunks), bytemuck::bytes_of(&p))?;
    }
    for (i, t) in scalars.iter().enumerate() {
        let h = be.held(t)?;
        let p = EwParams { a: h.ptr(), b: 0, out: out.ptr + (nchunks * 8 + 4 * i) as u64, n: 4, s: 0.0, pad: 0 };
        be.exec.launch("copy_bytes", Launch::linear(1, 32), bytemuck::bytes_of(&p))?;
    }
    let bytes = be.exec.download(&out, 0, len)?;
    let (parts, tail) = bytes.split_at(nchunks * 8);
    let sum = bytemuck::pod_collect_to_vec::<u8, f64>(parts).iter().sum();
    Ok((sum, bytemuck::pod_collect_to_vec::<u8, f32>(tail).into_iter().map(f64::from).collect()))
}

/// Makes `t` a device buffer of its own (state kept in place across steps).
fn own(be: &KernelBackend, t: &mut Tensor) -> Result<()> {
    let own =
        matches!(t.storage(), Storage::Device(d) if d.as_any().downcast_ref::<CudaBuf>().is_some()) && t.offset() == 0;
    if !own {
        *t = kiln_core::backend::MemoryOps::upload(be, &t.to_cpu()?)?;
    }
    Ok(())
}

/// AdamW with the moments in kiln's block-wise 8-bit format on the device
/// (`kernels/optim.cu` `adamw8_f32`: a block of 256 threads per 256-value block).
pub(super) fn adamw8_step(
    be: &KernelBackend,
    param: &mut Tensor,
    grad: &Tensor,
    st: &mut Adam8State,
    hp: AdamWStep,
    grad_scale: f64,
) -> Result<()> {
    let n = param.numel();
    let blocks = n.div_ceil(256);
    if grad.numel() != n || st.n != n || st.m_codes.numel() != n.div_ceil(4) || st.m_scales.numel() != blocks {
        return Err(Error::shape("adamw8", format!("param {:?}, state of {} values", param.shape(), st.n)));
    }
    want_f32("adamw8", param)?;
    want_f32("adamw8", grad)?;
    for t in [&mut *param, &mut st.m_codes, &mut st.m_scales, &mut st.v_codes, &mut st.v_scales] {
        own(be, t)?;
    }
    let (hg, hp_) = (be.held(grad)?, be.held(param)?);
    let (mc, ms, vc, vs) =
        (be.held(&st.m_codes)?, be.held(&st.m_scales)?, be.held(&st.v_codes)?, be.held(&st.v_scales)?);
    let p = Adam8Params {
        g: hg.ptr(),
        p: hp_.ptr(),
        mc: mc.ptr(),
        ms: ms.ptr(),
        vc: vc.ptr(),
        vs: vs.ptr(),
        n: n as i64,
        c: AdamCoeffs::new(&hp, grad_scale),
    };
    if n > 0 {
        let cfg = Launch { grid: [blocks as u32, 1, 1], block: [256, 1, 1], smem: 0 };
        be.exec.launch("adamw8_f32", cfg, bytemuck::bytes_of(&p))?;
    }
    Ok(())
}
