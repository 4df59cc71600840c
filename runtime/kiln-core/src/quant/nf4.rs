//! NF4, QLoRA's 4-bit NormalFloat (Dettmers et al. 2023; bitsandbytes' `quant_type="nf4"`):
//! blocks of 64 values, each stored as its f32 absmax and 64 4-bit indices into a 16-entry
//! table of normal quantiles scaled to [−1, 1], two per byte (first value in the high nibble,
//! as bitsandbytes packs them). 36 bytes per 64 values: 4.5 bits per weight. Not a GGUF type.
//!
//! NF4_DQ is NF4 with its absmax quantized too (QLoRA's double quantization): a block stores one
//! byte `c` for its scale, `2^((c − 192) / 12)` (12 steps per octave, 1.6e-5 to 38; 0 means an
//! all-zero block), then the same 32 bytes. 33 bytes per 64 values: 4.125 bits per weight, as
//! bitsandbytes' double quantization (4.127). Unlike bitsandbytes, the 8-bit code needs no
//! second-level constants, so every block — and so every row — stays independent, which the
//! tiled dequantization inside the matmul needs. The scale is rounded up to the next code and
//! the values are quantized against the scale actually stored, so nothing clips; the cost is a
//! grid up to 6 % wider than the block's absmax.

/// The NF4 code table, as bitsandbytes hard-codes it (checked against the normal quantiles
/// that define it in the tests).
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// Index of the table entry nearest to `x` (in [−1, 1]); ties go to the upper entry.
fn code(x: f32) -> u8 {
    // Midpoints between neighbours: the first one above x decides.
    let mut c = 0u8;
    for i in 0..15 {
        if x >= (NF4[i] + NF4[i + 1]) * 0.5 {
            c = i as u8 + 1;
        }
    }
    c
}

/// Quantizes blocks of 64 values.
pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for b in x.chunks_exact(64) {
        let a = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
        out.extend_from_slice(&a.to_le_bytes());
        out.extend((0..32).map(|j| (code(b[2 * j] * inv) << 4) | code(b[2 * j + 1] * inv)));
    }
}

/// 2^(r/12), r = 0..12: NF4_DQ's scale codes are these times powers of two (exact in f32).
const SEMITONES: [f32; 12] = [
    1.0,
    1.059_463_1,
    1.122_462,
    1.189_207_1,
    1.259_921,
    1.334_839_9,
    std::f32::consts::SQRT_2,
    1.498_307_1,
    1.587_401,
    1.681_792_8,
    1.781_797_4,
    1.887_748_6,
];

/// The scale of NF4_DQ code `c` (0 → 0).
pub fn dq_scale(c: u8) -> f32 {
    if c == 0 {
        return 0.0;
    }
    let e = c as i32 - 192;
    SEMITONES[e.rem_euclid(12) as usize] * 2f32.powi(e.div_euclid(12))
}

/// The largest block absmax NF4_DQ represents.
pub fn dq_max() -> f32 {
    dq_scale(255)
}

/// The smallest code whose scale is at least `a` (> 0, ≤ [`dq_max`]).
fn dq_code(a: f32) -> u8 {
    let guess = ((12.0 * a.log2()).ceil() as i32 + 192).clamp(1, 255) as u8;
    // log2 rounding can be off by one step either way: settle against the exact table.
    let mut c = guess.saturating_sub(1).max(1);
    while c < 255 && dq_scale(c) < a {
        c += 1;
    }
    c
}

/// Quantizes blocks of 64 values to NF4_DQ; `Err(absmax)` for a block beyond [`dq_max`].
pub fn quantize_dq(x: &[f32], out: &mut Vec<u8>) -> Result<(), f32> {
    for b in x.chunks_exact(64) {
        // f32::max skips NaN, so a NaN is looked for on its own.
        let a = b.iter().fold(0f32, |m, v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) });
        if a.is_nan() || a > dq_max() {
            return Err(a);
        }
        let c = if a > 0.0 { dq_code(a) } else { 0 };
        let s = dq_scale(c);
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        out.push(c);
        out.extend((0..32).map(|j| (code(b[2 * j] * inv) << 4) | code(b[2 * j + 1] * inv)));
    }
    Ok(())
}

