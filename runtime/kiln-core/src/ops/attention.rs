//! Causal grouped-query self-attention (flash-style on every backend).

use crate::backend::AttnArgs;
use crate::{Result, Tape, Tensor, Var};

/// What shapes an attention call besides q, k and v.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnOptions<'a> {
    /// `I32` `[B,T]` segment ids keeping packed rows apart.
    pub seg: Option<&'a Tensor>,
    /// Segment `4g` is a prefix that segments `4g+1..4g+3` also see (preference pairs).
    pub shared_prefix: bool,
    /// The softmax scale of `q·kᵀ` (usually `1/√D`).
    pub scale: f64,
    /// Sliding window: a query sees only the `window` latest keys (itself included).
    pub window: Option<usize>,
    /// Attention logit soft-capping: scores become `cap · tanh(score / cap)`.
    pub softcap: Option<f64>,
}

/// `softmax(q·kᵀ·scale + causal/segment mask)·v` with q `[B,T,Hq,D]`, k/v `[B,T,Hkv,D]`.
/// `seg` (`I32` `[B,T]`) keeps packed rows apart; with `shared_prefix`, segment `4g` is a
/// prefix that segments `4g+1..4g+3` also see (preference pairs: one prompt, two answers).
pub fn attention(
    tape: &Tape,
    q: &Var,
    k: &Var,
    v: &Var,
    seg: Option<&Tensor>,
    shared_prefix: bool,
    scale: f64,
) -> Result<Var> {
    attention_with(tape, q, k, v, &AttnOptions { seg, shared_prefix, scale, window: None, softcap: None })
}

/// [`attention`] with every option: a sliding window and logit soft-capping besides the
/// segments (Gemma's local layers, Gemma 2's capped scores).
pub fn attention_with(tape: &Tape, q: &Var, k: &Var, v: &Var, o: &AttnOptions<'_>) -> Result<Var> {
    let be = q.value().backend();
    let AttnOptions { seg, shared_prefix, scale, window, softcap } = *o;
    let args = AttnArgs { q: q.value(), k: k.value(), v: v.value(), seg, shared_prefix, scale, window, softcap };
    let (out, lse) = be.attention_fwd(&args)?;
    let (qv, kv, vv, sv, ov) = (q.value().clone(), k.value().clone(), v.value().clone(), seg.cloned(), out.clone());
    let ids = [(q.id(), q.requires_grad()), (k.id(), k.requires_grad()), (v.id(), v.requires_grad())];
    Ok(tape.record(&[q, k, v], out, move |d_o| {
        let args = AttnArgs { q: &qv, k: &kv, v: &vv, seg: sv.as_ref(), shared_prefix, scale, window, softcap };
        let (dq, dk, dv) = qv.backend().attention_bwd(&args, &ov, &lse, d_o)?;
        Ok([dq, dk, dv].into_iter().zip(ids).filter(|(_, (_, r))| *r).map(|(g, (id, _))| (id, g)).collect())
    }))
}
