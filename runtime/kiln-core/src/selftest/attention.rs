//! Parity cases of the attention family: causal attention forward and backward over packed
//! sequences (segment ids) and over preference layouts (a prompt shared by two answers), with
//! grouped-query heads and head sizes up to 128; sliding windows (1 key, a few keys, more keys
//! than the row) and soft-capped scores, alone and together, in training and when decoding
//! over a KV cache.

use super::{Case, Run, f32s, i32s, rng};
use crate::backend::{AttnArgs, Backend, Op};
use crate::{DType, Tensor};

/// Forward and backward of one call: `[o, lse, dq, dk, dv]`, `d_o` the output gradient.
fn fwd_bwd(be: &dyn Backend, a: &AttnArgs<'_>, d_o: &Tensor) -> crate::Result<Vec<Tensor>> {
    let (o, lse) = be.attention_fwd(a)?;
    let (dq, dk, dv) = be.attention_bwd(a, &o, &lse, d_o)?;
    Ok(vec![o, lse, dq, dk, dv])
}

/// Forward and backward with a sliding window and a soft-cap: inputs `[q, k, v, dO]` and the
/// segment ids, if any, as `x[4]`.
fn windowed(
    be: &dyn Backend,
    x: &[Tensor],
    window: Option<usize>,
    softcap: Option<f64>,
    shared_prefix: bool,
) -> crate::Result<Vec<Tensor>> {
    let a = AttnArgs { q: &x[0], k: &x[1], v: &x[2], seg: x.get(4), shared_prefix, scale: 0.3, window, softcap };
    fwd_bwd(be, &a, &x[3])
}

/// The segment layout of a windowed row.
#[derive(Clone, Copy)]
enum Layout {
    /// One sequence a row.
    Plain,
    /// Three sequences a row.
    Packed,
    /// A prompt, two answers that see it, padding.
    Tree,
}

/// Preference layout: prompt (4g), chosen (4g+1), rejected (4g+2) branches, then padding.
fn tree(b: usize, t: usize) -> Vec<i32> {
    (0..b * t)
        .map(|i| match (i % t) * 8 / t {
            0..=2 => 4,
            3..=4 => 5,
            5..=6 => 6,
            _ => -1,
        })
        .collect()
}

/// Sliding-window and soft-capped rows: name, `(b, t, hq, hkv, d)`, segments, and the call.
/// Scores q·k·0.3 of standard normal inputs spread as 0.3·√D (0.7 at D = 6, 3.4 at D = 128),
/// so caps of 2 to 5 bend them hard and 50 (Gemma 2's) barely; windows of 1 (only the
/// diagonal), a few keys, 40 over 150 keys (whole key tiles skipped in the tiled kernels, both
/// passes) and more keys than the row (no effect).
const WINDOWED: [(&str, [usize; 5], Layout, Run); 6] = [
    ("window 1 packed", [2, 37, 4, 2, 6], Layout::Packed, |be, x| windowed(be, x, Some(1), None, false)),
    ("window 16 packed", [1, 70, 9, 3, 64], Layout::Packed, |be, x| windowed(be, x, Some(16), None, false)),
    ("window 100 softcap 5 packed", [3, 33, 2, 1, 10], Layout::Packed, |be, x| {
        windowed(be, x, Some(100), Some(5.0), false)
    }),
    ("softcap 2", [1, 100, 4, 2, 128], Layout::Plain, |be, x| windowed(be, x, None, Some(2.0), false)),
    ("window 7 softcap 3 shared prefix", [2, 65, 3, 1, 96], Layout::Tree, |be, x| {
        windowed(be, x, Some(7), Some(3.0), true)
    }),
    ("window 40 softcap 50", [1, 150, 4, 2, 64], Layout::Plain, |be, x| windowed(be, x, Some(40), Some(50.0), false)),
];

