//! The backend contract.
//!
//! A backend owns device memory and runs ops; it never sees the tape or the model. The trait is
//! split by op family (one file per family in each backend), and every backend answers
//! [`Backend::supports`] so the parity suite can report an unsupported case as skipped with its
//! reason instead of passing it.
//!
//! Conventions shared by every method:
//! * tensors are contiguous, row-major; "rows" are all dimensions but the last;
//! * trainable state and outputs are f32 (f64 on the CPU for gradient checks); frozen weights may
//!   be f16/bf16 and are widened inside the kernel; on a backend whose
//!   [`Backend::activation_dtype`] is 16-bit, an activation op given 16-bit activations returns
//!   them (and their gradients) in that type, while parameter gradients stay f32;
//! * integer inputs (ids, positions, targets, segment ids) are `I32`.

pub mod cpu;

use crate::{DType, Result, Shape, Tensor};

/// The CPU backend (stateless; threads come from rayon's global pool). Its kernels are in
/// [`cpu`]; the type is declared here, below both, because CPU tensors point at it
/// (`tensor.rs`) while its kernels work on tensors.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// The one CPU backend instance that CPU tensors point to.
pub static CPU: CpuBackend = CpuBackend;

/// Declares [`Op`] from one table, so a variant cannot miss its place in [`Op::ALL`], its
/// name or its family.
macro_rules! ops {
    ($($(#[$doc:meta])* $v:ident => $name:literal in $family:literal,)*) => {
        /// Every op a backend runs. Each belongs to a family whose stem names its files
        /// everywhere: `kiln-core/src/backend/cpu/<family>.rs`, `kernels/<family>.cu`,
        /// `kiln-cuda/src/backend/<family>.rs`, `shaders/<family>*.wgsl`,
        /// `kiln-wgpu/src/backend/<family>.rs` and the parity cases `<family>_cases()`
        /// (the table is in `kernels/README.md`).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Op {
            $($(#[$doc])* $v,)*
        }

        impl Op {
            /// Every op, for tables and `kiln info`.
            pub const ALL: [Op; [$(stringify!($v)),*].len()] = [$(Op::$v),*];

            /// The op's one name (snake case), as in the backend methods (`<name>_fwd`), the
            /// parity cases and `kiln selftest --op`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Op::$v => $name,)*
                }
            }

            /// The family's stem: the file name of the op on every backend.
            pub fn family(self) -> &'static str {
                match self {
                    $(Op::$v => $family,)*
                }
            }
        }
    };
}

ops! {
    Cast => "cast" in "elementwise",
    Add => "add" in "elementwise",
    Scale => "scale" in "elementwise",
    /// Soft-capping `cap · tanh(x / cap)` (Gemma 2's final logits), forward and gradient.
    Softcap => "softcap" in "elementwise",
    SwiGlu => "swiglu" in "glu",
    GeGlu => "geglu" in "glu",
    Matmul => "matmul" in "matmul",
    /// The linear layer `x·Wᵀ (+ bias) (+ LoRA)`.
    Linear => "linear" in "matmul",
    RmsNorm => "rms_norm" in "norm",
    Rope => "rope" in "rope",
    Attention => "attention" in "attention",
    Embedding => "embedding" in "embedding",
    CrossEntropy => "cross_entropy" in "loss",
    AdamW => "adamw" in "optim",
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Op {
    type Err = crate::Error;
    /// An op by its name (`rms_norm`); the error lists every name.
    fn from_str(s: &str) -> Result<Op> {
        Op::ALL.into_iter().find(|o| o.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
            crate::Error::Msg(format!("unknown op {s:?}: one of {}", names.join(", ")))
        })
    }
}

/// Whether a backend runs an op at a dtype.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    Yes,
    /// Not supported, with the reason shown in skip lines.
    No(String),
}

/// Moving and converting memory.
pub trait MemoryOps {
    /// Copies a tensor of this backend to the CPU.
    fn to_cpu(&self, t: &Tensor) -> Result<Tensor>;
    /// Copies a CPU tensor onto this backend.
    fn upload(&self, t: &Tensor) -> Result<Tensor>;
    /// Converts the element type.
    fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor>;
    /// A zero tensor on this backend.
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Tensor>;
}

