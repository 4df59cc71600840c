//! Parity cases of the optim family: one AdamW step, a fused step over a parameter group with
//! clipped gradients and the group's Σg², and 8-bit AdamW (block-wise quantized moments) —
//! each against a closed form in f64 written here (`torch.optim.AdamW`'s update, and the
//! documented 8-bit scheme), not against the CPU backend, whose AdamW is the same f32 code path
//! the GPU kernels mirror.

use super::{Case, f32s, rng};
use crate::backend::{Adam8State, AdamWItem, AdamWStep, Backend, Op};
use crate::rng::Rng;
use crate::{DType, Tensor};

/// The step's hyper-parameters (decay and step vary between the rows).
fn hp(weight_decay: f64, step: u64) -> AdamWStep {
    AdamWStep { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay, step }
}

/// The single-tensor rows' step.
const SINGLE: (f64, u64) = (0.1, 3);
/// The fused group row's step and clipping factor.
const MULTI: (f64, u64, f64) = (0.05, 2, 0.7);
/// The 8-bit rows' step and clipping factor.
const EIGHT: (f64, u64, f64) = (0.1, 5, 0.7);
/// Values per scale of the 8-bit moments (`Adam8State`).
const BLOCK: usize = 256;

/// AdamW in f64 as `torch.optim.AdamW` states it, on one value with gradient `g` (already
/// clipped): `p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + eps)` with `m ← β1·m + (1 − β1)·g`,
/// `v ← β2·v + (1 − β2)·g²`, `m̂ = m/(1 − β1^t)`, `v̂ = v/(1 − β2^t)`, every coefficient from
/// the f64 hyper-parameters as PyTorch's Python floats are. Returns `(p, m, v)`.
fn adamw(h: &AdamWStep, p: f64, g: f64, m: f64, v: f64) -> (f64, f64, f64) {
    let t = h.step as i32;
    let (b1, b2) = (h.beta1, h.beta2);
    let m = b1 * m + (1.0 - b1) * g;
    let v = b2 * v + (1.0 - b2) * g * g;
    let (mh, vh) = (m / (1.0 - h.beta1.powi(t)), v / (1.0 - h.beta2.powi(t)));
    (p * (1.0 - h.lr * h.weight_decay) - h.lr * mh / (vh.sqrt() + h.eps), m, v)
}

/// `[p, m, v]` after one closed-form step of every value of a `(p, g, m, v)` group.
fn adamw_ref(x: &[Tensor], h: &AdamWStep, clip: f64) -> crate::Result<Vec<Tensor>> {
    let [p, g, m, v] = [&x[0], &x[1], &x[2], &x[3]].map(|t| t.to_vec_f64());
    let (p, g, m, v) = (p?, g?, m?, v?);
    let (mut po, mut mo, mut vo) = (vec![0.0; p.len()], vec![0.0; p.len()], vec![0.0; p.len()]);
    for i in 0..p.len() {
        (po[i], mo[i], vo[i]) = adamw(h, p[i], g[i] * clip, m[i], v[i]);
    }
    let d = x[0].dims().to_vec();
    Ok(vec![Tensor::from_vec(po, d.clone())?, Tensor::from_vec(mo, d.clone())?, Tensor::from_vec(vo, d)?])
}

/// `n` standard normal values and their moments: m order 0.1, v ≥ 0.
fn state(r: &mut Rng, n: usize) -> Vec<Tensor> {
    let mut x = f32s(r, &[&[n], &[n], &[n], &[n]]);
    x[2] = x[2].map_f32(|m| 0.1 * m);
    // The second moment is never negative.
    x[3] = x[3].map_f32(|v| 0.01 * v * v);
    x
}

