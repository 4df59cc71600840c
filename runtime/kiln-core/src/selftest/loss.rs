//! Parity cases of the loss family: cross-entropy forward, backward with one scale and with
//! per-row weights, over vocabularies from 2 to 4136 with ignored rows; and the fused LM head's
//! device pieces on the same rows (`cross_entropy_chunk`, `loss_sum`, `scale_by`, `concat0`).

use super::{Case, i32s, randn, rng};
use crate::backend::Op;
use crate::{DType, Tensor};

/// The loss family's rows on fresh random inputs from `seed`.
pub fn loss_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "loss");
    let mut out = Vec::new();
    for &(m, v) in &[(1, 2), (9, 4136), (17, 96)] {
        let targets: Vec<i32> = (0..m).map(|i| if i % 4 == 1 { -100 } else { (i * 31 % v) as i32 }).collect();
        let inputs = vec![randn(&mut r, &[m, v], DType::F32), i32s(targets, &[m])];
        out.push(Case::new(Op::CrossEntropy, format!("cross_entropy {m}x{v}"), DType::F32, inputs, |be, x| {
            let ce = be.cross_entropy_fwd(&x[0], &x[1])?;
            let d = be.cross_entropy_bwd(&x[0], &x[1], &ce.lse, 1.3, ce.n_valid)?;
            // Per-row weights (preference losses): the rows' own NLL as weights.
            let dr = be.cross_entropy_bwd_rows(&x[0], &x[1], &ce.lse, &ce.nll)?;
            let loss = Tensor::from_vec(vec![ce.loss], [1])?;
            // The fused head's chunk: nll and dlogits in one pass, the mean summed on the
            // device in two steps, the gradient scaled by a device scalar, rows joined.
            let (nll, dc) = be.cross_entropy_chunk(&x[0], &x[1], Some(1.3 / ce.n_valid.max(1) as f64))?;
            let dc = dc.ok_or_else(|| crate::Error::Msg("cross_entropy_chunk: no gradient".into()))?;
            let m = x[0].dims()[0];
            let half = m / 2;
            let sum = be.loss_sum(None, &nll.narrow0(0, half)?, 0.5)?;
            let sum = be.loss_sum(Some(&sum), &nll.narrow0(half, m - half)?, 0.5)?;
            let scaled = be.scale_by(&dc, &sum)?;
            let joined = be.concat0(&[d.narrow0(0, half)?, dc.narrow0(half, m - half)?])?;
            Ok(vec![loss, ce.lse, ce.nll, d, dr, nll, dc, sum, scaled, joined])
        }));
    }
    out
}