/// Elementwise ops and small reductions.
pub trait ElementwiseOps {
    /// `a + b`, same shapes.
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `a · s`.
    fn scale(&self, a: &Tensor, s: f64) -> Result<Tensor>;
    /// `a ⊙ b`, same shapes (dropout masks).
    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// Σ a², accumulated in f64 (gradient norms).
    fn sum_squares(&self, a: &Tensor) -> Result<f64>;
    /// Soft-capping `cap · tanh(x / cap)` (Gemma 2's final logits), `cap > 0`.
    fn softcap_fwd(&self, x: &Tensor, cap: f64) -> Result<Tensor>;
    /// The gradient of [`ElementwiseOps::softcap_fwd`] at `x`: `dy · (1 − tanh²(x / cap))`.
    fn softcap_bwd(&self, x: &Tensor, dy: &Tensor, cap: f64) -> Result<Tensor>;
}

/// Gated linear units, the MLP's activation: `act(g) · u` elementwise, `g` and `u` the same
/// shape.
pub trait GluOps {
    /// `silu(g) · u` (Llama, Mistral, Qwen).
    fn swiglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor>;
    /// Gradients of `silu(g) · u` for `g` and `u`.
    fn swiglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)>;
    /// `gelu_tanh(g) · u` (Gemma), with PyTorch's tanh approximation
    /// `gelu_tanh(x) = x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    fn geglu_fwd(&self, g: &Tensor, u: &Tensor) -> Result<Tensor>;
    /// Gradients of `gelu_tanh(g) · u` for `g` and `u`.
    fn geglu_bwd(&self, g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// The low-rank adapter attached to a linear layer: `s · (x·Aᵀ)·Bᵀ`, A `[r, in]`, B `[out, r]`.
pub struct LoraRef<'a> {
    pub a: &'a Tensor,
    pub b: &'a Tensor,
    pub scale: f64,
}

/// Gradients of a (LoRA) linear layer; `None` where not asked for.
#[derive(Default)]
pub struct LinearGrads {
    pub dx: Option<Tensor>,
    pub dw: Option<Tensor>,
    pub dbias: Option<Tensor>,
    pub da: Option<Tensor>,
    pub db: Option<Tensor>,
}

/// Which gradients a linear backward must produce.
#[derive(Clone, Copy, Default)]
pub struct LinearNeeds {
    pub x: bool,
    pub w: bool,
    pub bias: bool,
    pub lora: bool,
}

/// The sizes of `x [.., k]·Wᵀ` with `W [n, k]`: `m` rows of `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinDims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl LinDims {
    /// Checks `W` against `x` (every backend's linear layer relies on these shapes).
    pub fn of(x: &Tensor, w: &Tensor) -> Result<LinDims> {
        let wd = w.dims();
        if wd.len() != 2 || x.shape().last() != wd[1] {
            return Err(crate::Error::shape("linear", format!("x {:?} with W {:?}", x.shape(), w.shape())));
        }
        Ok(LinDims { m: x.shape().rows(), k: wd[1], n: wd[0] })
    }
    /// The dims of an output with `n` columns per row of `x`: `x`'s dims with the last replaced.
    pub fn out_dims(x: &Tensor, n: usize) -> Vec<usize> {
        let mut d = x.dims().to_vec();
        match d.last_mut() {
            Some(l) => *l = n,
            None => d.push(n),
        }
        d
    }
}

/// The sizes of an RMSNorm: `rows` rows of `h`, the weight `[h]`. Every backend's norm checks
/// its operands through [`NormDims::of`] (and [`NormDims::check_rows`] for backward).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormDims {
    pub rows: usize,
    pub h: usize,
}

impl NormDims {
    /// Checks the weight against `x`'s last dimension.
    pub fn of(x: &Tensor, w: &Tensor) -> Result<NormDims> {
        let h = x.shape().last();
        if w.numel() != h {
            return Err(crate::Error::shape("rms_norm", format!("x {:?} with w {:?}", x.shape(), w.shape())));
        }
        Ok(NormDims { rows: x.shape().rows(), h })
    }
    /// Checks backward's `dy` (like `x`) and saved `rstd` (one per row).
    pub fn check_bwd(&self, dy: &Tensor, rstd: &Tensor) -> Result<()> {
        if dy.numel() != self.rows * self.h || rstd.numel() != self.rows {
            return Err(crate::Error::shape(
                "rms_norm_bwd",
                format!("dy {:?}, rstd {:?} for {} rows of {}", dy.shape(), rstd.shape(), self.rows, self.h),
            ));
        }
        Ok(())
    }
}

