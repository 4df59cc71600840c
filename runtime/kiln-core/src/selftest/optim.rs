//! Parity cases of the optim family: one AdamW step, and a fused step over a parameter group
//! with clipped gradients and the group's Σg².

use super::{Case, f32s, rng};
use crate::backend::{AdamWItem, AdamWStep, Op};
use crate::{DType, Tensor};

/// The step's hyper-parameters (decay and step vary between the rows).
fn hp(weight_decay: f64, step: u64) -> AdamWStep {
    AdamWStep { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step }
}

/// The optim family's rows on fresh random inputs from `seed`.
pub fn optim_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "optim");
    let mut out = Vec::new();
    for &n in &[1usize, 77, 4099] {
        let mut inputs = f32s(&mut r, &[&[n], &[n], &[n], &[n]]);
        // The second moment is never negative.
        inputs[3] = inputs[3].map_f32(f32::abs);
        out.push(Case::new(Op::AdamW, format!("adamw {n} (step 3, weight decay)"), DType::F32, inputs, |be, x| {
            // AdamW keeps f32 state on every backend: the reference runs in f32 too.
            let f = |t: &Tensor| be.cast(t, DType::F32);
            let (mut p, g, mut m, mut v) = (f(&x[0])?, f(&x[1])?, f(&x[2])?, f(&x[3])?);
            be.adamw_step(AdamWItem { param: &mut p, grad: &g, m: &mut m, v: &mut v }, hp(0.1, 3))?;
            Ok(vec![p, m, v])
        }));
    }
    // A parameter group in one fused step (three tensors, one larger than a chunk), gradients
    // scaled by a clipping factor, and the group's Σg².
    let sizes = [5usize, 16_385 + 7, 300];
    let dims: Vec<[usize; 1]> = sizes.iter().flat_map(|&n| [[n]; 4]).collect();
    let dims: Vec<&[usize]> = dims.iter().map(|d| &d[..]).collect();
    out.push(Case::new(
        Op::AdamW,
        "adamw_multi 3 tensors (clipped 0.7) + sum_squares_multi",
        DType::F32,
        f32s(&mut r, &dims),
        |be, x| {
            let f = |t: &Tensor| be.cast(t, DType::F32);
            let mut st: Vec<[Tensor; 4]> = Vec::new();
            for c in x.chunks(4) {
                // The second moment is never negative.
                let v = f(&c[3])?;
                st.push([f(&c[0])?, f(&c[1])?, f(&c[2])?, be.mul(&v, &v)?]);
            }
            let grads: Vec<&Tensor> = st.iter().map(|s| &s[1]).collect();
            let ss = Tensor::from_vec(vec![be.sum_squares_multi(&grads)?], [1])?;
            let mut items: Vec<AdamWItem<'_>> =
                st.iter_mut().map(|[p, g, m, v]| AdamWItem { param: p, grad: &*g, m, v }).collect();
            be.adamw_multi(&mut items, hp(0.05, 2), 0.7)?;
            drop(items);
            let mut out = vec![ss];
            for [p, _, m, v] in st {
                out.extend([p, m, v]);
            }
            Ok(out)
        },
    ));
    out
}
