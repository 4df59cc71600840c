//! NF4, QLoRA's 4-bit NormalFloat (Dettmers et al. 2023; bitsandbytes' `quant_type="nf4"`):
//! blocks of 64 values, each stored as its f32 absmax and 64 4-bit indices into a 16-entry
//! table of normal quantiles scaled to [−1, 1], two per byte (first value in the high nibble,
//! as bitsandbytes packs them). 36 bytes per 64 values: 4.5 bits per weight. Not a GGUF type.

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