/// The sizes of a cross-entropy: `m` rows of `v` logits, one target per row. Every backend's
/// loss checks its operands through [`CeDims::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CeDims {
    pub m: usize,
    pub v: usize,
}

impl CeDims {
    /// Checks the targets against the logits' rows.
    pub fn of(logits: &Tensor, targets: &Tensor) -> Result<CeDims> {
        let (m, v) = (logits.shape().rows(), logits.shape().last());
        if targets.numel() != m {
            return Err(crate::Error::shape(
                "cross_entropy",
                format!("logits {:?}, targets {:?}", logits.shape(), targets.shape()),
            ));
        }
        Ok(CeDims { m, v })
    }
    /// Checks per-row values (`lse`, row weights) against the rows.
    pub fn check_rows(&self, what: &str, t: &Tensor) -> Result<()> {
        if t.numel() != self.m {
            return Err(crate::Error::shape("cross_entropy", format!("{what} {:?} for {} rows", t.shape(), self.m)));
        }
        Ok(())
    }
}

/// The sizes of a RoPE call: `x` `[B, T, H, D]` with even `D`, one position per `(b, t)` and
/// `r/2` inverse frequencies, `0 < r ≤ D`: the first `r` dims of each head rotate and the rest
/// pass through (partial rotary, transformers' `partial_rotary_factor`, when `r < D`). Every
/// backend's RoPE checks its operands through [`RopeDims::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    /// `B·T` rows of positions.
    pub bt: usize,
    pub h: usize,
    pub d: usize,
    /// The rotated dims of each head: twice the inverse frequencies, even, at most `d`.
    pub r: usize,
}

impl RopeDims {
    /// Checks the operands' shapes and the positions' dtype.
    pub fn of(x: &Tensor, pos: &Tensor, inv_freq: &Tensor) -> Result<RopeDims> {
        let d = x.dims();
        if d.len() != 4 || !d[3].is_multiple_of(2) {
            return Err(crate::Error::shape("rope", format!("x must be [B,T,H,D] with even D, got {d:?}")));
        }
        let (bt, h, hd) = (d[0] * d[1], d[2], d[3]);
        let pairs = inv_freq.numel();
        if pairs == 0 || 2 * pairs > hd {
            return Err(crate::Error::shape(
                "rope",
                format!("inv_freq {:?}: 1 to D/2 = {} frequencies for x {d:?}", inv_freq.shape(), hd / 2),
            ));
        }
        if pos.numel() != bt || pos.dtype() != DType::I32 {
            return Err(crate::Error::shape(
                "rope",
                format!("pos {:?} ({}) for x {d:?}: one i32 position per (b, t)", pos.shape(), pos.dtype().name()),
            ));
        }
        Ok(RopeDims { bt, h, d: hd, r: 2 * pairs })
    }
}

impl LoraRef<'_> {
    /// The adapter's rank, after checking A `[r, k]` and B `[n, r]` against the layer.
    pub fn rank(&self, d: &LinDims) -> Result<usize> {
        let (ad, bd) = (self.a.dims(), self.b.dims());
        if ad.len() != 2 || bd.len() != 2 || ad[1] != d.k || bd[0] != d.n || bd[1] != ad[0] {
            return Err(crate::Error::shape("lora", format!("A {:?}, B {:?} for in={} out={}", ad, bd, d.k, d.n)));
        }
        Ok(ad[0])
    }
}

/// The sizes of [`MatmulOps::matmul`]: `op(a)` is `[m, k]`, `op(b)` is `[k, n]`; `out` is the
/// result's dims (`a`'s leading dims, or `[m]` when `a` is transposed, then `n`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatmulDims {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub out: Vec<usize>,
}

