//! Causal GQA attention with packed segments, sliding windows and soft-capped scores
//! (`Op::Attention`) on kernels/attention.cu: v1 in f32, v2 (FlashAttention-2) on tensor cores
//! where the backend's GEMM variant uses them.

use kiln_core::backend::{AttentionOps, AttnArgs, AttnGrads, MemoryOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::KernelBackend;
use super::act_types;
use super::launch::{grid_of, ptr};
use crate::exec::Launch;
use crate::kernels::AttnParams;

/// Whether attention runs on tensor cores (v2, forward and backward): the tensor-core GEMM variants are
/// chosen (v3–v6; v6 the default) and the head dim is at most 128; v1 and v2 keep f32 attention.
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
        // A window of at least Tk keys hides nothing: 0, no window (and no i32 overflow).
        window: a.window.filter(|&w| w < d.tk).map_or(0, |w| w as i32),
        // A cap past f32's range bends no f32 score; one below it stays positive (0 is off).
        softcap: a.softcap.filter(|&c| c < f32::MAX as f64).map_or(0.0, |c| (c as f32).max(f32::MIN_POSITIVE)),
        ..Default::default()
    };
    Ok((p, d.b * d.t * d.hq))
}

impl AttentionOps for KernelBackend {
    fn attention_fwd(&self, a: &AttnArgs<'_>) -> Result<(Tensor, Tensor)> {
        let (xt, _) = act_types("attention", a.q, &[a.k, a.v])?;
        if xt != DType::F32 {
            // 16-bit activations: the kernels read f32 Q, K, V, so they are widened around them
            // (the output rounded back); the lse stays f32.
            let [q, k, v] = [a.q, a.k, a.v].map(|t| self.cast(t, DType::F32));
            let (q, k, v) = (q?, k?, v?);
            let (o, lse) = self.attention_fwd(&AttnArgs { q: &q, k: &k, v: &v, ..*a })?;
            return Ok((self.cast(&o, xt)?, lse));
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
            self.exec.launch("attn_fwd_f32", grid_of(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
        }
        let lse_dims = a.q.dims()[..3].to_vec();
        Ok((self.wrap(o, a.q.dims().to_vec(), DType::F32), self.wrap(lse, lse_dims, DType::F32)))
    }
    fn attention_bwd(&self, a: &AttnArgs<'_>, o: &Tensor, lse: &Tensor, d_o: &Tensor) -> Result<AttnGrads> {
        let (xt, _) = act_types("attention_bwd", a.q, &[a.k, a.v, o, d_o])?;
        if xt != DType::F32 {
            // As in the forward: widened around the f32 kernels, the gradients rounded back.
            let [q, k, v, o, d_o] = [a.q, a.k, a.v, o, d_o].map(|t| self.cast(t, DType::F32));
            let (q, k, v, o, d_o) = (q?, k?, v?, o?, d_o?);
            let g = self.attention_bwd(&AttnArgs { q: &q, k: &k, v: &v, ..*a }, &o, lse, &d_o)?;
            let [dq, dk, dv] = [&g.0, &g.1, &g.2].map(|t| self.cast(t, xt));
            return Ok((dq?, dk?, dv?));
        }
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
            self.exec.launch("attn_delta_f32", grid_of(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
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
                self.exec.launch("attn_bwd_dq_f32", grid_of(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
                (p.out0, p.out1) = (dk.ptr, dv.ptr);
                let krows = (p.b * p.tk * p.hkv) as usize;
                self.exec.launch("attn_bwd_dkv_f32", grid_of(krows, 4).with_block(128), bytemuck::bytes_of(&p))?;
            }
        }
        Ok((
            self.wrap(dq, a.q.dims().to_vec(), DType::F32),
            self.wrap(dk, a.k.dims().to_vec(), DType::F32),
            self.wrap(dv, a.v.dims().to_vec(), DType::F32),
        ))
    }
}
