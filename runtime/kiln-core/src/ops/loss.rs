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
/// logits of all rows: rows go through in chunks of `chunk` (the backend's
/// [`Backend::loss_chunk_rows`](crate::Backend::loss_chunk_rows) in the models); each chunk's
/// logits, their loss and — when a gradient will be asked for — their gradient with respect to
/// `h` (and `W`, when trainable) are computed together and the chunk's logits dropped. Backward
/// then only scales the saved gradients by the upstream seed (the loss is a scalar, so its
/// gradient is known up to that factor), so the LM head's GEMMs run once each, as unfused, at a
/// fraction of the memory: [chunk, V] instead of [N, V] logits and their gradient.
///
/// Nothing is read back from a GPU: the targets are checked on the host (where the batch is)
/// and uploaded once, the loss is summed on the device into a one-element tensor, the chunks'
/// input gradients are joined there, and backward multiplies by the seed on the device.
pub fn linear_cross_entropy(tape: &Tape, h: &Var, w: &Var, targets: &Tensor, chunk: usize) -> Result<CeResult> {
    linear_cross_entropy_capped(tape, h, w, targets, chunk, None)
}

/// The logits of one chunk, soft-capped when `cap` is set; with the raw logits kept for the
/// cap's gradient.
fn chunk_logits(
    be: &dyn crate::Backend,
    hc: &Tensor,
    w: &Tensor,
    cap: Option<f64>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (raw, _) = be.linear_fwd(hc, w, None, None)?;
    Ok(match cap {
        None => (raw, None),
        Some(c) => (be.softcap_fwd(&raw, c)?, Some(raw)),
    })
}

/// The gradient with respect to the raw logits from the one with respect to the capped ones.
fn uncap(be: &dyn crate::Backend, dl: Tensor, raw: Option<Tensor>, cap: Option<f64>) -> Result<Tensor> {
    match (raw, cap) {
        (Some(r), Some(c)) => be.softcap_bwd(&r, &dl, c),
        _ => Ok(dl),
    }
}

/// `targets` on the host as i32, checked against `n` rows and a vocabulary of `v` (a target
/// ≥ `v` is refused naming its row; < 0 is ignored).
fn host_targets(op: &'static str, targets: &Tensor, n: usize, v: usize) -> Result<Tensor> {
    let tcpu = targets.to_cpu()?;
    let tv = tcpu.as_slice::<i32>()?;
    if tv.len() != n {
        return Err(crate::Error::shape(op, format!("{n} rows, {} targets", tv.len())));
    }
    crate::backend::check_targets(op, tv, v)?;
    Ok(tcpu)
}

