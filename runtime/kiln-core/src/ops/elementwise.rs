//! Residual add, scale, soft-capping, dropout, casts and reshape.

use crate::{DType, Result, Shape, Tape, Var};

/// `x` in `dtype` (the mixed-precision path's step between f32 and 16-bit activations); the
/// gradient goes back in x's type. The identity when x already has it.
pub fn cast(tape: &Tape, x: &Var, dtype: DType) -> Result<Var> {
    let from = x.value().dtype();
    if from == dtype {
        return Ok(x.clone());
    }
    let y = x.value().backend().cast(x.value(), dtype)?;
    let ix = x.id();
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, g.backend().cast(g, from)?)])))
}

/// `a + b`.
pub fn add(tape: &Tape, a: &Var, b: &Var) -> Result<Var> {
    let y = a.value().backend().add(a.value(), b.value())?;
    let (ia, ib, ra, rb) = (a.id(), b.id(), a.requires_grad(), b.requires_grad());
    Ok(tape.record(&[a, b], y, move |g| {
        let mut out = Vec::new();
        if ra {
            out.push((ia, g.clone()));
        }
        if rb {
            out.push((ib, g.clone()));
        }
        Ok(out)
    }))
}

/// `x · s` for a constant `s`.
pub fn scale(tape: &Tape, x: &Var, s: f64) -> Result<Var> {
    let y = x.value().backend().scale(x.value(), s)?;
    let ix = x.id();
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, g.backend().scale(g, s)?)])))
}

/// Soft-capping `cap · tanh(x / cap)`: values kept inside `(−cap, cap)` smoothly (Gemma 2's
/// final logits).
pub fn softcap(tape: &Tape, x: &Var, cap: f64) -> Result<Var> {
    let be = x.value().backend();
    let y = be.softcap_fwd(x.value(), cap)?;
    let (ix, xv) = (x.id(), x.value().clone());
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, xv.backend().softcap_bwd(&xv, g, cap)?)])))
}

/// Inverted dropout: each element kept with probability `1 − p` and scaled by `1/(1 − p)`, the
/// mask drawn from `seed` (so a recomputed checkpointed block draws the same mask). Identity
/// when `p` is 0 or the tape is not recording (evaluation).
pub fn dropout(tape: &Tape, x: &Var, p: f64, seed: u64) -> Result<Var> {
    if p <= 0.0 || !tape.is_recording() {
        return Ok(x.clone());
    }
    if p >= 1.0 {
        return Err(crate::Error::Msg(format!("dropout probability {p} must be below 1")));
    }
    let mut rng = crate::rng::Rng::new(seed);
    let keep = (1.0 / (1.0 - p)) as f32;
    let m: Vec<f32> = (0..x.value().numel()).map(|_| if rng.uniform() < p { 0.0 } else { keep }).collect();
    let be = x.value().backend();
    let mask = crate::Tensor::from_vec(m, x.value().shape().clone())?;
    // In x's type, converted before the upload: 16-bit activations get a 16-bit mask (1/(1 − p)
    // rounded to it), half the bytes and no cast launch.
    let mask = match x.value().dtype() {
        d @ (DType::BF16 | DType::F16) => mask.to_dtype(d)?,
        _ => mask,
    };
    let mask = be.upload(&mask)?;
    let y = be.mul(x.value(), &mask)?;
    let ix = x.id();
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, g.backend().mul(g, &mask)?)])))
}

/// Same elements, new shape; the gradient is reshaped back.
pub fn reshape(tape: &Tape, x: &Var, shape: impl Into<Shape>) -> Result<Var> {
    let y = x.value().reshape(shape)?;
    let (ix, old) = (x.id(), x.value().shape().clone());
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, g.reshape(old)?)])))
}
