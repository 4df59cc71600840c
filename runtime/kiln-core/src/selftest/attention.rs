//! Parity cases of the attention family: causal attention forward and backward over packed
//! sequences (segment ids) and over preference layouts (a prompt shared by two answers), with
//! grouped-query heads and head sizes up to 128.

use super::{Case, f32s, i32s, rng};
use crate::backend::{AttnArgs, Backend, Op};
use crate::{DType, Tensor};

/// Forward and backward of one call: `[o, lse, dq, dk, dv]`, `d_o` the output gradient.
fn fwd_bwd(be: &dyn Backend, a: &AttnArgs<'_>, d_o: &Tensor) -> crate::Result<Vec<Tensor>> {
    let (o, lse) = be.attention_fwd(a)?;
    let (dq, dk, dv) = be.attention_bwd(a, &o, &lse, d_o)?;
    Ok(vec![o, lse, dq, dk, dv])
}

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
        // Preference layout: prompt (4g), chosen (4g+1), rejected (4g+2) branches, then padding.
        let tree: Vec<i32> = (0..b * t)
            .map(|i| match (i % t) * 8 / t {
                0..=2 => 4,
                3..=4 => 5,
                5..=6 => 6,
                _ => -1,
            })
            .collect();
        let mut inputs = f32s(&mut r, &qkvd);
        inputs.push(i32s(tree, &[b, t]));
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
                out.push(be.rope(&x[0], &x[5], &x[6], false)?);
                out.push(be.rope(&x[1], &x[5], &x[6], true)?);
                Ok(out)
            },
        ));
    }
    out
}
