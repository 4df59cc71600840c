//! RMSNorm, RoPE, SwiGLU, attention, cross-entropy and AdamW on kernels/norm.cu,
//! kernels/attention.cu and kernels/loss.cu.

use kiln_core::backend::{
    Adam8State, AdamWItem, AdamWStep, AttentionOps, AttnArgs, CeOut, LossOps, NormOps, OptimOps, RopeOps,
};
use kiln_core::tensor::Storage;
use kiln_core::{DType, Error, Result, Tensor};

use super::{CudaBuf, Held, KernelBackend, want_f32};
use crate::exec::DevBuf;
use crate::exec::Launch;
use crate::kernels::{
    Adam8Params, AdamCoeffs, AttnParams, CeParams, GluParams, MultiParams, MultiTensor, NormParams, RopeParams,
};

/// Enough blocks of `threads` for `n` items of a grid-stride kernel.
fn grid(n: usize, threads: u32) -> Launch {
    Launch::linear(n.div_ceil(threads as usize).clamp(1, 8192), threads)
}

fn ptr(h: &Option<Held<'_>>) -> u64 {
    h.as_ref().map_or(0, Held::ptr)
}

impl NormOps for KernelBackend {
    fn rms_norm_fwd(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
        want_f32("rms_norm x", x)?;
        want_f32("rms_norm w", w)?;
        let (rows, h) = (x.shape().rows(), x.shape().last());
        if w.numel() != h {
            return Err(Error::shape("rms_norm", format!("x {:?} with w {:?}", x.shape(), w.shape())));
        }
        let (hx, hw) = (self.held(x)?, self.held(w)?);
        let (y, rstd) = (self.alloc(rows * h, DType::F32)?, self.alloc(rows, DType::F32)?);
        let p = NormParams {
            x: hx.ptr(),
            w: hw.ptr(),
            dy: 0,
            rstd: 0,
            y: y.ptr,
            rstd_out: rstd.ptr,
            rows: rows as i64,
            h: h as i32,
            eps: eps as f32,
        };
        if rows > 0 {
            self.exec.launch("rms_norm_fwd_f32", Launch::linear(rows, 256), bytemuck::bytes_of(&p))?;
        }
        Ok((self.wrap(y, x.dims().to_vec(), DType::F32), self.wrap(rstd, [rows], DType::F32)))
    }
    fn rms_norm_bwd(&self, dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)> {
        let (rows, h) = (x.shape().rows(), x.shape().last());
        if w.numel() != h || dy.numel() != rows * h || rstd.numel() != rows {
            return Err(Error::shape(
                "rms_norm_bwd",
                format!("dy {:?} x {:?} w {:?}", dy.shape(), x.shape(), w.shape()),
            ));
        }
        let (hd, hx, hw, hr) = (self.held(dy)?, self.held(x)?, self.held(w)?, self.held(rstd)?);
        let (dx, dw) = (self.alloc(rows * h, DType::F32)?, self.alloc(h, DType::F32)?);
        let mut p = NormParams {
            x: hx.ptr(),
            w: hw.ptr(),
            dy: hd.ptr(),
            rstd: hr.ptr(),
            y: dx.ptr,
            rstd_out: 0,
            rows: rows as i64,
            h: h as i32,
            eps: 0.0,
        };
        if rows > 0 {
            self.exec.launch("rms_norm_bwd_dx_f32", Launch::linear(rows, 256), bytemuck::bytes_of(&p))?;
        }
        p.y = dw.ptr;
        self.exec.launch("rms_norm_bwd_dw_f32", grid(h, 256), bytemuck::bytes_of(&p))?;
        Ok((self.wrap(dx, x.dims().to_vec(), DType::F32), self.wrap(dw, w.dims().to_vec(), DType::F32)))
    }
}

