//! Block-wise 8-bit optimizer state (the idea of bitsandbytes' 8-bit Adam): each moment is
//! stored as one byte per value plus one f32 scale per block of 256, a quarter of f32 state.
//!
//! * First moment (signed): code `c ∈ [−127, 127]`, value `sign(c)·(|c|/127)²·absmax`. The
//!   quadratic map spends its resolution near zero, where most moments are.
//! * Second moment (non-negative): stored through `s = √v`, code `c ∈ [0, 255]`,
//!   `s = (c/255)²·absmax(s)`, so `v` spans sixteen orders of magnitude at 8 bits.
//!
//! Each step dequantizes one parameter's moments, runs the backend's f32 AdamW kernel, and
//! quantizes them again; only one parameter's f32 moments exist at a time.

use kiln_core::Tensor;

use crate::{KilnError, Result};

/// Values per scale.
pub const BLOCK: usize = 256;

/// One moment tensor in 8 bits.
#[derive(Clone, Debug)]
pub struct Q8 {
    codes: Vec<u8>,
    scales: Vec<f32>,
    signed: bool,
    shape: Vec<usize>,
}

impl Q8 {
    /// Quantizes a first moment (`signed`) or a second moment.
    pub fn quantize(t: &Tensor, signed: bool) -> Result<Q8> {
        let x = t.to_vec_f32()?;
        let mut codes = vec![0u8; x.len()];
        let mut scales = Vec::with_capacity(x.len().div_ceil(BLOCK));
        for (xb, cb) in x.chunks(BLOCK).zip(codes.chunks_mut(BLOCK)) {
            if signed {
                let a = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                scales.push(a);
                let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
                for (c, &v) in cb.iter_mut().zip(xb) {
                    let q = ((v.abs() * inv).sqrt() * 127.0).round().min(127.0) as i8;
                    *c = (if v < 0.0 { -q } else { q }) as u8;
                }
            } else {
                let a = xb.iter().fold(0f32, |m, v| m.max(v.max(0.0).sqrt()));
                scales.push(a);
                let inv = if a > 0.0 { 1.0 / a } else { 0.0 };
                for (c, &v) in cb.iter_mut().zip(xb) {
                    *c = ((v.max(0.0).sqrt() * inv).sqrt() * 255.0).round().min(255.0) as u8;
                }
            }
        }
        Ok(Q8 { codes, scales, signed, shape: t.dims().to_vec() })
    }

    /// The moment in f32.
    pub fn dequantize(&self) -> Result<Tensor> {
        let mut out = Vec::with_capacity(self.codes.len());
        for (cb, &a) in self.codes.chunks(BLOCK).zip(&self.scales) {
            if self.signed {
                out.extend(cb.iter().map(|&c| {
                    let q = c as i8 as f32 / 127.0;
                    q.signum() * q * q * a
                }));
            } else {
                out.extend(cb.iter().map(|&c| {
                    let q = c as f32 / 255.0;
                    let s = q * q * a;
                    s * s
                }));
            }
        }
        Tensor::from_vec(out, self.shape.clone()).map_err(KilnError::from)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len()
    }

    /// A zero moment of `shape` (every code and scale 0: dequantizes to zeros).
    pub fn zeros(shape: &[usize], signed: bool) -> Q8 {
        let n: usize = shape.iter().product();
        Q8 { codes: vec![0; n], scales: vec![0.0; n.div_ceil(BLOCK)], signed, shape: shape.to_vec() }
    }

    /// The codes (four to an i32 element) and scales as tensors on `be`, for a device kernel.
    pub fn to_device(&self, be: &'static dyn kiln_core::Backend) -> Result<(Tensor, Tensor)> {
        let mut bytes = self.codes.clone();
        bytes.resize(self.codes.len().div_ceil(4) * 4, 0);
        let words: Vec<i32> = bytemuck::pod_collect_to_vec(&bytes);
        let n = words.len();
        let codes = be.upload(&Tensor::from_vec(words, [n])?)?;
        let scales = be.upload(&Tensor::from_vec(self.scales.clone(), [self.scales.len()])?)?;
        Ok((codes, scales))
    }

    /// The moment back from device tensors written by [`Q8::to_device`]'s layout.
    pub fn from_device(codes: &Tensor, scales: &Tensor, signed: bool, shape: &[usize]) -> Result<Q8> {
        let n: usize = shape.iter().product();
        let words = codes.to_cpu()?;
        let mut bytes: Vec<u8> = bytemuck::cast_slice(words.as_slice::<i32>()?).to_vec();
        bytes.truncate(n);
        let scales = scales.to_cpu()?.as_slice::<f32>()?.to_vec();
        Ok(Q8 { codes: bytes, scales, signed, shape: shape.to_vec() })
    }
}

/// Keeps `v ≥ m²/64` after dequantization: exact Adam moments always satisfy it (with
/// β₁ = 0.9, β₂ = 0.999, m² ≤ 53·v by Cauchy–Schwarz), but a second moment rounded to zero
/// beside a non-zero first moment would otherwise make a step of `lr·m/ε`.
pub fn floor_second_moment(m: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (mv, mut vv) = (m.to_vec_f32()?, v.to_vec_f32()?);
    vv.iter_mut().zip(&mv).for_each(|(v, m)| *v = v.max(m * m / 64.0));
    Tensor::from_vec(vv, v.dims().to_vec()).map_err(KilnError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_error_is_bounded_and_requantizing_is_exact() {
        let mut rng = kiln_core::rng::Rng::new(3);
        let n = 1000;
        // Values spanning several orders of magnitude, as moments do.
        let x: Vec<f32> = (0..n).map(|_| (rng.normal() * 10f64.powf(rng.uniform() * 4.0 - 4.0)) as f32).collect();
        let t = Tensor::from_vec(x.clone(), [n]).unwrap();
        let q = Q8::quantize(&t, true).unwrap();
        let back = q.dequantize().unwrap().to_vec_f32().unwrap();
        for (b, blk) in x.chunks(BLOCK).enumerate() {
            let a = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (&v, &d)) in blk.iter().zip(&back[b * BLOCK..]).enumerate() {
                // Quadratic map: error ≤ half a code step at |v|, i.e. ≤ √(|v|/a)·a/127 + a/127².
                let bound = ((v.abs() / a).sqrt() / 127.0 + 1.0 / 127.0 / 127.0) * a * 1.01;
                assert!((v - d).abs() <= bound, "block {b} item {i}: {v} → {d} (bound {bound})");
            }
        }
        let again = Q8::quantize(&q.dequantize().unwrap(), true).unwrap();
        assert_eq!(again.codes, q.codes, "dequantized state requantizes to the same codes (resume is exact)");
        let v = Tensor::from_vec(x.iter().map(|v| v * v).collect::<Vec<_>>(), [n]).unwrap();
        let qv = Q8::quantize(&v, false).unwrap();
        assert!(qv.dequantize().unwrap().to_vec_f32().unwrap().iter().all(|&d| d >= 0.0));
        assert_eq!(Q8::quantize(&qv.dequantize().unwrap(), false).unwrap().codes, qv.codes);
        assert_eq!(q.bytes(), n + 4 * n.div_ceil(BLOCK));
    }
}
