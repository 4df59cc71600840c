//! Mean cross-entropy over non-ignored targets.

use crate::{DType, Result, Tape, Tensor, Var};

/// The loss variable and how many target rows counted.
pub struct CeResult {
    pub loss: Var,
    pub n_valid: usize,
}

/// Mean cross-entropy of `logits` `[.., V]` against `targets` (`I32`, < 0 ignored).
pub fn cross_entropy(tape: &Tape, logits: &Var, targets: &Tensor) -> Result<CeResult> {
    let be = logits.value().backend();
    let ce = be.cross_entropy_fwd(logits.value(), targets)?;
    // The loss keeps the logits' precision (f64 in gradient checks).
    let loss = match logits.value().dtype() {
        DType::F64 => Tensor::from_vec(vec![ce.loss], [1])?,
        _ => Tensor::from_vec(vec![ce.loss as f32], [1])?,
    };
    let loss = be.upload(&loss)?;
    let (lv, tv, lse, n, il) = (logits.value().clone(), targets.clone(), ce.lse, ce.n_valid, logits.id());
    let loss = tape.record(&[logits], loss, move |g| {
        let dloss = g.to_vec_f64()?.first().copied().unwrap_or(0.0);
        Ok(vec![(il, lv.backend().cross_entropy_bwd(&lv, &tv, &lse, dloss, n)?)])
    });
    Ok(CeResult { loss, n_valid: ce.n_valid })
}