impl RopeOps for KernelBackend {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, inverse: bool) -> Result<Tensor> {
        want_f32("rope", x)?;
        let d = x.dims();
        if d.len() != 4 || !d[3].is_multiple_of(2) {
            return Err(Error::shape("rope", format!("x must be [B,T,H,D] with even D, got {d:?}")));
        }
        let (bt, h, hd) = (d[0] * d[1], d[2], d[3]);
        if inv_freq.numel() != hd / 2 || pos.numel() != bt || pos.dtype() != DType::I32 {
            return Err(Error::shape(
                "rope",
                format!("inv_freq {:?}, pos {:?} for x {d:?}", inv_freq.shape(), pos.shape()),
            ));
        }
        let (hx, hp, hf) = (self.held(x)?, self.held(pos)?, self.held(inv_freq)?);
        let y = self.alloc(x.numel(), DType::F32)?;
        let p = RopeParams {
            x: hx.ptr(),
            pos: hp.ptr(),
            inv_freq: hf.ptr(),
            y: y.ptr,
            bt: bt as i64,
            h: h as i32,
            d: hd as i32,
            sign: if inverse { -1.0 } else { 1.0 },
            pad: 0,
        };
        self.exec.launch("rope_f32", grid(bt * h * hd / 2, 256), bytemuck::bytes_of(&p))?;
        Ok(self.wrap(y, d.to_vec(), DType::F32))
    }
}

/// SwiGLU forward (`dy` None) or backward.
pub(super) fn swiglu(
    be: &KernelBackend,
    g: &Tensor,
    u: &Tensor,
    dy: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    want_f32("swiglu", g)?;
    want_f32("swiglu", u)?;
    if g.dims() != u.dims() || dy.is_some_and(|d| d.dims() != g.dims()) {
        return Err(Error::shape("swiglu", format!("g {:?}, u {:?}", g.dims(), u.dims())));
    }
    let n = g.numel();
    let (hg, hu) = (be.held(g)?, be.held(u)?);
    let hd = dy.map(|d| be.held(d)).transpose()?;
    let o0 = be.alloc(n, DType::F32)?;
    let o1 = if dy.is_some() { Some(be.alloc(n, DType::F32)?) } else { None };
    let p = GluParams {
        g: hg.ptr(),
        u: hu.ptr(),
        dy: ptr(&hd),
        out0: o0.ptr,
        out1: o1.as_ref().map_or(0, |b| b.ptr),
        n: n as i64,
    };
    let kernel = if dy.is_some() { "swiglu_bwd_f32" } else { "swiglu_fwd_f32" };
    be.exec.launch(kernel, grid(n, 256), bytemuck::bytes_of(&p))?;
    Ok((be.wrap(o0, g.dims().to_vec(), DType::F32), o1.map(|b| be.wrap(b, g.dims().to_vec(), DType::F32))))
}

/// Whether attention runs on tensor cores (v2, forward and backward): the tensor-core GEMM variants are
/// chosen (v3: the default, v4, v5) and the head dim is at most 128; v1 and v2 keep f32 attention.
fn attn_v2(be: &KernelBackend, d: i32) -> bool {
    d <= 128 && be.gemm().tensor_cores()
}

/// The sizes of an attention call and the query rows.
fn attn_params(a: &AttnArgs<'_>) -> Result<(AttnParams, usize)> {
    let d = a.dims()?;
    let p = AttnParams {
        b: d.b as i32,
        t: d.t as i32,
        tk: d.tk as i32,
        hq: d.hq as i32,
        hkv: d.hkv as i32,
        d: d.d as i32,
        has_seg: a.seg.is_some() as i32,
        shared_prefix: a.shared_prefix as i32,
        scale: a.scale as f32,
        ..Default::default()
    };
    Ok((p, d.b * d.t * d.hq))
}