/// [`linear_cross_entropy`] of soft-capped logits `cap · tanh(h·Wᵀ / cap)` when `cap` is set
/// (Gemma 2's `final_logit_softcapping`).
pub fn linear_cross_entropy_capped(
    tape: &Tape,
    h: &Var,
    w: &Var,
    targets: &Tensor,
    chunk: usize,
    cap: Option<f64>,
) -> Result<CeResult> {
    use crate::backend::LinearNeeds;
    let (hv, wv) = (h.value(), w.value());
    let be = hv.backend();
    let n = hv.shape().rows();
    let tcpu = host_targets("linear_cross_entropy", targets, n, wv.shape().rows())?;
    let n_valid = tcpu.as_slice::<i32>()?.iter().filter(|&&t| t >= 0).count();
    let tdev = be.upload(&tcpu)?;
    let need = LinearNeeds {
        x: tape.is_recording() && h.requires_grad(),
        w: tape.is_recording() && w.requires_grad(),
        bias: false,
        lora: false,
    };
    // Each row's loss and gradient weigh 1/n_valid in the mean.
    let s = if n_valid > 0 { 1.0 / n_valid as f64 } else { 0.0 };
    let h2 = hv.reshape([n, hv.shape().last()])?;
    let (mut loss, mut dh, mut dw): (Option<Tensor>, Vec<Tensor>, Option<Tensor>) = (None, Vec::new(), None);
    for r0 in (0..n).step_by(chunk.max(1)) {
        let rows = chunk.max(1).min(n - r0);
        let (hc, tc) = (h2.narrow0(r0, rows)?, tdev.narrow0(r0, rows)?);
        let (logits, raw) = chunk_logits(be, &hc, wv, cap)?;
        let (nll, dl) = be.cross_entropy_chunk(&logits, &tc, (need.x || need.w).then_some(s))?;
        drop(logits);
        loss = Some(be.loss_sum(loss.as_ref(), &nll, s)?);
        if let Some(dl) = dl {
            let dl = uncap(be, dl, raw, cap)?;
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
    let loss = match loss {
        Some(l) => l,
        None => be.zeros(&[1].into(), if hv.dtype() == DType::F64 { DType::F64 } else { DType::F32 })?,
    };
    // The chunks' input gradients, joined on the device.
    let dh = match dh.len() {
        0 => None,
        1 => Some(dh.remove(0).reshape(hv.shape().clone())?),
        _ => Some(be.concat0(&dh)?.reshape(hv.shape().clone())?),
    };
    let (ih, iw) = (h.id(), w.id());
    let loss = tape.record(&[h, w], loss, move |g| {
        let mut out = Vec::new();
        if let Some(d) = &dh {
            out.push((ih, d.backend().scale_by(d, g)?));
        }
        if let Some(d) = &dw {
            out.push((iw, d.backend().scale_by(d, g)?));
        }
        Ok(out)
    });
    Ok(CeResult { loss, n_valid })
}

/// Per-token negative log-likelihood of `h·Wᵀ` `[N, V]` against `targets` `[N]` → `[N]` (0 on
/// ignored rows), without materializing the logits of all rows: the building block of sequence
/// log-probabilities (preference losses weigh each row by a factor known only after the
/// forward).
///
/// Backward: with `W` frozen (LoRA, QLoRA, adapters), the forward already saves each row's
/// gradient for a unit weight, `(softmax − onehot)·W` `[N, H]`, and backward only scales rows
/// by the upstream gradient. When `W` is trainable its gradient mixes rows, so backward runs
/// the chunks again with the upstream weights.
pub fn linear_token_nll(tape: &Tape, h: &Var, w: &Var, targets: &Tensor, chunk: usize) -> Result<Var> {
    linear_token_nll_capped(tape, h, w, targets, chunk, None)
}

/// [`linear_token_nll`] of soft-capped logits when `cap` is set.
pub fn linear_token_nll_capped(
    tape: &Tape,
    h: &Var,
    w: &Var,
    targets: &Tensor,
    chunk: usize,
    cap: Option<f64>,
) -> Result<Var> {
    use crate::backend::LinearNeeds;
    let (hv, wv) = (h.value(), w.value());
    let be = hv.backend();
    let n = hv.shape().rows();
    let tcpu = host_targets("linear_token_nll", targets, n, wv.shape().rows())?;
    let need_x = tape.is_recording() && h.requires_grad();
    let need_w = tape.is_recording() && w.requires_grad();
    let chunk = chunk.max(1);
    let h2 = hv.reshape([n, hv.shape().last()])?;
    let f64_mode = hv.dtype() == DType::F64;
    let (mut nll, mut unit): (Vec<f64>, Vec<f64>) = (Vec::with_capacity(n), Vec::new());
    for r0 in (0..n).step_by(chunk) {
        let rows = chunk.min(n - r0);
        let (hc, tc) = (h2.narrow0(r0, rows)?, be.upload(&tcpu.narrow0(r0, rows)?)?);
        let (logits, raw) = chunk_logits(be, &hc, wv, cap)?;
        let ce = be.cross_entropy_fwd(&logits, &tc)?;
        nll.extend(ce.nll.to_vec_f64()?);
        if need_x && !need_w {
            let ones = be.upload(&Tensor::from_vec(vec![1f32; rows], [rows])?)?;
            let dl = be.cross_entropy_bwd_rows(&logits, &tc, &ce.lse, &ones)?;
            drop(logits);
            let dl = uncap(be, dl, raw, cap)?;
            let g = be.linear_bwd(&dl, &hc, wv, None, LinearNeeds { x: true, ..Default::default() })?;
            if let Some(d) = g.dx {
                unit.extend(d.to_vec_f64()?);
            }
        }
    }
    let value = be.upload(&real_tensor(nll, [n], f64_mode)?)?;
    let hd = hv.shape().last();
    let (ih, iw, hkeep, wkeep, hshape) = (h.id(), w.id(), h2.clone(), wv.clone(), hv.shape().clone());
    let rec_w = need_w;
    Ok(tape.record(&[h, w], value, move |g| {
        let gv = g.to_vec_f64()?;
        let be = hkeep.backend();
        let mut out = Vec::new();
        if !rec_w {
            if !unit.is_empty() {
                let d: Vec<f64> = unit.iter().enumerate().map(|(i, &u)| u * gv[i / hd]).collect();
                out.push((ih, be.upload(&real_tensor(d, hshape, f64_mode)?)?));
            }
            return Ok(out);
        }
        // Trainable W: the chunks again, weighted by the upstream gradient.
        let (mut dh, mut dw): (Vec<f64>, Option<Tensor>) = (Vec::new(), None);
        for r0 in (0..n).step_by(chunk) {
            let rows = chunk.min(n - r0);
            let (hc, tc) = (hkeep.narrow0(r0, rows)?, be.upload(&tcpu.narrow0(r0, rows)?)?);
            let (logits, raw) = chunk_logits(be, &hc, &wkeep, cap)?;
            let ce = be.cross_entropy_fwd(&logits, &tc)?;
            let wr = be.upload(&real_tensor(gv[r0..r0 + rows].to_vec(), [rows], f64_mode)?)?;
            let dl = be.cross_entropy_bwd_rows(&logits, &tc, &ce.lse, &wr)?;
            drop(logits);
            let dl = uncap(be, dl, raw, cap)?;
            let gr = be.linear_bwd(&dl, &hc, &wkeep, None, LinearNeeds { x: need_x, w: true, ..Default::default() })?;
            if let Some(d) = gr.dx {
                dh.extend(d.to_vec_f64()?);
            }
            if let Some(d) = gr.dw {
                dw = Some(match dw {
                    None => d,
                    Some(acc) => be.add(&acc, &d)?,
                });
            }
        }
        if need_x {
            out.push((ih, be.upload(&real_tensor(dh, hshape, f64_mode)?)?));
        }
        if let Some(d) = dw {
            out.push((iw, d));
        }
        Ok(out)
    }))
}

/// A CPU tensor of `v` in f64 (gradient checks) or f32.
fn real_tensor(v: Vec<f64>, shape: impl Into<crate::Shape>, f64_mode: bool) -> Result<Tensor> {
    if f64_mode {
        Tensor::from_vec(v, shape)
    } else {
        Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<f32>>(), shape)
    }
}