/// The optim family's rows on fresh random inputs from `seed`.
pub fn optim_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "optim");
    let mut out = Vec::new();
    for &n in &[1usize, 77, 4099] {
        out.push(
            Case::new(Op::AdamW, format!("adamw {n} (step 3, weight decay)"), DType::F32, state(&mut r, n), |be, x| {
                let f = |t: &Tensor| be.cast(t, DType::F32);
                let (mut p, g, mut m, mut v) = (f(&x[0])?, f(&x[1])?, f(&x[2])?, f(&x[3])?);
                be.adamw_step(AdamWItem { param: &mut p, grad: &g, m: &mut m, v: &mut v }, hp(SINGLE.0, SINGLE.1))?;
                Ok(vec![p, m, v])
            })
            .with_reference(|x| adamw_ref(x, &hp(SINGLE.0, SINGLE.1), 1.0)),
        );
    }
    // A parameter group in one fused step (three tensors, one larger than a chunk), gradients
    // scaled by a clipping factor, and the group's Σg² (of the gradients before clipping).
    let sizes = [5usize, 16_385 + 7, 300];
    let inputs: Vec<Tensor> = sizes.iter().flat_map(|&n| state(&mut r, n)).collect();
    out.push(
        Case::new(Op::AdamW, "adamw_multi 3 tensors (clipped 0.7) + sum_squares_multi", DType::F32, inputs, |be, x| {
            let f = |t: &Tensor| be.cast(t, DType::F32);
            let mut st: Vec<[Tensor; 4]> = Vec::new();
            for c in x.chunks(4) {
                st.push([f(&c[0])?, f(&c[1])?, f(&c[2])?, f(&c[3])?]);
            }
            let grads: Vec<&Tensor> = st.iter().map(|s| &s[1]).collect();
            let ss = Tensor::from_vec(vec![be.sum_squares_multi(&grads)?], [1])?;
            let mut items: Vec<AdamWItem<'_>> =
                st.iter_mut().map(|[p, g, m, v]| AdamWItem { param: p, grad: &*g, m, v }).collect();
            be.adamw_multi(&mut items, hp(MULTI.0, MULTI.1), MULTI.2)?;
            drop(items);
            let mut out = vec![ss];
            for [p, _, m, v] in st {
                out.extend([p, m, v]);
            }
            Ok(out)
        })
        .with_reference(|x| {
            let mut ss = 0.0;
            let mut out = Vec::new();
            for c in x.chunks(4) {
                ss += c[1].to_vec_f64()?.iter().map(|g| g * g).sum::<f64>();
                out.extend(adamw_ref(c, &hp(MULTI.0, MULTI.1), MULTI.2)?);
            }
            out.insert(0, Tensor::from_vec(vec![ss], [1])?);
            Ok(out)
        }),
    );
    // 8-bit AdamW from a random 8-bit state: two whole blocks and a ragged one, and one value.
    for &n in &[1usize, 600] {
        out.push(
            Case::new(
                Op::AdamW,
                format!("adamw8 {n} (step 5, clipped 0.7, block-wise 8-bit moments)"),
                DType::F32,
                {
                    let mut x = f32s(&mut r, &[&[n], &[n]]);
                    x.extend(eight_bit_state(&mut r, n));
                    x
                },
                adamw8_run,
            )
            .with_reference(adamw8_ref)
            .with_needs(|be| {
                if be.has_adamw8() {
                    Ok(())
                } else {
                    Err(format!("{}: no 8-bit AdamW kernel (the trainer steps 8-bit moments on the host)", be.name()))
                }
            })
            .with_codes(2),
        );
    }
    out
}

/// A random 8-bit state of `n` values: `[m codes, m scales, v codes, v scales]`, codes four to
/// an i32 (little-endian bytes), m codes signed in −127..=127, v codes in 0..=255.
fn eight_bit_state(r: &mut Rng, n: usize) -> Vec<Tensor> {
    let blocks = n.div_ceil(BLOCK);
    let mut code = |signed: bool| -> Tensor {
        let mut bytes: Vec<u8> = (0..n)
            .map(|_| {
                let u = r.next_u64();
                if signed { ((u % 255) as i32 - 127) as i8 as u8 } else { (u % 256) as u8 }
            })
            .collect();
        bytes.resize(n.div_ceil(4) * 4, 0);
        let words: Vec<i32> = bytes.chunks(4).map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Tensor::from_vec(words, [n.div_ceil(4)]).unwrap()
    };
    let (mc, vc) = (code(true), code(false));
    let mut scale = |base: f64| -> Tensor {
        let s: Vec<f32> = (0..blocks).map(|_| (base * (0.5 + r.uniform())) as f32).collect();
        Tensor::from_vec(s, [blocks]).unwrap()
    };
    let (ms, vs) = (scale(0.3), scale(0.1));
    vec![mc, ms, vc, vs]
}

