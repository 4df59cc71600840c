//! RMSNorm over the last dimension.

use crate::{Result, Tape, Var};

/// `y = x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(tape: &Tape, x: &Var, w: &Var, eps: f64) -> Result<Var> {
    let be = x.value().backend();
    let (y, rstd) = be.rms_norm_fwd(x.value(), w.value(), eps)?;
    let (xv, wv) = (x.value().clone(), w.value().clone());
    let (ix, iw, rx, rw) = (x.id(), w.id(), x.requires_grad(), w.requires_grad());
    Ok(tape.record(&[x, w], y, move |dy| {
        let (dx, dw) = xv.backend().rms_norm_bwd(dy, &xv, &wv, &rstd)?;
        let mut out = Vec::new();
        if rx {
            out.push((ix, dx));
        }
        if rw {
            out.push((iw, dw));
        }
        Ok(out)
    }))
}
