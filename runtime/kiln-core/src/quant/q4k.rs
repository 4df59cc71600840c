//! Q4_K and Q5_K quantization, following ggml's reference quantizers (`quantize_row_q4_K_ref`,
//! `quantize_row_q5_K_ref`): each 256-value super-block has 8 sub-blocks of 32; every sub-block
//! gets a scale and a min from a weighted least-squares search over candidate grids
//! (`make_qkx2_quants`: 21 for Q4_K, 16 for Q5_K), the 8 scales and 8 mins are quantized to 6
//! bits against the super-block's largest, and the values are then re-quantized to 4 (5) bits
//! against the 6-bit scales actually stored. The two share everything but the code width, the
//! search grid and where the fifth bits go.

use half::f16;

/// ggml's `nearest_int`: round half to even through the float mantissa (|x| < 2²²).
pub(super) fn nearest_int(x: f32) -> i32 {
    ((x + 12_582_912.0).to_bits() & 0x007F_FFFF) as i32 - 0x0040_0000
}

/// Scale and (negated) min of one sub-block with weights `w`, codes into `l` (0..=nmax).
fn qkx2(x: &[f32], w: &[f32], l: &mut [u8], nmax: i32, rmin: f32, nstep: i32) -> (f32, f32) {
    let rdelta = 0.1f32;
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..n {
        l[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best += w[i] * diff * diff;
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sl, mut sl2, mut sxl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = q as u8;
            let q = q as f32;
            sl += w[i] * q;
            sl2 += w[i] * q * q;
            sxl += w[i] * q * x[i];
        }
        let d = sum_w * sl2 - sl * sl;
        if d > 0.0 {
            let mut this_scale = (sum_w * sxl - sum_x * sl) / d;
            let mut this_min = (sl2 * sum_x - sl * sxl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sxl / sl2;
            }
            let mut err = 0.0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                err += w[i] * diff * diff;
            }
            if err < best {
                l[..n].copy_from_slice(&aux[..n]);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Quantizes whole 256-value blocks to Q4_K (144 bytes each), or Q5_K (176 bytes) when `q5`.
pub fn quantize(x: &[f32], out: &mut Vec<u8>, q5: bool) {
    let (nmax, rmin, nstep) = if q5 { (31, -0.5, 15) } else { (15, -1.0, 20) };
    for xb in x.chunks_exact(256) {
        let mut l = [0u8; 256];
        let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
        let (mut max_scale, mut max_min) = (0f32, 0f32);
        for j in 0..8 {
            let xs = &xb[32 * j..32 * j + 32];
            let av = (xs.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
            let w: Vec<f32> = xs.iter().map(|v| av + v.abs()).collect();
            let (s, m) = qkx2(xs, &w, &mut l[32 * j..32 * j + 32], nmax, rmin, nstep);
            scales[j] = s;
            mins[j] = m;
            max_scale = max_scale.max(s);
            max_min = max_min.max(m);
        }
        let inv_s = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_m = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut sc = [0u8; 12];
        for j in 0..8 {
            let ls = nearest_int(inv_s * scales[j]).min(63) as u8;
            let lm = nearest_int(inv_m * mins[j]).min(63) as u8;
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0x0F) | ((lm & 0x0F) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
        let d = f16::from_f32(max_scale / 63.0);
        let dmin = f16::from_f32(max_min / 63.0);
        let (s6, m6) = super::k_scale_min(&sc);
        for j in 0..8 {
            let dj = d.to_f32() * s6[j] as f32;
            if dj == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * m6[j] as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((xb[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
            }
        }
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&dmin.to_le_bytes());
        out.extend_from_slice(&sc);
        if q5 {
            // Bit j of qh[i] is the fifth bit of value i of sub-block j.
            out.extend((0..32).map(|i| (0..8).fold(0u8, |h, j| h | ((l[32 * j + i] >> 4) << j))));
        }
        for c in (0..256).step_by(64) {
            out.extend((0..32).map(|i| (l[c + i] & 0x0F) | ((l[c + i + 32] & 0x0F) << 4)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GgmlType, dequantize, quantize};

    fn rmse(t: GgmlType, x: &[f32]) -> f32 {
        let q = quantize(t, x).unwrap();
        let mut back = vec![0f32; x.len()];
        dequantize(t, &q, &mut back).unwrap();
        (x.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32).sqrt()
    }

    #[test]
    fn q4_k_is_at_least_as_accurate_as_q4_1_and_exact_on_its_grid() {
        let mut rng = crate::rng::Rng::new(4);
        // Weights of varying scale per 32-value sub-block, as real layers have.
        let x: Vec<f32> = (0..256 * 64).map(|i| (rng.normal() * (0.5 + (i / 32 % 7) as f64 * 0.3)) as f32).collect();
        let (k, q41) = (rmse(GgmlType::Q4K, &x), rmse(GgmlType::Q4_1, &x));
        eprintln!("rmse: Q4_K {k:.5}, Q4_1 {q41:.5}");
        assert!(k.is_finite() && k < q41 * 1.05, "Q4_K rmse {k} vs Q4_1 {q41}");
        let std = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        assert!(k < 0.12 * std, "Q4_K rmse {k} for values of rms {std}");
        assert_eq!(quantize(GgmlType::Q4K, &x).unwrap().len(), 64 * 144);
        // All zeros stay zeros; a constant block is represented exactly through its min.
        assert_eq!(rmse(GgmlType::Q4K, &[0.0; 256]), 0.0);
        assert!(rmse(GgmlType::Q4K, &[-0.75; 256]) < 1e-3);
    }
}
