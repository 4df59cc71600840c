//! Causal GQA attention with packed segments, sliding windows and soft-capped scores
//! (`Op::Attention`) on kernels/attention.cu: v1 in f32; on tensor cores, where the backend's
//! GEMM variant uses them, the v3 forward (FlashAttention-2's structure, 16-bit Q, K, V) and the
//! v2 backward.

use kiln_core::backend::{AttentionOps, AttnArgs, AttnGrads, MemoryOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::KernelBackend;
use super::act_types;
use super::launch::{grid_of, ptr};
use crate::exec::Launch;
use crate::kernels::AttnParams;

/// Whether attention runs on tensor cores (the v2 backward; the v3 forward also asks for shared
/// memory): the tensor-core GEMM variants are chosen (v3–v7) and the head dim is at most 128;
/// v1 and v2 keep f32 attention.
fn attn_tensor_cores(be: &KernelBackend, d: i32) -> bool {
    d <= 128 && be.gemm().tensor_cores()
}

/// Dynamic shared memory of the v3 forward (kernels/attention.cu `AV3_SMEM`): two stages of a
/// 64-key K and V tile, 128 16-bit columns a row, and each stage's 64 key segment ids.
const ATTN_V3_SMEM: usize = 2 * 2 * 64 * 128 * 2 + 2 * 64 * 4;

/// Whether the forward runs v3 (FlashAttention-2's structure on tensor cores, 16-bit Q, K, V):
/// the tensor-core variants, head dims up to 128, and a device whose blocks may hold its shared
/// memory (not sm_75's 64 KiB); elsewhere the f32 kernel.
fn attn_v3(be: &KernelBackend, d: i32) -> bool {
    attn_tensor_cores(be, d) && be.exec.max_block_smem() >= ATTN_V3_SMEM
}

/// Dynamic shared memory of the v3 backward kernels (kernels/attention.cu `AB3_DQ_SMEM`,
/// `AB3_DKV_SMEM`): six 64-row tiles of 128 16-bit columns (Q, dO and two stages of K, V; or K,
/// V and two stages of Q, dO), and per stage the keys' segment ids (dq) or the queries' lse, δ
/// and segment ids (dk, dv).
const ATTN_V3_DQ_SMEM: usize = 6 * 64 * 128 * 2 + 2 * 64 * 4;
const ATTN_V3_DKV_SMEM: usize = 6 * 64 * 128 * 2 + 2 * 3 * 64 * 4;

/// Whether the backward runs v3, as [`attn_v3`] asks for the forward.
fn attn_v3_bwd(be: &KernelBackend, d: i32) -> bool {
    attn_tensor_cores(be, d) && be.exec.max_block_smem() >= ATTN_V3_DKV_SMEM.max(ATTN_V3_DQ_SMEM)
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

impl KernelBackend {
    /// The v3 forward: Q, K and V read in their 16-bit type (f32 ones rounded to bf16 first, the
    /// output then kept in f32); 128 queries of one (b, head) a CTA.
    fn attention_fwd_v3(&self, a: &AttnArgs<'_>, xt: DType) -> Result<(Tensor, Tensor)> {
        let (mut p, rows) = attn_params(a)?;
        let (qkv, kernel) = match xt {
            DType::BF16 => (None, "attn_fwd_v3_mma_bf16"),
            DType::F16 => (None, "attn_fwd_v3_mma_f16"),
            _ => {
                let [q, k, v] = [a.q, a.k, a.v].map(|t| self.cast(t, DType::BF16));
                (Some((q?, k?, v?)), "attn_fwd_v3_mma_bf16_f32")
            }
        };
        let (q, k, v) = qkv.as_ref().map_or((a.q, a.k, a.v), |(q, k, v)| (q, k, v));
        let (hq, hk, hv) = (self.held(q)?, self.held(k)?, self.held(v)?);
        let hs = a.seg.map(|s| self.held(s)).transpose()?;
        let (o, lse) = (self.alloc(a.q.numel(), xt)?, self.alloc(rows, DType::F32)?);
        (p.q, p.k, p.v, p.seg, p.out0, p.out1) = (hq.ptr(), hk.ptr(), hv.ptr(), ptr(&hs), o.ptr, lse.ptr);
        // 16-byte loads need aligned rows: D a multiple of 8 halves and aligned bases.
        p.vec = (p.d % 8 == 0 && [p.q, p.k, p.v].iter().all(|&x| x % 16 == 0)) as i32;
        let cfg = Launch {
            grid: [(p.t as u32).div_ceil(128), (p.b * p.hq) as u32, 1],
            block: [256, 1, 1],
            smem: ATTN_V3_SMEM,
        };
        self.exec.launch(kernel, cfg, bytemuck::bytes_of(&p))?;
        let lse_dims = a.q.dims()[..3].to_vec();
        Ok((self.wrap(o, a.q.dims().to_vec(), xt), self.wrap(lse, lse_dims, DType::F32)))
    }
}

impl KernelBackend {
    /// The v3 backward: δ and dq by one kernel (64 queries of one (b, head) a CTA), dk and dv by
    /// another (64 keys of one (b, kv head)); operands as in [`Self::attention_fwd_v3`].
    fn attention_bwd_v3(
        &self,
        a: &AttnArgs<'_>,
        o: &Tensor,
        lse: &Tensor,
        d_o: &Tensor,
        xt: DType,
    ) -> Result<AttnGrads> {
        let (mut p, rows) = attn_params(a)?;
        let (ins, kind) = match xt {
            DType::BF16 => (None, "bf16"),
            DType::F16 => (None, "f16"),
            _ => {
                let [q, k, v, o, d_o] = [a.q, a.k, a.v, o, d_o].map(|t| self.cast(t, DType::BF16));
                (Some([q?, k?, v?, o?, d_o?]), "bf16_f32")
            }
        };
        let [q, k, v, o, d_o] = ins.as_ref().map_or([a.q, a.k, a.v, o, d_o], |t| [&t[0], &t[1], &t[2], &t[3], &t[4]]);
        let held = [q, k, v, o, d_o].map(|t| self.held(t));
        let [hq, hk, hv, ho, hdo] = held;
        let (hq, hk, hv, ho, hdo) = (hq?, hk?, hv?, ho?, hdo?);
        let hs = a.seg.map(|s| self.held(s)).transpose()?;
        let hl = self.held(lse)?;
        let delta = self.alloc(rows, DType::F32)?;
        let (dq, dk, dv) = (self.alloc(a.q.numel(), xt)?, self.alloc(a.k.numel(), xt)?, self.alloc(a.v.numel(), xt)?);
        (p.q, p.k, p.v, p.seg, p.o, p.lse, p.d_o, p.delta) =
            (hq.ptr(), hk.ptr(), hv.ptr(), ptr(&hs), ho.ptr(), hl.ptr(), hdo.ptr(), delta.ptr);
        p.vec = (p.d % 8 == 0 && [p.q, p.k, p.v, p.d_o].iter().all(|&x| x % 16 == 0)) as i32;
        (p.out0, p.out2) = (dq.ptr, delta.ptr);
        let cfg = Launch {
            grid: [(p.t as u32).div_ceil(64), (p.b * p.hq) as u32, 1],
            block: [128, 1, 1],
            smem: ATTN_V3_DQ_SMEM,
        };
        self.exec.launch(&format!("attn_bwd_dq_v3_mma_{kind}"), cfg, bytemuck::bytes_of(&p))?;
        (p.out0, p.out1) = (dk.ptr, dv.ptr);
        let cfg = Launch {
            grid: [(p.tk as u32).div_ceil(64), (p.b * p.hkv) as u32, 1],
            block: [128, 1, 1],
            smem: ATTN_V3_DKV_SMEM,
        };
        self.exec.launch(&format!("attn_bwd_dkv_v3_mma_{kind}"), cfg, bytemuck::bytes_of(&p))?;
        Ok((
            self.wrap(dq, a.q.dims().to_vec(), xt),
            self.wrap(dk, a.k.dims().to_vec(), xt),
            self.wrap(dv, a.v.dims().to_vec(), xt),
        ))
    }
}

impl AttentionOps for KernelBackend {
    fn attention_fwd(&self, a: &AttnArgs<'_>) -> Result<(Tensor, Tensor)> {
        let (xt, _) = act_types("attention", a.q, &[a.k, a.v])?;
        let (p, rows) = attn_params(a)?;
        if rows > 0 && attn_v3(self, p.d) {
            return self.attention_fwd_v3(a, xt);
        }
        if xt != DType::F32 {
            // 16-bit activations on the f32 kernel (no tensor cores, or a head dim past 128):
            // widened around it (the output rounded back); the lse stays f32.
            let [q, k, v] = [a.q, a.k, a.v].map(|t| self.cast(t, DType::F32));
            let (q, k, v) = (q?, k?, v?);
            let (o, lse) = self.attention_fwd(&AttnArgs { q: &q, k: &k, v: &v, ..*a })?;
            return Ok((self.cast(&o, xt)?, lse));
        }
        let mut p = p;
        if p.d > 256 {
            return Err(Error::Msg(format!("cuda attention: head dim {} (at most 256)", p.d)));
        }
        let (hq, hk, hv) = (self.held(a.q)?, self.held(a.k)?, self.held(a.v)?);
        let hs = a.seg.map(|s| self.held(s)).transpose()?;
        let (o, lse) = (self.alloc(a.q.numel(), DType::F32)?, self.alloc(rows, DType::F32)?);
        (p.q, p.k, p.v, p.seg, p.out0, p.out1) = (hq.ptr(), hk.ptr(), hv.ptr(), ptr(&hs), o.ptr, lse.ptr);
        if rows > 0 {
            self.exec.launch("attn_fwd_f32", grid_of(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
        }
        let lse_dims = a.q.dims()[..3].to_vec();
        Ok((self.wrap(o, a.q.dims().to_vec(), DType::F32), self.wrap(lse, lse_dims, DType::F32)))
    }
    fn attention_bwd(&self, a: &AttnArgs<'_>, o: &Tensor, lse: &Tensor, d_o: &Tensor) -> Result<AttnGrads> {
        let (xt, _) = act_types("attention_bwd", a.q, &[a.k, a.v, o, d_o])?;
        let (mut p, rows) = attn_params(a)?;
        if p.t != p.tk || p.d > 256 || o.dims() != a.q.dims() || d_o.dims() != a.q.dims() || lse.numel() != rows {
            return Err(Error::shape(
                "attention_bwd",
                format!("q {:?}, o {:?}, dO {:?}", a.q.dims(), o.dims(), d_o.dims()),
            ));
        }
        if rows > 0 && attn_v3_bwd(self, p.d) {
            return self.attention_bwd_v3(a, o, lse, d_o, xt);
        }
        if xt != DType::F32 {
            // As in the forward: widened around the f32 kernels, the gradients rounded back.
            let [q, k, v, o, d_o] = [a.q, a.k, a.v, o, d_o].map(|t| self.cast(t, DType::F32));
            let (q, k, v, o, d_o) = (q?, k?, v?, o?, d_o?);
            let g = self.attention_bwd(&AttnArgs { q: &q, k: &k, v: &v, ..*a }, &o, lse, &d_o)?;
            let [dq, dk, dv] = [&g.0, &g.1, &g.2].map(|t| self.cast(t, xt));
            return Ok((dq?, dk?, dv?));
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
            self.exec.launch("attn_bwd_dq_f32", grid_of(rows, 4).with_block(128), bytemuck::bytes_of(&p))?;
            (p.out0, p.out1) = (dk.ptr, dv.ptr);
            let krows = (p.b * p.tk * p.hkv) as usize;
            self.exec.launch("attn_bwd_dkv_f32", grid_of(krows, 4).with_block(128), bytemuck::bytes_of(&p))?;
        }
        Ok((
            self.wrap(dq, a.q.dims().to_vec(), DType::F32),
            self.wrap(dk, a.k.dims().to_vec(), DType::F32),
            self.wrap(dv, a.v.dims().to_vec(), DType::F32),
        ))
    }
}
