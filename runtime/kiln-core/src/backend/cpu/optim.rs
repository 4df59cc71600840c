//! AdamW with decoupled weight decay, updating parameter and f32 state in place, in the same
//! order of operations as `torch.optim.AdamW` (so a run can be checked against PyTorch).

use rayon::prelude::*;

use super::{CpuBackend, read};
use crate::backend::{AdamWItem, AdamWStep, OptimOps};
use crate::{DType, Error, Result};

impl OptimOps for CpuBackend {
    fn adamw_step(&self, it: AdamWItem<'_>, hp: AdamWStep) -> Result<()> {
        let AdamWItem { param, grad, m, v } = it;
        if param.dtype() != DType::F32 || m.dtype() != DType::F32 || v.dtype() != DType::F32 {
            return Err(Error::Unsupported { op: "adamw", dtype: param.dtype(), backend: "cpu" });
        }
        let n = param.numel();
        if grad.numel() != n || m.numel() != n || v.numel() != n {
            return Err(Error::shape("adamw", format!("param {:?}, grad {:?}", param.shape(), grad.shape())));
        }
        let g = read::<f32>(grad)?;
        // The coefficients come from the host in f64 (`1 − β` too), rounded once to f32.
        let crate::backend::AdamWFactors { b1, c1, b2, c2, decay, step, bc2s, eps } = hp.factors();
        let (ms, vs) = (m.as_mut_slice::<f32>()?, v.as_mut_slice::<f32>()?);
        let p = param.as_mut_slice::<f32>()?;
        p.par_iter_mut().zip(ms.par_iter_mut()).zip(vs.par_iter_mut()).zip(g.par_iter()).for_each(
            |(((p, m), v), &g)| {
                *p *= decay;
                *m = b1 * *m + c1 * g;
                *v = b2 * *v + c2 * g * g;
                *p -= step * *m / (v.sqrt() / bc2s + eps);
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::{AdamWItem, AdamWStep, OptimOps};
    use crate::{CpuBackend, Tensor};

    /// PyTorch's defaults: β2 = 0.999 is where f32 arithmetic on the f32 β goes wrong.
    const HP: AdamWStep = AdamWStep { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 1 };

    /// `1 − β` comes from the f64 β, rounded once: within half an f32 ulp of the f64 value,
    /// where `1 − β2` formed in f32 from the f32 β2 is 1.3e-5 too small.
    #[test]
    fn one_minus_beta_is_rounded_from_f64() {
        let f = HP.factors();
        for (got, want) in [(f.c1, 1.0 - HP.beta1), (f.c2, 1.0 - HP.beta2)] {
            let rel = (got as f64 / want - 1.0).abs();
            assert!(rel <= 2f64.powi(-24), "1 − β = {got}, f64 {want} (rel {rel:e})");
        }
        let f32_arith = 1.0 - HP.beta2 as f32;
        assert!((f32_arith as f64 / (1.0 - HP.beta2) - 1.0).abs() > 1e-5, "the case no longer separates");
    }

    /// One step from zero moments leaves `v = (1 − β2)·g²` and `m = (1 − β1)·g` to f32 rounding
    /// of `torch.optim.AdamW`'s f64 coefficients (a few ulp), and the parameter at its f64
    /// update. With `1 − β2` computed in f32 from the f32 β2, v is 1.3e-5 off.
    #[test]
    fn first_step_moments_follow_the_f64_coefficients() {
        let g: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        let n = g.len();
        let p0: Vec<f32> = (0..n).map(|i| 1.0 - 0.01 * i as f32).collect();
        let t = |v: Vec<f32>| Tensor::from_vec(v, [n]).unwrap();
        let (mut p, grad, mut m, mut v) = (t(p0.clone()), t(g.clone()), t(vec![0.0; n]), t(vec![0.0; n]));
        CpuBackend.adamw_step(AdamWItem { param: &mut p, grad: &grad, m: &mut m, v: &mut v }, HP).unwrap();
        let (p, m, v) = (p.to_vec_f32().unwrap(), m.to_vec_f32().unwrap(), v.to_vec_f32().unwrap());
        let (mut worst_m, mut worst_v, mut worst_p) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            let g = g[i] as f64;
            let (wm, wv) = ((1.0 - HP.beta1) * g, (1.0 - HP.beta2) * g * g);
            let (mh, vh) = (wm / (1.0 - HP.beta1), wv / (1.0 - HP.beta2));
            let wp = p0[i] as f64 * (1.0 - HP.lr * HP.weight_decay) - HP.lr * mh / (vh.sqrt() + HP.eps);
            worst_m = worst_m.max((m[i] as f64 - wm).abs() / wm.abs());
            worst_v = worst_v.max((v[i] as f64 - wv).abs() / wv);
            worst_p = worst_p.max((p[i] as f64 - wp).abs());
        }
        eprintln!("AdamW first step vs f64: m rel {worst_m:.1e}, v rel {worst_v:.1e}, p abs {worst_p:.1e}");
        // Three roundings each (coefficient, g·g or c·g, product): well under 1e-6; 1.3e-5 before.
        assert!(worst_m <= 1e-6 && worst_v <= 1e-6, "m rel {worst_m:e}, v rel {worst_v:e}");
        assert!(worst_p <= 4.0 * 2f64.powi(-24), "p abs {worst_p:e}");
    }
}
