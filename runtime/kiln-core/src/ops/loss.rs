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

/// Mean cross-entropy of `h·Wᵀ` `[N, V]` against `targets` `[N]` without materializing the
/// logits of all rows: rows go through in chunks of `chunk`; each chunk's logits, their loss
/// and — when a gradient will be asked for — their gradient with respect to `h` (and `W`, when
/// trainable) are computed together and the chunk's logits dropped. Backward then only scales
/// the saved gradients by the upstream seed (the loss is a scalar, so its gradient is known up
/// to that factor), so the LM head's GEMMs run once each, as unfused, at a fraction of the
/// memory: [chunk, V] instead of [N, V] logits and their gradient.
pub fn linear_cross_entropy(tape: &Tape, h: &Var, w: &Var, targets: &Tensor, chunk: usize) -> Result<CeResult> {
    use crate::backend::LinearNeeds;
    let (hv, wv) = (h.value(), w.value());
    let be = hv.backend();
    let n = hv.shape().rows();
    let tcpu = targets.to_cpu()?;
    let tv = tcpu.as_slice::<i32>()?;
    if tv.len() != n {
        return Err(crate::Error::shape("linear_cross_entropy", format!("{n} rows, {} targets", tv.len())));
    }
    let n_valid = tv.iter().filter(|&&t| t >= 0).count();
    let need = LinearNeeds {
        x: tape.is_recording() && h.requires_grad(),
        w: tape.is_recording() && w.requires_grad(),
        bias: false,
        lora: false,
    };
    let h2 = hv.reshape([n, hv.shape().last()])?;
    let (mut loss_sum, mut dh, mut dw): (f64, Vec<Tensor>, Option<Tensor>) = (0.0, Vec::new(), None);
    for r0 in (0..n).step_by(chunk.max(1)) {
        let rows = chunk.max(1).min(n - r0);
        let (hc, tc) = (h2.narrow0(r0, rows)?, be.upload(&tcpu.narrow0(r0, rows)?)?);
        let (logits, _) = be.linear_fwd(&hc, wv, None, None)?;
        let ce = be.cross_entropy_fwd(&logits, &tc)?;
        loss_sum += ce.loss * ce.n_valid as f64;
        if need.x || need.w {
            let dl = be.cross_entropy_bwd(&logits, &tc, &ce.lse, 1.0, n_valid)?;
            drop(logits);
            let g = be.linear_bwd(&dl, &hc, wv, None, need)?;
            dh.extend(g.dx);
            if let Some(d) = g.dw {
                dw = Some(match dw {
                    None => d,
                    Some(acc) => be.add(&acc, &d)?,
                });
            }
        }
    }
    let mean = if n_valid > 0 { loss_sum / n_valid as f64 } else { 0.0 };
    let loss = match hv.dtype() {
        DType::F64 => Tensor::from_vec(vec![mean], [1])?,
        _ => Tensor::from_vec(vec![mean as f32], [1])?,
    };
    let loss = be.upload(&loss)?;
    // The chunks' input gradients, joined in the compute precision.
    let dh = if !need.x {
        None
    } else if hv.dtype() == DType::F64 {
        let v: Vec<f64> = dh.iter().map(|t| t.to_vec_f64()).collect::<Result<Vec<_>>>()?.concat();
        Some(be.upload(&Tensor::from_vec(v, hv.shape().clone())?)?)
    } else {
        let v: Vec<f32> = dh.iter().map(|t| t.to_vec_f32()).collect::<Result<Vec<_>>>()?.concat();
        Some(be.upload(&Tensor::from_vec(v, hv.shape().clone())?)?)
    };
    let (ih, iw) = (h.id(), w.id());
    let loss = tape.record(&[h, w], loss, move |g| {
        let seed = g.to_vec_f64()?.first().copied().unwrap_or(0.0);
        let mut out = Vec::new();
        if let Some(d) = &dh {
            out.push((ih, if seed == 1.0 { d.clone() } else { d.backend().scale(d, seed)? }));
        }
        if let Some(d) = &dw {
            out.push((iw, if seed == 1.0 { d.clone() } else { d.backend().scale(d, seed)? }));
        }
        Ok(out)
    });
    Ok(CeResult { loss, n_valid })
}
