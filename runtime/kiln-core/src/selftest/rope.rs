//! Parity cases of the rope family: the rotation (forward) and its inverse (the backward) at
//! odd head counts and sequence lengths, head sizes from 2 to 128, positions that count from
//! zero, restart in packed sequences, continue after a cached prefix or skip, and partial
//! rotary (the first `r < D` dims rotate, the rest pass through: Phi-4-mini's 0.75 of a head,
//! half, a single pair), the rotated dims scaled (YaRN's and LongRoPE's attention factors).

use super::{Case, i32s, randn, rng};
use crate::DType;
use crate::backend::Op;

/// How the positions of a `[b, t]` batch are laid out.
#[derive(Clone, Copy)]
enum Positions {
    /// `0..t` in each row.
    Fresh,
    /// Three packed sequences per row, each counting from zero.
    Packed,
    /// Decoding after a cached prefix: `37..37 + t`.
    Offset,
    /// Gaps (left padding, dropped tokens): `7·i mod 50`.
    Strided,
}

impl Positions {
    fn name(self) -> &'static str {
        match self {
            Positions::Fresh => "from 0",
            Positions::Packed => "packed",
            Positions::Offset => "offset 37",
            Positions::Strided => "strided",
        }
    }
    // Positions stay below 100: the f32 angle `pos · inv_freq` then rounds within the f32
    // tolerance of the f64 reference, as in the model's training lengths per sequence.
    fn of(self, i: usize, t: usize) -> i32 {
        (match self {
            Positions::Fresh => i,
            Positions::Packed => i % t.div_ceil(3),
            Positions::Offset => 37 + i,
            Positions::Strided => i * 7 % 50,
        }) as i32
    }
}

/// The rope family's rows on fresh random inputs from `seed`.
pub fn rope_cases(seed: u64) -> Vec<Case> {
    let mut r = rng(seed, "rope");
    let mut out = Vec::new();
    // (b, t, h, d, rotated dims, θ, positions, mscale): rotated dims below d are partial rotary,
    // whose frequencies are those of an r-dim head (transformers' `dim = head_dim · factor`);
    // mscale ≠ 1 scales the rotated dims only (YaRN/LongRoPE attention scaling).
    for &(b, t, h, d, rot, theta, pos, m) in &[
        (1, 1, 1, 2, 2, 10000.0, Positions::Fresh, 1.0),
        (2, 7, 3, 6, 6, 10000.0, Positions::Packed, 1.0),
        (1, 33, 5, 10, 10, 500000.0, Positions::Offset, 1.0),
        (3, 17, 2, 64, 64, 10000.0, Positions::Strided, 1.0),
        // YaRN's 0.1·ln(s) + 1 at s = 4.
        (1, 45, 9, 128, 128, 500000.0, Positions::Packed, 1.1386),
        (2, 5, 4, 96, 96, 10000.0, Positions::Offset, 1.0),
        // Phi-4-mini: 96 of 128 dims, LongRoPE's attention factor at 131072 / 4096.
        (1, 9, 3, 128, 96, 10000.0, Positions::Offset, 1.1902),
        (2, 7, 5, 16, 12, 10000.0, Positions::Packed, 1.2247),
        (3, 5, 1, 64, 32, 500000.0, Positions::Fresh, 1.0),
        (1, 13, 7, 10, 4, 10000.0, Positions::Strided, 0.75),
        (2, 3, 3, 6, 2, 10000.0, Positions::Fresh, 1.0),
    ] {
        out.push(rope_case(&mut r, (b, t, h, d, rot, theta, pos, m), DType::F32));
    }
    // The mixed-precision path: 16-bit x in, the same type out (partial rotary and mscale too).
    out.push(rope_case(&mut r, (2, 7, 3, 6, 6, 10000.0, Positions::Packed, 1.0), DType::BF16));
    out.push(rope_case(&mut r, (1, 9, 3, 128, 96, 10000.0, Positions::Offset, 1.1902), DType::BF16));
    out.push(rope_case(&mut r, (3, 17, 2, 64, 64, 10000.0, Positions::Strided, 1.0), DType::F16));
    out
}

/// One RoPE row, `(b, t, h, d, rotated dims, θ, positions, mscale)`, with x in `dt`.
fn rope_case(
    r: &mut crate::rng::Rng,
    (b, t, h, d, rot, theta, pos, m): (usize, usize, usize, usize, usize, f64, Positions, f64),
    dt: DType,
) -> Case {
    let p: Vec<i32> = (0..b * t).map(|i| pos.of(i % t, t)).collect();
    let inputs = vec![
        randn(r, &[b, t, h, d], dt),
        i32s(p, &[b, t]),
        crate::ops::inv_freq(rot, theta, None).unwrap(),
        // The scale rides as a scalar input (a case's runner captures nothing).
        crate::Tensor::from_vec(vec![m as f32], [1]).unwrap(),
    ];
    let partial = if rot < d { format!(" rotary {rot}") } else { String::new() };
    let scaled = if m != 1.0 { format!(" mscale {m}") } else { String::new() };
    let act = if dt == DType::F32 { String::new() } else { format!(" {} activations", dt.name()) };
    Case::new(
        Op::Rope,
        format!("rope b{b} t{t} h{h} d{d}{partial}{scaled} θ{theta} positions {}{act}", pos.name()),
        dt,
        inputs,
        |be, x| {
            let m = x[3].item()? as f32;
            let y = be.rope(&x[0], &x[1], &x[2], m, false)?;
            // The adjoint of the forward: x again when m = 1, the rotary slice times m² else.
            let back = be.rope(&y, &x[1], &x[2], m, true)?;
            Ok(vec![y, be.rope(&x[0], &x[1], &x[2], m, true)?, back])
        },
    )
}