/// The `n` code bytes of a codes tensor (four to an i32).
fn code_bytes(t: &Tensor, n: usize) -> crate::Result<Vec<u8>> {
    let words = t.to_cpu()?.to_vec_f64()?;
    Ok(words.iter().flat_map(|&w| (w as i32).to_le_bytes()).take(n).collect())
}

/// One `adamw8_step` on the backend: `[p, m scales, v scales, m codes, v codes]`, the codes as
/// numbers (signed for m).
fn adamw8_run(be: &dyn Backend, x: &[Tensor]) -> crate::Result<Vec<Tensor>> {
    let n = x[0].numel();
    let mut p = x[0].clone();
    let mut st =
        Adam8State { m_codes: x[2].clone(), m_scales: x[3].clone(), v_codes: x[4].clone(), v_scales: x[5].clone(), n };
    be.adamw8_step(&mut p, &x[1], &mut st, hp(EIGHT.0, EIGHT.1), EIGHT.2)?;
    let mc: Vec<f32> = code_bytes(&st.m_codes, n)?.iter().map(|&b| b as i8 as f32).collect();
    let vc: Vec<f32> = code_bytes(&st.v_codes, n)?.iter().map(|&b| b as f32).collect();
    Ok(vec![p, st.m_scales, st.v_scales, Tensor::from_vec(mc, [n])?, Tensor::from_vec(vc, [n])?])
}

/// The documented 8-bit scheme (`Adam8State`, kiln's train/optim8.rs) in f64: each block of 256
/// values dequantizes its moments (m = sign(c)·(c/127)²·aₘ; √v = (c/255)²·aᵥ; v kept ≥ m²/64,
/// as exact moments always are), steps them with [`adamw`], and requantizes with the block's
/// new maxima as scales. The codes are returned before rounding (see `compare::codes`).
fn adamw8_ref(x: &[Tensor]) -> crate::Result<Vec<Tensor>> {
    let h = hp(EIGHT.0, EIGHT.1);
    let n = x[0].numel();
    let (p, g) = (x[0].to_vec_f64()?, x[1].to_vec_f64()?);
    let (mc, vc) = (code_bytes(&x[2], n)?, code_bytes(&x[4], n)?);
    let (ms, vs) = (x[3].to_vec_f64()?, x[5].to_vec_f64()?);
    let (mut po, mut mo, mut vo) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    for i in 0..n {
        let b = i / BLOCK;
        let qm = mc[i] as i8 as f64 / 127.0;
        let m0 = qm.signum() * qm * qm * ms[b];
        let qv = vc[i] as f64 / 255.0;
        let s0 = qv * qv * vs[b];
        let v0 = (s0 * s0).max(m0 * m0 / 64.0);
        (po[i], mo[i], vo[i]) = adamw(&h, p[i], g[i] * EIGHT.2, m0, v0);
    }
    let (mut ams, mut avs, mut cm, mut cv) = (Vec::new(), Vec::new(), vec![0.0; n], vec![0.0; n]);
    for (b, (mb, vb)) in mo.chunks(BLOCK).zip(vo.chunks(BLOCK)).enumerate() {
        let am = mb.iter().fold(0.0f64, |a, m| a.max(m.abs()));
        let av = vb.iter().fold(0.0f64, |a, v| a.max(v.max(0.0).sqrt()));
        for (j, (m, v)) in mb.iter().zip(vb).enumerate() {
            let i = b * BLOCK + j;
            cm[i] = if am > 0.0 { m.signum() * ((m.abs() / am).sqrt() * 127.0).min(127.0) } else { 0.0 };
            cv[i] = if av > 0.0 { ((v.max(0.0).sqrt() / av).sqrt() * 255.0).min(255.0) } else { 0.0 };
        }
        ams.push(am);
        avs.push(av);
    }
    let blocks = ams.len();
    Ok(vec![
        Tensor::from_vec(po, [n])?,
        Tensor::from_vec(ams, [blocks])?,
        Tensor::from_vec(avs, [blocks])?,
        Tensor::from_vec(cm, [n])?,
        Tensor::from_vec(cv, [n])?,
    ])
}
