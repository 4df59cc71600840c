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
        let (b1, b2) = (hp.beta1 as f32, hp.beta2 as f32);
        let crate::backend::AdamWFactors { decay, step, bc2s } = hp.factors();
        let eps = hp.eps as f32;
        let (ms, vs) = (m.as_mut_slice::<f32>()?, v.as_mut_slice::<f32>()?);
        let p = param.as_mut_slice::<f32>()?;
        p.par_iter_mut().zip(ms.par_iter_mut()).zip(vs.par_iter_mut()).zip(g.par_iter()).for_each(
            |(((p, m), v), &g)| {
                *p *= decay;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= step * *m / (v.sqrt() / bc2s + eps);
            },
        );
        Ok(())
    }
}