impl AttentionOps for KernelBackend {
    fn attention_fwd(&self, a: &AttnArgs<'_>) -> Result<(Tensor, Tensor)> {
        for t in [a.q, a.k, a.v] {
            want_f32("attention", t)?;
        }
        let (mut p, rows) = attn_params(a)?;
        if p.d > 256 {
            return Err(Error::Msg(format!("cuda attention: head dim {} (at most 256)", p.d)));
        }
        let (hq, hk, hv) = (self.held(a.q)?, self.held(a.k)?, self.held(a.v)?);
        let hs = a.seg.map(|s| self.held(s)).transpose()?;
        let (o, lse) = (self.alloc(a.q.numel(), DType::F32)?, self.alloc(rows, DType::F32)?);
        (p.q, p.k, p.v, p.seg, p.out0, p.out1) = (hq.ptr(), hk.ptr(), hv.ptr(), ptr(&hs), o.ptr, lse.ptr);
        if rows > 0 && attn_v2(self, p.d) {
            // FlashAttention-2 on tensor cores: 64 query rows of one (b, head) a CTA.
            let tiles = (p.t as u32).div_ceil(64);
            let cfg = Launch { grid: [tiles, (p.b * p.hq) as u32, 1], block: [128, 1, 1], smem: 0 };
            self.exec.launch("attn_fwd_v2_mma", cfg, bytemuck::bytes_of(&p))?;
        } else if rows > 0 {
            self.exec.launch("attn_fwd_f32", grid(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
        }
        let lse_dims = a.q.dims()[..3].to_vec();
        Ok((self.wrap(o, a.q.dims().to_vec(), DType::F32), self.wrap(lse, lse_dims, DType::F32)))
    }
    fn attention_bwd(
        &self,
        a: &AttnArgs<'_>,
        o: &Tensor,
        lse: &Tensor,
        d_o: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (mut p, rows) = attn_params(a)?;
        if p.t != p.tk || p.d > 256 || o.dims() != a.q.dims() || d_o.dims() != a.q.dims() || lse.numel() != rows {
            return Err(Error::shape(
                "attention_bwd",
                format!("q {:?}, o {:?}, dO {:?}", a.q.dims(), o.dims(), d_o.dims()),
            ));
        }
        let (hq, hk, hv) = (self.held(a.q)?, self.held(a.k)?, self.held(a.v)?);
        let hs = a.seg.map(|s| self.held(s)).transpose()?;
        let (ho, hl, hdo) = (self.held(o)?, self.held(lse)?, self.held(d_o)?);
        let delta = self.alloc(rows, DType::F32)?;
        (p.q, p.k, p.v, p.seg, p.o, p.lse, p.d_o) =
            (hq.ptr(), hk.ptr(), hv.ptr(), ptr(&hs), ho.ptr(), hl.ptr(), hdo.ptr());
        let (dq, dk, dv) = (
            self.alloc(a.q.numel(), DType::F32)?,
            self.alloc(a.k.numel(), DType::F32)?,
            self.alloc(a.v.numel(), DType::F32)?,
        );
        if rows > 0 {
            p.out0 = delta.ptr;
            self.exec.launch("attn_delta_f32", grid(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
            p.delta = delta.ptr;
            p.out0 = dq.ptr;
            if attn_v2(self, p.d) {
                // Tensor cores: 32 query rows (dq) or 32 keys (dk, dv) a CTA of two warps.
                let cfg =
                    Launch { grid: [(p.t as u32).div_ceil(32), (p.b * p.hq) as u32, 1], block: [64, 1, 1], smem: 0 };
                self.exec.launch("attn_bwd_dq_v2_mma", cfg, bytemuck::bytes_of(&p))?;
                (p.out0, p.out1) = (dk.ptr, dv.ptr);
                let cfg =
                    Launch { grid: [(p.tk as u32).div_ceil(32), (p.b * p.hkv) as u32, 1], block: [64, 1, 1], smem: 0 };
                self.exec.launch("attn_bwd_dkv_v2_mma", cfg, bytemuck::bytes_of(&p))?;
            } else {
                self.exec.launch("attn_bwd_dq_f32", grid(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
                (p.out0, p.out1) = (dk.ptr, dv.ptr);
                let krows = (p.b * p.tk * p.hkv) as usize;
                self.exec.launch("attn_bwd_dkv_f32", grid(krows, 4).with_block(128), bytemuck::bytes_of(&p))?;
            }
        }
        Ok((
            self.wrap(dq, a.q.dims().to_vec(), DType::F32),
            self.wrap(dk, a.k.dims().to_vec(), DType::F32),
            self.wrap(dv, a.v.dims().to_vec(), DType::F32),
        ))
    }
}

fn ce_dims(logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    let (m, v) = (logits.shape().rows(), logits.shape().last());
    if targets.numel() != m || targets.dtype() != DType::I32 {
        return Err(Error::shape(
            "cross_entropy",
            format!("logits {:?}, targets {:?}", logits.shape(), targets.shape()),
        ));
    }
    want_f32("cross_entropy", logits)?;
    Ok((m, v))
}

fn ce_bwd(be: &KernelBackend, logits: &Tensor, targets: &Tensor, lse: &Tensor, g: Held<'_>) -> Result<Tensor> {
    let (m, v) = ce_dims(logits, targets)?;
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
        pad: 0,
    };
    if m * v > 0 {
        be.exec.launch("ce_bwd_f32", grid(m * v, 256), bytemuck::bytes_of(&p))?;
    }
    Ok(be.wrap(dx, logits.dims().to_vec(), DType::F32))
}

impl LossOps for KernelBackend {
    fn cross_entropy_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<CeOut> {
        let (m, v) = ce_dims(logits, targets)?;
        let tv = targets.to_cpu()?.as_slice::<i32>()?.to_vec();
        if let Some((r, &bad)) = tv.iter().enumerate().find(|&(_, &t)| t >= v as i32) {
            return Err(Error::Msg(format!("cross_entropy: target {bad} in row {r} is outside the vocabulary of {v}")));
        }
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
            pad: 0,
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
        if drow.numel() != logits.shape().rows() {
            return Err(Error::shape(
                "cross_entropy_bwd_rows",
                format!("{:?} weights for {:?}", drow.shape(), logits.shape()),
            ));
        }
        want_f32("cross_entropy_bwd_rows", drow)?;
        ce_bwd(self, logits, targets, lse, self.held(drow)?)
    }
}

impl OptimOps for KernelBackend {
    /// A table of one for the multi-tensor kernel (`kernels/optim.cu`).
    fn adamw_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: AdamWStep,
    ) -> Result<()> {
        adamw_multi(self, &mut [AdamWItem { param, grad, m, v }], hp, 1.0)
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
    let mut held = Vec::with_capacity(ts.len());
    for t in ts {
        want_f32("sum_squares", t)?;
        held.push((be.held(t)?, t.numel()));
    }
    let rows: Vec<MultiTensor> = held
        .iter()
        .filter(|h| h.1 > 0)
        .map(|(h, n)| MultiTensor { g: h.ptr(), n: *n as i64, ..Default::default() })
        .collect();
    if rows.is_empty() {
        return Ok(0.0);
    }
    let (table, list, nchunks) = multi_table(be, &rows)?;
    let out = be.exec.alloc(nchunks * 8)?;
    let p = MultiParams {
        table: table.ptr,
        chunks: list.ptr,
        out: out.ptr,
        nchunks: nchunks as i32,
        chunk: CHUNK as i32,
        ..Default::default()
    };
    be.exec.launch("sum_squares_multi_f32", multi_launch(nchunks), bytemuck::bytes_of(&p))?;
    let bytes = be.exec.download(&out, 0, nchunks * 8)?;
    Ok(bytemuck::pod_collect_to_vec::<u8, f64>(&bytes).iter().sum())
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
