//! AdamW over a set of trainable variables, state in f32 on the parameter's backend, or in
//! block-wise 8 bits ([`super::optim8`]) with `eight_bit`.

use std::collections::{HashMap, HashSet};

use kiln_core::backend::{AdamWItem, AdamWStep};
use kiln_core::{Grads, Tensor, Var, VarId};

use super::optim8::{Q8, floor_second_moment};
use crate::Result;

/// One parameter's moments.
enum Moments {
    F32(Tensor, Tensor),
    Q8(Q8, Q8),
    /// 8-bit moments on a backend with an 8-bit AdamW kernel, and the parameter's shape.
    Dev8(kiln_core::backend::Adam8State, Vec<usize>),
}

impl Moments {
    /// 8-bit moments on the host (for checkpoints and the backends without the kernel).
    fn host8(self) -> Result<Option<(Q8, Q8)>> {
        Ok(match self {
            Moments::Q8(m, v) => Some((m, v)),
            Moments::Dev8(s, shape) => Some((
                Q8::from_device(&s.m_codes, &s.m_scales, true, &shape)?,
                Q8::from_device(&s.v_codes, &s.v_scales, false, &shape)?,
            )),
            Moments::F32(..) => None,
        })
    }
}

/// The moments of `p` as f32 tensors on its backend (zeros at its first step).
fn take_moments(state: &mut HashMap<VarId, Moments>, p: &Var) -> Result<(Tensor, Tensor)> {
    let be = p.value().backend();
    Ok(match state.remove(&p.id()) {
        Some(Moments::F32(m, v)) => (m, v),
        // 8-bit moments, on the host or on a device.
        Some(q) => {
            let (m, v) = q.host8()?.ok_or_else(|| crate::KilnError::Msg("adamw: f32 moments taken as 8-bit".into()))?;
            let m = be.upload(&m.dequantize()?)?;
            let v = be.upload(&floor_second_moment(&m, &v.dequantize()?)?)?;
            (m, v)
        }
        None => {
            (be.zeros(p.value().shape(), kiln_core::DType::F32)?, be.zeros(p.value().shape(), kiln_core::DType::F32)?)
        }
    })
}

/// AdamW (decoupled weight decay), as `torch.optim.AdamW`.
pub struct AdamW {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Keep the moments in 8 bits (`--optim adamw8bit`).
    pub eight_bit: bool,
    step: u64,
    state: HashMap<VarId, Moments>,
    no_decay: HashSet<VarId>,
}