impl MatmulDims {
    /// Checks the operands' shapes.
    pub fn of(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<MatmulDims> {
        let (ad, bd) = (a.dims(), b.dims());
        if bd.len() != 2 {
            return Err(crate::Error::shape("matmul", format!("b must be 2-D, got {:?}", b.shape())));
        }
        if ta && ad.len() != 2 {
            return Err(crate::Error::shape("matmul", "transposed a must be 2-D"));
        }
        let (m, k) = if ta { (ad[1], ad[0]) } else { (a.shape().rows(), a.shape().last()) };
        let (kb, n) = if tb { (bd[1], bd[0]) } else { (bd[0], bd[1]) };
        if k != kb {
            return Err(crate::Error::shape("matmul", format!("{ad:?}·{bd:?} (ta={ta}, tb={tb})")));
        }
        let mut out = if ta { vec![m] } else { ad[..ad.len().saturating_sub(1)].to_vec() };
        if out.is_empty() {
            out.push(1);
        }
        out.push(n);
        Ok(MatmulDims { m, k, n, out })
    }
}

/// Matrix products.
pub trait MatmulOps {
    /// `op(a)·op(b)` for 2-D operands, `op` transposing when asked: `a` is `[m,k]` (or `[k,m]`
    /// with `ta`), `b` is `[k,n]` (or `[n,k]` with `tb`). Leading dims of `a` are flattened.
    fn matmul(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor>;
    /// `y = x·Wᵀ (+ bias) (+ s·(x·Aᵀ)·Bᵀ)`; also returns `u = x·Aᵀ`, saved for backward.
    fn linear_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<LoraRef<'_>>,
    ) -> Result<(Tensor, Option<Tensor>)>;
    /// Backward of [`MatmulOps::linear_fwd`] given `dy` and the saved `u`.
    fn linear_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        lora: Option<(LoraRef<'_>, &Tensor)>,
        needs: LinearNeeds,
    ) -> Result<LinearGrads>;
}

/// Normalization.
pub trait NormOps {
    /// RMSNorm over the last dim: `y = x · rstd · w`; returns `(y, rstd)` with rstd per row.
    fn rms_norm_fwd(&self, x: &Tensor, w: &Tensor, eps: f64) -> Result<(Tensor, Tensor)>;
    /// Gradients for `x` and `w` (`dw` summed over rows).
    fn rms_norm_bwd(&self, dy: &Tensor, x: &Tensor, w: &Tensor, rstd: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// Rotary position embedding, HF "rotate half" layout.
pub trait RopeOps {
    /// Rotates `x` `[B, T, H, D]` by `pos[b,t] · inv_freq[i]` for pair `(i, i + r/2)`, where
    /// `r = 2·inv_freq.len() ≤ D`; dims from `r` on pass through unchanged (partial rotary;
    /// `r = D` rotates every dim). The rotated dims are multiplied by `mscale` (transformers'
    /// `attention_scaling` of YaRN and LongRoPE, which scales cos and sin and so only the rotary
    /// slice: with partial rotary it cannot be folded into the attention scale). `inverse`
    /// rotates by the negative angle, which with the same `mscale` is the backward (the adjoint).
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, mscale: f32, inverse: bool) -> Result<Tensor>;
}

/// Inputs shared by attention forward and backward.
pub struct AttnArgs<'a> {
    /// `[B, T, Hq, D]`.
    pub q: &'a Tensor,
    /// `[B, Tk, Hkv, D]`, `Hq` a multiple of `Hkv` (grouped-query). `Tk = T` in training; when
    /// decoding with a KV cache (forward only, no segments) `Tk > T` and the queries are the
    /// last `T` positions.
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    /// `[B, T]` segment ids: a query attends to keys at or before it with the same id (packing).
    pub seg: Option<&'a Tensor>,
    /// Segment ids come in groups of four: id `4g` is a prefix shared by ids `4g+1..4g+3`, whose
    /// queries also see its keys (a preference pair's prompt, computed once for both answers).
    pub shared_prefix: bool,
    pub scale: f64,
    /// Sliding window: a query at position `i` sees keys `j` with `i − j < window` only
    /// (Mistral, Gemma's local layers). `None`: every earlier key.
    pub window: Option<usize>,
    /// Attention logit soft-capping (Gemma 2): each score `s = q·k·scale` becomes
    /// `cap · tanh(s / cap)` before the softmax. `None`: scores as they are.
    pub softcap: Option<f64>,
}

/// The sizes of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnDims {
    pub b: usize,
    pub t: usize,
    /// Keys per row: `t` in training; more than `t` when decoding with a KV cache, where the
    /// queries are the last `t` positions.
    pub tk: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
}

