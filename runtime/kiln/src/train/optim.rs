//! AdamW over a set of trainable variables, state in f32 on the parameter's backend.

use std::collections::HashMap;

use kiln_core::backend::AdamWStep;
use kiln_core::{Grads, Tensor, Var, VarId};

use crate::Result;

/// AdamW (decoupled weight decay), as `torch.optim.AdamW`.
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    step: u64,
    state: HashMap<VarId, (Tensor, Tensor)>,
}

impl AdamW {
    /// PyTorch's defaults except `lr`.
    pub fn new(lr: f64) -> AdamW {
        AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 0, state: HashMap::new() }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Global L2 norm of the gradients of `params`.
    pub fn grad_norm(params: &[&mut Var], grads: &Grads) -> Result<f64> {
        let mut s = 0.0;
        for p in params {
            if let Some(g) = grads.get(p) {
                s += g.backend().sum_squares(g)?;
            }
        }
        Ok(s.sqrt())
    }

    /// One update of every parameter that received a gradient, after scaling all gradients so
    /// their global norm is at most `clip` (when given). Returns the norm before clipping.
    pub fn step(&mut self, mut params: Vec<&mut Var>, grads: &Grads, clip: Option<f64>) -> Result<f64> {
        let norm = AdamW::grad_norm(&params, grads)?;
        let factor = match clip {
            Some(c) if norm > c && norm.is_finite() => c / norm,
            _ => 1.0,
        };
        self.step += 1;
        let hp = AdamWStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            step: self.step,
        };
        for p in params.iter_mut() {
            let Some(g) = grads.get(p) else { continue };
            let g = if factor != 1.0 { g.backend().scale(g, factor)? } else { g.clone() };
            let be = p.value().backend();
            let (m, v) = match self.state.remove(&p.id()) {
                Some(s) => s,
                None => (
                    be.zeros(p.value().shape(), kiln_core::DType::F32)?,
                    be.zeros(p.value().shape(), kiln_core::DType::F32)?,
                ),
            };
            let (mut m, mut v) = (m, v);
            let id = p.id();
            be.adamw_step(p.value_mut(), &g, &mut m, &mut v, hp)?;
            self.state.insert(id, (m, v));
        }
        Ok(norm)
    }
}