impl AdamW {
    /// PyTorch's defaults except `lr`.
    pub fn new(lr: f64) -> AdamW {
        AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            eight_bit: false,
            step: 0,
            state: HashMap::new(),
            no_decay: HashSet::new(),
        }
    }

    /// Exempts `v` from weight decay (norm weights and biases, as transformers' Trainer does).
    pub fn exclude_from_decay(&mut self, v: &Var) {
        self.no_decay.insert(v.id());
    }

    /// The first and second moments of `v` in f32 (dequantized in 8-bit mode), once it has
    /// been updated.
    pub fn moments(&self, v: &Var) -> Result<Option<(Tensor, Tensor)>> {
        Ok(match self.state.get(&v.id()) {
            None => None,
            Some(Moments::F32(m, s)) => Some((m.clone(), s.clone())),
            Some(Moments::Q8(m, s)) => Some((m.dequantize()?, s.dequantize()?)),
            Some(Moments::Dev8(s, shape)) => {
                let (m, v) = (
                    Q8::from_device(&s.m_codes, &s.m_scales, true, shape)?,
                    Q8::from_device(&s.v_codes, &s.v_scales, false, shape)?,
                );
                Some((m.dequantize()?, v.dequantize()?))
            }
        })
    }

    /// Bytes of optimizer state held.
    pub fn state_bytes(&self) -> usize {
        self.state
            .values()
            .map(|s| match s {
                Moments::F32(m, v) => 4 * (m.numel() + v.numel()),
                Moments::Q8(m, v) => m.bytes() + v.bytes(),
                Moments::Dev8(s, _) => 2 * (s.n + 4 * s.n.div_ceil(super::optim8::BLOCK)),
            })
            .sum()
    }

    /// Restores `v`'s moments and the step count (resuming from a checkpoint).
    pub fn restore(&mut self, v: &Var, m: Tensor, s: Tensor, steps: u64) -> Result<()> {
        let st = if self.eight_bit {
            Moments::Q8(Q8::quantize(&m, true)?, Q8::quantize(&s, false)?)
        } else {
            Moments::F32(m, s)
        };
        self.state.insert(v.id(), st);
        self.step = steps;
        Ok(())
    }

    /// Sets the step count (resuming a run whose parameters had no moments yet).
    pub fn set_steps(&mut self, steps: u64) {
        self.step = steps;
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Global L2 norm of the gradients of `params`: one fused sum per backend holding them.
    pub fn grad_norm(params: &[&mut Var], grads: &Grads) -> Result<f64> {
        Ok(AdamW::grad_norm_and(params, grads, &[])?.0)
    }

    /// [`AdamW::grad_norm`] and the values of one-element tensors `scalars` (the step's loss),
    /// read with the sum of the backend that holds them: one host synchronization a step on a
    /// GPU.
    pub fn grad_norm_and(
        params: &[&mut Var],
        grads: &Grads,
        scalars: &[&kiln_core::Tensor],
    ) -> Result<(f64, Vec<f64>)> {
        let gs: Vec<&kiln_core::Tensor> = params.iter().filter_map(|p| grads.get(p)).collect();
        let mut names: Vec<&str> = gs.iter().chain(scalars).map(|g| g.backend().name()).collect();
        names.sort_unstable();
        names.dedup();
        let (mut s, mut values) = (0.0, vec![0.0; scalars.len()]);
        for name in names {
            let group: Vec<&kiln_core::Tensor> = gs.iter().copied().filter(|g| g.backend().name() == name).collect();
            let (idx, mine): (Vec<usize>, Vec<&kiln_core::Tensor>) =
                scalars.iter().enumerate().filter(|(_, t)| t.backend().name() == name).map(|(i, t)| (i, *t)).unzip();
            let be = group.first().or(mine.first()).map(|t| t.backend());
            let Some(be) = be else { continue };
            let (part, vals) = be.sum_squares_multi_and(&group, &mine)?;
            s += part;
            for (i, v) in idx.into_iter().zip(vals) {
                values[i] = v;
            }
        }
        Ok((s.sqrt(), values))
    }

    /// One update of every parameter that received a gradient, after scaling all gradients so
    /// their global norm is at most `clip` (when given). Returns the norm before clipping.
    pub fn step(&mut self, params: Vec<&mut Var>, grads: &Grads, clip: Option<f64>) -> Result<f64> {
        let norm = AdamW::grad_norm(&params, grads)?;
        self.step_with_norm(params, grads, clip, norm)?;
        Ok(norm)
    }

    /// [`AdamW::step`] with the gradients' global norm already computed (by a caller that
    /// checked it), so it is not summed twice.
    pub fn step_with_norm(&mut self, params: Vec<&mut Var>, grads: &Grads, clip: Option<f64>, norm: f64) -> Result<()> {
        let factor = match clip {
            Some(c) if norm > c && norm.is_finite() => c / norm,
            _ => 1.0,
        };
        self.step += 1;
        let hp = |decay: f64| AdamWStep {
            lr: self.lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: decay,
            step: self.step,
        };
        let mut work: Vec<(&mut Var, Tensor, Tensor, Tensor)> = Vec::new();
        let mut stepped8 = Vec::new();
        for p in params {
            let Some(g) = grads.get(p) else { continue };
            let be = p.value().backend();
            let decay = if self.no_decay.contains(&p.id()) { 0.0 } else { self.weight_decay };
            if self.eight_bit && be.has_adamw8() {
                // 8-bit moments that stay on the device: one kernel dequantizes, steps and
                // requantizes them (the clipping factor applied inside).
                let shape = p.value().dims().to_vec();
                let mut st = match self.state.remove(&p.id()) {
                    Some(Moments::Dev8(s, _)) => s,
                    prev => {
                        let (m, v) = match prev.map(Moments::host8).transpose()?.flatten() {
                            Some(mv) => mv,
                            None => (Q8::zeros(&shape, true), Q8::zeros(&shape, false)),
                        };
                        let ((mc, ms), (vc, vs)) = (m.to_device(be)?, v.to_device(be)?);
                        let n = p.value().numel();
                        kiln_core::backend::Adam8State { m_codes: mc, m_scales: ms, v_codes: vc, v_scales: vs, n }
                    }
                };
                be.adamw8_step(p.value_mut(), g, &mut st, hp(decay), factor)?;
                stepped8.push((p.id(), Moments::Dev8(st, shape)));
                continue;
            }
            let (mut m, mut v) = take_moments(&mut self.state, p)?;
            if !self.eight_bit {
                work.push((p, g.clone(), m, v));
                continue;
            }
            // 8-bit moments: a tensor at a time, so only one parameter's f32 moments exist.
            let be = p.value().backend();
            let g = if factor != 1.0 { be.scale(g, factor)? } else { g.clone() };
            let decay = if self.no_decay.contains(&p.id()) { 0.0 } else { self.weight_decay };
            be.adamw_step(AdamWItem { param: p.value_mut(), grad: &g, m: &mut m, v: &mut v }, hp(decay))?;
            stepped8.push((p.id(), Moments::Q8(Q8::quantize(&m, true)?, Q8::quantize(&v, false)?)));
        }
        self.state.extend(stepped8);
        // f32 moments: one fused step per (backend, weight decay) group, the clipping factor
        // applied to the gradients inside it.
        let kinds: Vec<(&'static str, bool)> =
            work.iter().map(|(p, ..)| (p.value().backend().name(), !self.no_decay.contains(&p.id()))).collect();
        let mut keys = kinds.clone();
        keys.dedup();
        for (n, key) in keys.iter().enumerate() {
            if keys[..n].contains(key) {
                continue;
            }
            let mut items: Vec<kiln_core::backend::AdamWItem<'_>> = work
                .iter_mut()
                .zip(&kinds)
                .filter(|(_, k)| *k == key)
                .map(|((p, g, m, v), _)| kiln_core::backend::AdamWItem { param: p.value_mut(), grad: &*g, m, v })
                .collect();
            let be = items[0].param.backend();
            be.adamw_multi(&mut items, hp(if key.1 { self.weight_decay } else { 0.0 }), factor)?;
        }
        for (p, _, m, v) in work {
            self.state.insert(p.id(), Moments::F32(m, v));
        }
        Ok(())
    }
}