impl<'a> AttnArgs<'a> {
    /// Plain causal attention over `q`, `k`, `v` at the usual 1/√head_dim scale: no packing, no
    /// window, no soft-cap.
    pub fn causal(q: &'a Tensor, k: &'a Tensor, v: &'a Tensor) -> Self {
        let d = q.dims().last().copied().unwrap_or(1).max(1);
        AttnArgs {
            q,
            k,
            v,
            seg: None,
            shared_prefix: false,
            scale: 1.0 / (d as f64).sqrt(),
            window: None,
            softcap: None,
        }
    }

    /// Checks the shapes every backend relies on and returns the sizes.
    pub fn dims(&self) -> Result<AttnDims> {
        let (q, k, v) = (self.q.dims(), self.k.dims(), self.v.dims());
        let ok = q.len() == 4
            && k.len() == 4
            && k == v
            && q[0] == k[0]
            && (q[1] == k[1] || (q[1] < k[1] && self.seg.is_none()))
            && q[3] == k[3]
            && k[2] > 0
            && q[2] % k[2] == 0;
        if !ok {
            return Err(crate::Error::shape("attention", format!("q {q:?}, k {k:?}, v {v:?}")));
        }
        if let Some(s) = self.seg.filter(|s| s.numel() != q[0] * q[1]) {
            return Err(crate::Error::shape("attention", format!("segments {:?} for q {q:?}", s.shape())));
        }
        if self.window == Some(0) {
            return Err(crate::Error::Msg("attention: a sliding window of 0 keys".into()));
        }
        if let Some(c) = self.softcap.filter(|c| !(c.is_finite() && *c > 0.0)) {
            return Err(crate::Error::Msg(format!("attention: soft-cap {c} must be a positive number")));
        }
        Ok(AttnDims { b: q[0], t: q[1], tk: k[1], hq: q[2], hkv: k[2], d: q[3] })
    }
}

