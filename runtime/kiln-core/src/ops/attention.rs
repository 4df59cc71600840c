//! Causal grouped-query self-attention (flash-style on every backend).

use crate::backend::AttnArgs;
use crate::{Result, Tape, Tensor, Var};

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
    let be = q.value().backend();
    let args = AttnArgs { q: q.value(), k: k.value(), v: v.value(), seg, shared_prefix, scale };
    let (o, lse) = be.attention_fwd(&args)?;
    let (qv, kv, vv, sv, ov) = (q.value().clone(), k.value().clone(), v.value().clone(), seg.cloned(), o.clone());
    let ids = [(q.id(), q.requires_grad()), (k.id(), k.requires_grad()), (v.id(), v.requires_grad())];
    Ok(tape.record(&[q, k, v], o, move |d_o| {
        let args = AttnArgs { q: &qv, k: &kv, v: &vv, seg: sv.as_ref(), shared_prefix, scale };
        let (dq, dk, dv) = qv.backend().attention_bwd(&args, &ov, &lse, d_o)?;
        Ok([dq, dk, dv].into_iter().zip(ids).filter(|(_, (_, r))| *r).map(|(g, (id, _))| (id, g)).collect())
    }))
}
