//! Token embedding lookup.

use crate::{Result, Tape, Tensor, Var};

/// Rows of `w` `[V, H]` for `ids` (an `I32` tensor) → `[.., H]`.
pub fn embedding(tape: &Tape, w: &Var, ids: &Tensor) -> Result<Var> {
    let y = w.value().backend().embedding_fwd(w.value(), ids)?;
    let (iw, ids, vocab) = (w.id(), ids.clone(), w.value().dims()[0]);
    Ok(tape.record(&[w], y, move |dy| Ok(vec![(iw, dy.backend().embedding_bwd(dy, &ids, vocab)?)])))
}