/// Dequantizes NF4_DQ blocks of 33 bytes into 64 values each.
pub fn dequantize_dq(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(64).zip(bytes.chunks_exact(33)) {
        let a = dq_scale(b[0]);
        for (j, &q) in b[1..].iter().enumerate() {
            o[2 * j] = NF4[(q >> 4) as usize] * a;
            o[2 * j + 1] = NF4[(q & 0x0F) as usize] * a;
        }
    }
}

/// Dequantizes blocks of 36 bytes into 64 values each.
pub fn dequantize(bytes: &[u8], out: &mut [f32]) {
    for (o, b) in out.chunks_exact_mut(64).zip(bytes.chunks_exact(36)) {
        let a = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (j, &q) in b[4..].iter().enumerate() {
            o[2 * j] = NF4[(q >> 4) as usize] * a;
            o[2 * j + 1] = NF4[(q & 0x0F) as usize] * a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inverse standard normal CDF (Acklam's rational approximation, refined by one Halley
    /// step: relative error below 1e-12).
    fn ppf(p: f64) -> f64 {
        let a = [
            -3.969683028665376e1,
            2.209460984245205e2,
            -2.759285104469687e2,
            1.38357751867269e2,
            -3.066479806614716e1,
            2.506628277459239,
        ];
        let b = [
            -5.447609879822406e1,
            1.615858368580409e2,
            -1.556989798598866e2,
            6.680131188771972e1,
            -1.328068155288572e1,
        ];
        let c = [
            -7.784894002430293e-3,
            -3.223964580411365e-1,
            -2.400758277161838,
            -2.549732539343734,
            4.374664141464968,
            2.938163982698783,
        ];
        let d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
        let x = if p < 0.02425 {
            let q = (-2.0 * p.ln()).sqrt();
            (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
                / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
        } else if p <= 1.0 - 0.02425 {
            let q = p - 0.5;
            let r = q * q;
            (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
                / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
        } else {
            -ppf(1.0 - p)
        };
        // One Halley step on Φ(x) − p, with Φ from erfc.
        let e = 0.5 * erfc(-x / std::f64::consts::SQRT_2) - p;
        let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
        x - u / (1.0 + x * u / 2.0)
    }

    /// Complementary error function (Numerical Recipes' erfcc, |error| < 1.2e-7, enough
    /// before the Halley step's quadratic convergence).
    fn erfc(x: f64) -> f64 {
        let z = x.abs();
        let t = 1.0 / (1.0 + 0.5 * z);
        let r = t
            * (-z * z - 1.26551223
                + t * (1.00002368
                    + t * (0.37409196
                        + t * (0.09678418
                            + t * (-0.18628806
                                + t * (0.27886807
                                    + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))))
                .exp();
        if x >= 0.0 { r } else { 2.0 - r }
    }

    #[test]
    fn table_is_the_normal_quantiles() {
        // bitsandbytes' create_normal_map(offset = 0.9677083): 8 positive quantiles from
        // linspace(offset, 0.5, 9), 7 negative from linspace(offset, 0.5, 8), zero, scaled by
        // the largest.
        let offset = 0.9677083f64;
        let lin =
            |n: usize| -> Vec<f64> { (0..n).map(|i| offset + (0.5 - offset) * i as f64 / (n - 1) as f64).collect() };
        let mut v: Vec<f64> = lin(9)[..8].iter().map(|&p| ppf(p)).collect();
        v.push(0.0);
        v.extend(lin(8)[..7].iter().map(|&p| -ppf(p)));
        let m = v.iter().fold(0f64, |a, x| a.max(x.abs()));
        let mut v: Vec<f64> = v.iter().map(|x| x / m).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        for (i, (a, b)) in v.iter().zip(NF4).enumerate() {
            // erfc's 1.2e-7 limits the check; the Halley step gets the quantiles to ~1e-7.
            assert!((a - b as f64).abs() < 2e-6, "entry {i}: {a} vs {b}");
        }
    }

    #[test]
    fn double_quant_scales_are_exact_semitones_and_cover_the_absmax() {
        for c in 1..=255u8 {
            let want = 2f64.powf((c as f64 - 192.0) / 12.0);
            assert!((dq_scale(c) as f64 / want - 1.0).abs() < 1e-7, "code {c}");
        }
        assert!(dq_scale(1) < 2e-5 && dq_max() > 37.0);
        let mut rng = crate::rng::Rng::new(3);
        for _ in 0..10_000 {
            let a = (2f64.powf(rng.uniform() * 20.0 - 15.0)) as f32;
            let c = dq_code(a);
            // The smallest code at or above the absmax: at most one step (6 %) above it.
            assert!(dq_scale(c) >= a && (c == 1 || dq_scale(c - 1) < a), "absmax {a} → code {c}");
        }
    }

    #[test]
    fn double_quant_round_trip_is_bounded_and_close_to_nf4() {
        let mut rng = crate::rng::Rng::new(11);
        // Blocks of varied scale, as layers have.
        let x: Vec<f32> = (0..64 * 200).map(|i| (rng.normal() * 0.02 * (1 + i / 64 % 9) as f64) as f32).collect();
        let mut q = Vec::new();
        quantize_dq(&x, &mut q).unwrap();
        assert_eq!(q.len(), 200 * 33);
        let mut back = vec![0f32; x.len()];
        dequantize_dq(&q, &mut back);
        let gap = NF4.windows(2).fold(0f32, |m, w| m.max(w[1] - w[0]));
        for (b, blk) in x.chunks(64).enumerate() {
            let s = dq_scale(q[b * 33]);
            for (&v, &d) in blk.iter().zip(&back[b * 64..]) {
                assert!((v - d).abs() <= s * gap / 2.0 * 1.0001, "block {b}: {v} → {d}");
            }
        }
        let rmse = |y: &[f32]| (x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32).sqrt();
        let mut q4 = Vec::new();
        quantize(&x, &mut q4);
        let mut back4 = vec![0f32; x.len()];
        dequantize(&q4, &mut back4);
        let (dq, nf) = (rmse(&back), rmse(&back4));
        eprintln!("rmse: NF4 {nf:.6}, NF4_DQ {dq:.6} ({:+.1} %)", (dq / nf - 1.0) * 100.0);
        assert!(dq < nf * 1.06, "NF4_DQ rmse {dq} vs NF4 {nf}");
        // Beyond the code's range, or not finite: refused, not clipped.
        assert_eq!(quantize_dq(&[50.0; 64], &mut Vec::new()), Err(50.0));
        let mut one_nan = [0.5f32; 64];
        one_nan[3] = f32::NAN;
        assert!(quantize_dq(&one_nan, &mut Vec::new()).is_err());
        // Zeros stay zeros.
        let mut z = Vec::new();
        quantize_dq(&[0.0; 64], &mut z).unwrap();
        assert_eq!(z[0], 0);
    }

    #[test]
    fn round_trip_error_is_half_the_widest_gap() {
        let mut rng = crate::rng::Rng::new(9);
        let x: Vec<f32> = (0..64 * 50).map(|_| rng.normal() as f32).collect();
        let mut q = Vec::new();
        quantize(&x, &mut q);
        assert_eq!(q.len(), 50 * 36);
        let mut back = vec![0f32; x.len()];
        dequantize(&q, &mut back);
        let gap = NF4.windows(2).fold(0f32, |m, w| m.max(w[1] - w[0]));
        for (b, blk) in x.chunks(64).enumerate() {
            let a = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (&v, &d)) in blk.iter().zip(&back[b * 64..]).enumerate() {
                assert!((v - d).abs() <= a * gap / 2.0 * 1.0001, "block {b} value {i}: {v} → {d}");
            }
            // The absmax itself is exact (it maps to ±1).
            let k = blk.iter().position(|v| v.abs() == a).unwrap();
            assert_eq!(back[b * 64 + k], blk[k]);
        }
        // Requantizing the dequantized values gives the same bytes.
        let mut again = Vec::new();
        quantize(&back, &mut again);
        assert_eq!(again, q);
    }
}