/// The attention family's rows on fresh random inputs from `seed`.
pub fn attention_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "attention");
    let mut out = Vec::new();
    for &(b, t, hq, hkv, d) in &[
        (1, 1, 1, 1, 2),
        (2, 37, 4, 2, 6),
        (1, 70, 9, 3, 64),
        (3, 33, 2, 1, 10),
        (1, 100, 4, 2, 128),
        (2, 65, 3, 1, 96),
    ] {
        // q, k, v and the output gradient.
        let qkvd: [&[usize]; 4] = [&[b, t, hq, d], &[b, t, hkv, d], &[b, t, hkv, d], &[b, t, hq, d]];
        let mut inputs = f32s(&mut r, &qkvd);
        inputs.push(i32s(tree(b, t), &[b, t]));
        out.push(Case::new(
            Op::Attention,
            format!("attention b{b} t{t} hq{hq} hkv{hkv} d{d} shared prefix"),
            DType::F32,
            inputs,
            |be, x| {
                let a = AttnArgs {
                    q: &x[0],
                    k: &x[1],
                    v: &x[2],
                    seg: Some(&x[4]),
                    shared_prefix: true,
                    scale: 0.3,
                    window: None,
                    softcap: None,
                };
                fwd_bwd(be, &a, &x[3])
            },
        ));
        // Packed: three sequences per row; q and k then rotated at their positions in them.
        let seg: Vec<i32> = (0..b * t).map(|i| ((i % t) * 3 / t) as i32).collect();
        let pos: Vec<i32> = (0..b * t).map(|i| (i % t) as i32 * 7 % 50).collect();
        let mut inputs = f32s(&mut r, &qkvd);
        inputs.extend([i32s(seg, &[b, t]), i32s(pos, &[b, t]), crate::ops::inv_freq(d, 10000.0, None).unwrap()]);
        out.push(Case::new(
            Op::Attention,
            format!("attention b{b} t{t} hq{hq} hkv{hkv} d{d} packed"),
            DType::F32,
            inputs,
            |be, x| {
                let a = AttnArgs {
                    q: &x[0],
                    k: &x[1],
                    v: &x[2],
                    seg: Some(&x[4]),
                    shared_prefix: false,
                    scale: 0.3,
                    window: None,
                    softcap: None,
                };
                let mut out = fwd_bwd(be, &a, &x[3])?;
                out.push(be.rope(&x[0], &x[5], &x[6], 1.0, false)?);
                out.push(be.rope(&x[1], &x[5], &x[6], 1.0, true)?);
                Ok(out)
            },
        ));
    }
    for (name, [b, t, hq, hkv, d], layout, run) in WINDOWED {
        let mut inputs = f32s(&mut r, &[&[b, t, hq, d], &[b, t, hkv, d], &[b, t, hkv, d], &[b, t, hq, d]]);
        match layout {
            Layout::Plain => {}
            Layout::Packed => inputs.push(i32s((0..b * t).map(|i| ((i % t) * 3 / t) as i32).collect(), &[b, t])),
            Layout::Tree => inputs.push(i32s(tree(b, t), &[b, t])),
        }
        let name = format!("attention b{b} t{t} hq{hq} hkv{hkv} d{d} {name}");
        out.push(Case::new(Op::Attention, name, DType::F32, inputs, run));
    }
    // Decoding: 5 queries at the end of 40 cached keys, window 12 (absolute positions) and a cap;
    // forward only (the backward needs as many keys as queries).
    let (b, t, tk, hq, hkv, d) = (2, 5, 40, 6, 2, 20);
    out.push(Case::new(
        Op::Attention,
        format!("attention b{b} t{t} tk{tk} hq{hq} hkv{hkv} d{d} decoding window 12 softcap 4"),
        DType::F32,
        f32s(&mut r, &[&[b, t, hq, d], &[b, tk, hkv, d], &[b, tk, hkv, d]]),
        |be, x| {
            let a = AttnArgs {
                q: &x[0],
                k: &x[1],
                v: &x[2],
                seg: None,
                shared_prefix: false,
                scale: 0.3,
                window: Some(12),
                softcap: Some(4.0),
            };
            let (o, lse) = be.attention_fwd(&a)?;
            Ok(vec![o, lse])
        },
    ));
    // The mixed-precision path: 16-bit q, k, v and dO in; o, dq, dk, dv in their type.
    for (b, t, hq, hkv, d, dt) in
        [(2, 37, 4, 2, 6, DType::BF16), (1, 40, 6, 3, 64, DType::BF16), (3, 33, 2, 1, 40, DType::F16)]
    {
        let inputs = [&[b, t, hq, d][..], &[b, t, hkv, d], &[b, t, hkv, d], &[b, t, hq, d]]
            .iter()
            .map(|dims| super::randn(&mut r, dims, dt))
            .collect();
        out.push(Case::new(
            Op::Attention,
            format!("attention b{b} t{t} hq{hq} hkv{hkv} d{d} causal {} activations", dt.name()),
            dt,
            inputs,
            |be, x| fwd_bwd(be, &AttnArgs { scale: 0.3, ..AttnArgs::causal(&x[0], &x[1], &x[2]) }, &x[3]),
        ));
    }
    out
}
