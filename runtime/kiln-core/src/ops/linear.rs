//! The linear layer, with an optional LoRA adapter fused in:
//! `y = x·Wᵀ (+ bias) + s·(x·Aᵀ)·Bᵀ`. `W` is usually frozen (possibly f16/bf16), A/B trainable.

use crate::backend::{LinearNeeds, LoraRef};
use crate::{Result, Tape, Var};

/// A LoRA adapter on one linear layer: A `[r, in]`, B `[out, r]`, scale `alpha/r` (or
/// `alpha/√r` with rsLoRA), and dropout on the adapter's input (PEFT's `lora_dropout`).
#[derive(Clone, Debug)]
pub struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    /// Dropout probability on the adapter's input while training.
    pub dropout: f64,
    /// Seed of the dropout mask (set per layer and step by the trainer).
    pub seed: u64,
}

impl Lora {
    /// An adapter without dropout.
    pub fn new(a: Var, b: Var, scale: f64) -> Lora {
        Lora { a, b, scale, dropout: 0.0, seed: 0 }
    }
}

/// `y = x·Wᵀ (+ bias) (+ LoRA)`, x `[.., in]`, W `[out, in]`.
pub fn linear(tape: &Tape, x: &Var, w: &Var, bias: Option<&Var>, lora: Option<&Lora>) -> Result<Var> {
    if let Some(l) = lora.filter(|l| l.dropout > 0.0 && tape.is_recording()) {
        // The adapter sees a dropped-out copy of x, so it cannot share the fused product:
        // base, then s·(drop(x)·Aᵀ)·Bᵀ as separate differentiable steps.
        let y = linear(tape, x, w, bias, None)?;
        let xd = super::dropout(tape, x, l.dropout, l.seed)?;
        let u = linear(tape, &xd, &l.a, None, None)?;
        let d = linear(tape, &u, &l.b, None, None)?;
        return super::add(tape, &y, &super::scale(tape, &d, l.scale)?);
    }
    let be = x.value().backend();
    let lref = lora.map(|l| LoraRef { a: l.a.value(), b: l.b.value(), scale: l.scale });
    let (y, u) = be.linear_fwd(x.value(), w.value(), bias.map(|b| b.value()), lref)?;
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    if let Some(l) = lora {
        inputs.push(&l.a);
        inputs.push(&l.b);
    }
    let needs = LinearNeeds {
        x: x.requires_grad(),
        w: w.requires_grad(),
        bias: bias.is_some_and(|b| b.requires_grad()),
        lora: lora.is_some_and(|l| l.a.requires_grad() || l.b.requires_grad()),
    };
    let (xv, wv) = (x.value().clone(), w.value().clone());
    let (ix, iw, ibias) = (x.id(), w.id(), bias.map(|b| b.id()));
    let saved = lora.map(|l| (l.a.clone(), l.b.clone(), l.scale)).zip(u);
    Ok(tape.record(&inputs, y, move |dy| {
        let lr = saved.as_ref().map(|((a, b, s), u)| (LoraRef { a: a.value(), b: b.value(), scale: *s }, u));
        let g = xv.backend().linear_bwd(dy, &xv, &wv, lr, needs)?;
        let mut out = Vec::new();
        out.extend(g.dx.map(|t| (ix, t)));
        out.extend(g.dw.map(|t| (iw, t)));
        out.extend(ibias.zip(g.dbias));
        if let Some(((a, b, _), _)) = &saved {
            if a.requires_grad() {
                out.extend(g.da.map(|t| (a.id(), t)));
            }
            if b.requires_grad() {
                out.extend(g.db.map(|t| (b.id(), t)));
            }
        }
        Ok(out)
    }))
}
