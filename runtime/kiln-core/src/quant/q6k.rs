//! Q6_K quantization, following ggml's reference quantizer (`quantize_row_q6_K_ref`): 16
//! sub-blocks of 16 values per 256; each sub-block's scale is chosen by a weighted search over
//! 19 grids (`make_qx_quants`, weights x²), the scales are stored as i8 against the
//! super-block's largest, and values are re-quantized to 6 bits against the stored scales.

use half::f16;

use super::q4k::nearest_int;

/// The scale of one sub-block under 6-bit signed codes (`nmax` 32); the chosen grid's codes
/// (offset by `nmax`) go into `lq`.
fn qx_scale(x: &[f32], nmax: i32, lq: &mut [u8]) -> f32 {
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        lq.fill(0);
        return 0.0;
    }
    // The codes of one grid (offset by nmax) and their weighted sums.
    let sums = |iscale: f32, lq: Option<&mut [u8]>| {
        let (mut lx, mut l2) = (0f32, 0f32);
        let mut lq = lq;
        for (i, &v) in x.iter().enumerate() {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
            if let Some(q) = lq.as_deref_mut() {
                q[i] = (l + nmax) as u8;
            }
            let (l, w) = (l as f32, v * v);
            lx += w * v * l;
            l2 += w * l * l;
        }
        (lx, l2)
    };
    let (lx, l2) = sums(-(nmax as f32) / max, Some(lq));
    let mut scale = if l2 != 0.0 { lx / l2 } else { 0.0 };
    let mut best = scale * lx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (lx, l2) = sums(iscale, None);
        if l2 > 0.0 && lx * lx > best * l2 {
            sums(iscale, Some(lq));
            scale = lx / l2;
            best = scale * lx;
        }
    }
    scale
}

pub fn quantize(x: &[f32], out: &mut Vec<u8>) {
    for xb in x.chunks_exact(256) {
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs) = (0f32, 0f32);
        // The search's codes stay where a sub-block's stored scale rounds to zero (as ggml).
        let mut l = [0u8; 256];
        for (j, s) in scales.iter_mut().enumerate() {
            *s = qx_scale(&xb[16 * j..16 * j + 16], 32, &mut l[16 * j..16 * j + 16]);
            if s.abs() > max_abs {
                max_abs = s.abs();
                max_scale = *s;
            }
        }
        if max_abs < 1e-15 {
            out.extend(std::iter::repeat_n(0u8, 210));
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = f16::from_f32(1.0 / iscale);
        let sc: Vec<i8> = scales.iter().map(|&s| nearest_int(iscale * s).min(127) as i8).collect();
        for j in 0..16 {
            let dj = d.to_f32() * sc[j] as f32;
            if dj == 0.0 {
                // With a zero scale the codes decode to 0 whatever they are; ggml keeps the
                // search's, and so does kiln, for the same bytes.
                continue;
            }
            for i in 0..16 {
                l[16 * j + i] = (nearest_int(xb[16 * j + i] / dj).clamp(-32, 31) + 32) as u8;
            }
        }
        let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
        for (h, c) in (0..256).step_by(128).enumerate() {
            for i in 0..32 {
                let q = |k: usize| l[c + i + 32 * k];
                ql[64 * h + i] = (q(0) & 0xF) | ((q(2) & 0xF) << 4);
                ql[64 * h + i + 32] = (q(1) & 0xF) | ((q(3) & 0xF) << 4);
                qh[32 * h + i] = (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(sc.iter().map(|&s| s as u8));
        out.extend_from_slice(&d.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GgmlType, dequantize, quantize};

    #[test]
    fn q6_k_round_trip_is_close() {
        let mut rng = crate::rng::Rng::new(6);
        let x: Vec<f32> = (0..256 * 32).map(|i| (rng.normal() * (0.5 + (i / 16 % 5) as f64 * 0.4)) as f32).collect();
        let q = quantize(GgmlType::Q6K, &x).unwrap();
        assert_eq!(q.len(), 32 * 210);
        let mut back = vec![0f32; x.len()];
        dequantize(GgmlType::Q6K, &q, &mut back).unwrap();
        let rmse = (x.iter().zip(&back).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32).sqrt();
        let std = (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt();
        eprintln!("rmse: Q6_K {rmse:.5} (values of rms {std:.3})");
        assert!(rmse < 0.03 * std, "Q6_K rmse {rmse}");
        let zeros = quantize(GgmlType::Q6K, &[0.0; 256]).unwrap();
        assert!(zeros.iter().all(|&b| b == 0));
    }
}