/// Causal attention, flash-style: online softmax over key blocks, no `T×T` matrix in memory.
pub trait AttentionOps {
    /// Returns `(o [B,T,Hq,D], lse [B,T,Hq])`.
    fn attention_fwd(&self, args: &AttnArgs<'_>) -> Result<(Tensor, Tensor)>;
    /// Returns `(dq, dk, dv)`, recomputing probabilities from `lse`.
    fn attention_bwd(&self, args: &AttnArgs<'_>, o: &Tensor, lse: &Tensor, d_o: &Tensor) -> Result<AttnGrads>;
}

/// The gradients of attention's inputs: `(dq, dk, dv)`, shaped like `q`, `k` and `v`.
pub type AttnGrads = (Tensor, Tensor, Tensor);

/// Token embedding.
pub trait EmbeddingOps {
    /// Rows of `w` `[V, H]` picked by `ids` `[N]` → `[N, H]`. Out-of-range ids are an error.
    fn embedding_fwd(&self, w: &Tensor, ids: &Tensor) -> Result<Tensor>;
    /// Scatter-add of `dy` `[N, H]` into a `[vocab, H]` gradient.
    fn embedding_bwd(&self, dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor>;
}

/// Result of the cross-entropy forward.
pub struct CeOut {
    /// Mean negative log-likelihood over non-ignored rows (0 when none).
    pub loss: f64,
    /// Rows that count.
    pub n_valid: usize,
    /// Per-row log-sum-exp, saved for backward.
    pub lse: Tensor,
    /// Per-row negative log-likelihood `[M]` (0 on ignored rows), for sequence log-probs.
    pub nll: Tensor,
}

/// Loss over the vocabulary.
pub trait LossOps {
    /// Cross-entropy of `logits` `[M, V]` against `targets` `[M]`; a target < 0 is ignored.
    /// The vocabulary is processed in chunks with an online log-sum-exp.
    fn cross_entropy_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<CeOut>;
    /// `dlogits = (softmax − onehot) · dloss / n_valid`, zero on ignored rows.
    fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: f64,
        n_valid: usize,
    ) -> Result<Tensor>;
    /// `dlogits[r] = (softmax[r] − onehot[r]) · drow[r]`, zero on ignored rows: the gradient of
    /// `Σ_r drow[r]·nll[r]` (per-row weights, as preference losses need).
    fn cross_entropy_bwd_rows(&self, logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor>;
}

/// AdamW hyper-parameters for one step.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// 1-based step, for bias correction.
    pub step: u64,
}

/// The f32 factors of one AdamW update, shared by every backend's kernel:
/// `m ← b1·m + c1·g`, `v ← b2·v + c2·g²`, then
/// `p ← p·decay − step·m / (sqrt(v)/bc2s + eps)`.
///
/// Every factor is computed in f64 from the f64 hyper-parameters and rounded once, as
/// `torch.optim.AdamW` computes them in Python floats: a kernel never forms `1 − β` from the
/// f32 β, which at β2 = 0.999 (f32 0.99900001287) would make `1 − β2` 1.3e-5 too small.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWFactors {
    /// β1.
    pub b1: f32,
    /// `1 − β1`.
    pub c1: f32,
    /// β2.
    pub b2: f32,
    /// `1 − β2`.
    pub c2: f32,
    /// `1 − lr·weight_decay` (decoupled weight decay).
    pub decay: f32,
    /// `lr / (1 − β1^t)`.
    pub step: f32,
    /// `sqrt(1 − β2^t)`.
    pub bc2s: f32,
    /// ε.
    pub eps: f32,
}

impl AdamWStep {
    /// The bias-corrected factors of this step, each computed in f64 and rounded once.
    pub fn factors(&self) -> AdamWFactors {
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        AdamWFactors {
            b1: self.beta1 as f32,
            c1: (1.0 - self.beta1) as f32,
            b2: self.beta2 as f32,
            c2: (1.0 - self.beta2) as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            step: (self.lr / bc1) as f32,
            bc2s: bc2.sqrt() as f32,
            eps: self.eps as f32,
        }
    }
}

/// Optimizers (state in f32).
pub trait OptimOps {
    /// One AdamW update, in place on `param`, `m` and `v`.
    fn adamw_step(&self, it: AdamWItem<'_>, hp: AdamWStep) -> Result<()>;
}

/// A compute backend: CPU, CUDA or wgpu.
pub trait Backend:
    MemoryOps
    + ElementwiseOps
    + GluOps
    + MatmulOps
    + NormOps
    + RopeOps
    + AttentionOps
    + EmbeddingOps
    + LossOps
    + OptimOps
    + Send
    + Sync
{
    /// Short name: "cpu", "cuda", "wgpu".
    fn name(&self) -> &'static str;
    /// The type a model's activations (and their gradients) travel in between this backend's
    /// kernels: f32 by default; a GPU backend may choose bf16 or f16 (mixed precision: the
    /// activation ops read and write it and compute in f32; trainable parameters, their
    /// gradients and optimizer state stay f32; norms, softmax and the loss accumulate in f32).
    fn activation_dtype(&self) -> DType {
        DType::F32
    }
    /// Whether `op` runs at `dtype` here.
    fn supports(&self, op: Op, dtype: DType) -> Support;
    /// The precision `op` computes in for inputs of `dtype` (what the parity suite's tolerance
    /// follows). By default f32 for 16-bit and block-quantized inputs, which a backend widens
    /// exactly (as the CPU does for every op) before computing in f32; a backend that rounds
    /// operands says so — e.g. a GPU feeding 16-bit operands to tensor cores, or an f16 GEMM.
    fn compute_dtype(&self, _op: Op, dtype: DType) -> DType {
        match dtype {
            DType::BF16 | DType::F16 | DType::Quant(_) => DType::F32,
            d => d,
        }
    }
    /// One AdamW update of a whole parameter group (one `hp`), every gradient first scaled by
    /// `grad_scale` (gradient-norm clipping; 1: none). A GPU backend fuses it into one launch;
    /// this default runs `scale` and `adamw_step` per tensor, with the same arithmetic.
    fn adamw_multi(&self, items: &mut [AdamWItem<'_>], hp: AdamWStep, grad_scale: f64) -> Result<()> {
        for it in items.iter_mut() {
            let g = if grad_scale != 1.0 { self.scale(it.grad, grad_scale)? } else { it.grad.clone() };
            self.adamw_step(AdamWItem { param: &mut *it.param, grad: &g, m: &mut *it.m, v: &mut *it.v }, hp)?;
        }
        Ok(())
    }
    /// Σ x² over several tensors (the gradients' global norm): one launch and one read-back on a
    /// GPU backend; this default sums each tensor's `sum_squares`.
    fn sum_squares_multi(&self, ts: &[&Tensor]) -> Result<f64> {
        ts.iter().map(|t| self.sum_squares(t)).sum()
    }
    /// Rows of logits the fused LM head + cross-entropy forms at once for a vocabulary of
    /// `vocab` (`ops::linear_cross_entropy`): 128 here (the CPU's caches); a GPU backend picks
    /// thousands, so the head's GEMMs fill the device.
    fn loss_chunk_rows(&self, _vocab: usize) -> usize {
        128
    }
    /// One chunk of the fused LM head's loss: the per-row NLL `[M]` (0 on ignored rows) and,
    /// when `grad` is `Some(s)`, `dlogits = (softmax − onehot)·s` (zero on ignored rows), for
    /// targets the caller has checked against the vocabulary. A GPU backend forms both in one
    /// pass over the logits and reads nothing back; this default composes
    /// [`LossOps::cross_entropy_fwd`] and [`LossOps::cross_entropy_bwd`].
    fn cross_entropy_chunk(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        grad: Option<f64>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let ce = self.cross_entropy_fwd(logits, targets)?;
        let d = match grad {
            Some(s) => Some(self.cross_entropy_bwd(logits, targets, &ce.lse, s, 1)?),
            None => None,
        };
        Ok((ce.nll, d))
    }
    /// `acc + s·Σ nll` as a one-element tensor of this backend in `nll`'s precision (f64 stays
    /// f64, else f32); `acc` is an earlier result or `None` (0). The mean loss over a fused
    /// head's chunks stays on a GPU; this default sums on the host in f64.
    fn loss_sum(&self, acc: Option<&Tensor>, nll: &Tensor, s: f64) -> Result<Tensor> {
        let prev = match acc {
            Some(a) => a.item()?,
            None => 0.0,
        };
        let v = prev + s * nll.to_vec_f64()?.iter().sum::<f64>();
        let t = match nll.dtype() {
            DType::F64 => Tensor::from_vec(vec![v], [1])?,
            _ => Tensor::from_vec(vec![v as f32], [1])?,
        };
        self.upload(&t)
    }
    /// `a · s[0]` for a one-element tensor `s` of this backend (a backward seed: no read-back
    /// on a GPU). This default reads `s` and skips the product when it is 1.
    fn scale_by(&self, a: &Tensor, s: &Tensor) -> Result<Tensor> {
        if s.numel() != 1 {
            return Err(crate::Error::shape("scale_by", format!("a scale of {} elements", s.numel())));
        }
        let v = s.item()?;
        if v == 1.0 { Ok(a.clone()) } else { self.scale(a, v) }
    }
    /// `parts` joined along their first dimension (same type and trailing dims), f32 or f64.
    /// This default joins them on the host.
    fn concat0(&self, parts: &[Tensor]) -> Result<Tensor> {
        let (dims, dtype) = concat0_dims(parts)?;
        let t = match dtype {
            DType::F64 => {
                let v: Vec<Vec<f64>> = parts.iter().map(|p| p.to_vec_f64()).collect::<Result<_>>()?;
                Tensor::from_vec(v.concat(), dims)?
            }
            _ => {
                let v: Vec<Vec<f32>> = parts.iter().map(|p| p.to_vec_f32()).collect::<Result<_>>()?;
                Tensor::from_vec(v.concat(), dims)?
            }
        };
        self.upload(&t)
    }
    /// The device's launch, upload and host-sync counts, where this backend drives a device
    /// queue (none on the CPU).
    fn counters(&self) -> Option<DeviceCounters> {
        None
    }
    /// [`Backend::sum_squares_multi`] and the values of one-element tensors `scalars` (a step's
    /// loss), read back together: one host synchronization a step on a GPU. This default reads
    /// them one by one.
    fn sum_squares_multi_and(&self, ts: &[&Tensor], scalars: &[&Tensor]) -> Result<(f64, Vec<f64>)> {
        let s = self.sum_squares_multi(ts)?;
        Ok((s, scalars.iter().map(|t| t.item()).collect::<Result<_>>()?))
    }
    /// Whether [`Backend::adamw8_step`] runs here (else the trainer keeps 8-bit moments on the
    /// host and steps them through f32 a tensor at a time).
    fn has_adamw8(&self) -> bool {
        false
    }
    /// One AdamW update with the moments in block-wise 8 bits on this backend's device
    /// (`Adam8State`), gradients scaled by `grad_scale` first: dequantize, update, requantize
    /// in one kernel, the host path's arithmetic.
    fn adamw8_step(
        &self,
        _param: &mut Tensor,
        _grad: &Tensor,
        _state: &mut Adam8State,
        _hp: AdamWStep,
        _grad_scale: f64,
    ) -> Result<()> {
        Err(crate::Error::Msg(format!("{}: no 8-bit AdamW kernel", self.name())))
    }
}

/// The error every backend gives for the first token id outside `0 … vocab` (embedding).
pub fn check_token_ids(ids: &[i32], vocab: usize) -> Result<()> {
    if let Some((i, &bad)) = ids.iter().enumerate().find(|&(_, &t)| t < 0 || t as usize >= vocab) {
        return Err(crate::Error::Msg(format!(
            "embedding: token id {bad} at position {i} is outside the vocabulary of {vocab}"
        )));
    }
    Ok(())
}

/// The error every backend (and the fused LM head) gives for the first target ≥ `vocab` of
/// `op` (a target < 0 is ignored).
pub fn check_targets(op: &str, targets: &[i32], vocab: usize) -> Result<()> {
    if let Some((r, &bad)) = targets.iter().enumerate().find(|&(_, &t)| t >= 0 && t as usize >= vocab) {
        return Err(crate::Error::Msg(format!("{op}: target {bad} in row {r} is outside the vocabulary of {vocab}")));
    }
    Ok(())
}

/// The joined shape and type of [`Backend::concat0`]'s parts, which must agree in type (f32
/// or f64) and in every dimension after the first.
pub fn concat0_dims(parts: &[Tensor]) -> Result<(Vec<usize>, DType)> {
    let first = parts.first().ok_or_else(|| crate::Error::shape("concat0", "no parts"))?;
    let dtype = first.dtype();
    if !matches!(dtype, DType::F32 | DType::F64) {
        return Err(crate::Error::shape("concat0", format!("{} parts (f32 or f64 expected)", dtype.name())));
    }
    let tail = first.dims().get(1..).unwrap_or(&[]).to_vec();
    let mut rows = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.dtype() != dtype || p.dims().is_empty() || p.dims()[1..] != tail[..] {
            return Err(crate::Error::shape(
                "concat0",
                format!("part {i} is {} {:?}, part 0 {} {:?}", p.dtype().name(), p.dims(), dtype.name(), first.dims()),
            ));
        }
        rows += p.dims()[0];
    }
    let mut dims = vec![rows];
    dims.extend(tail);
    Ok((dims, dtype))
}

/// What a device backend has done since it opened (monotonic counts): kernel launches, copies
/// to the device, and host synchronizations — the waits for the device's queue to drain
/// (every read-back is one). A training step reports their differences per step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    pub launches: u64,
    pub uploads: u64,
    pub host_syncs: u64,
}

impl std::ops::Sub for DeviceCounters {
    type Output = DeviceCounters;
    fn sub(self, o: DeviceCounters) -> DeviceCounters {
        DeviceCounters {
            launches: self.launches - o.launches,
            uploads: self.uploads - o.uploads,
            host_syncs: self.host_syncs - o.host_syncs,
        }
    }
}

/// Block-wise 8-bit AdamW moments on a device (kiln's format: 256 values per f32 scale; first
/// moment signed codes of √(|m|/a), second moment codes of √(√v/a)). Codes are bytes, four to
/// an element of an i32 tensor.
pub struct Adam8State {
    pub m_codes: Tensor,
    pub m_scales: Tensor,
    pub v_codes: Tensor,
    pub v_scales: Tensor,
    /// Values per moment.
    pub n: usize,
}

/// One tensor of a fused optimizer step: the parameter and its moments, updated in place.
pub struct AdamWItem<'a> {
    pub param: &'a mut Tensor,
    pub grad: &'a Tensor,
    pub m: &'a mut Tensor,
    pub v: &'a mut Tensor,
}
