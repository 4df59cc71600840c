//! Rotary position embedding in HF's "rotate half" layout: the first `r = 2·inv_freq.len()`
//! dims of each head rotate, dim `i` paired with `i + r/2` and turned by `pos · inv_freq[i]`;
//! dims from `r` on pass through (partial rotary, `r < D`; every dim when `r = D`). The
//! rotated dims are multiplied by `mscale` (YaRN/LongRoPE attention scaling, as transformers
//! scales cos and sin). The backward is the same rotation by the negative angle.

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read, read_i32};
use crate::backend::{RopeDims, RopeOps};
use crate::{Result, Tensor};

fn rope<T: Real>(x: &Tensor, pos: &Tensor, inv_freq: &Tensor, mscale: f32, inverse: bool) -> Result<Tensor> {
    let RopeDims { h, d: hd, r, .. } = RopeDims::of(x, pos, inv_freq)?;
    let half = r / 2;
    let (xv, fv, pv) = (read::<T>(x)?, read::<T>(inv_freq)?, read_i32(pos)?);
    let (sign, m) = (if inverse { -T::one() } else { T::one() }, T::from_f64(mscale as f64));
    // The pass-through dims keep the input's values.
    let mut y = xv.to_vec();
    y.par_chunks_mut(h * hd).enumerate().for_each(|(t, yt)| {
        let p = T::from_f64(pv[t] as f64);
        // Angles are formed in the compute precision, as HF does in f32.
        // As transformers: cos and sin each times the scale, in the compute precision.
        let cs: Vec<(T, T)> = fv.iter().map(|&f| ((f * p).cos() * m, sign * ((f * p).sin() * m))).collect();
        for head in 0..h {
            let base = t * h * hd + head * hd;
            let (xr, yr) = (&xv[base..base + hd], &mut yt[head * hd..(head + 1) * hd]);
            for i in 0..half {
                let (c, s) = cs[i];
                let (a, b) = (xr[i], xr[i + half]);
                yr[i] = a * c - b * s;
                yr[i + half] = b * c + a * s;
            }
        }
    });
    out(y, x.dims().to_vec())
}

impl RopeOps for CpuBackend {
    fn rope(&self, x: &Tensor, pos: &Tensor, inv_freq: &Tensor, mscale: f32, inverse: bool) -> Result<Tensor> {
        by_prec!(prec(&[x]), rope(x, pos, inv_freq, mscale, inverse))
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::RopeOps;
    use crate::{CpuBackend, DType, Tensor};

    /// One case of tests/fixtures/rope/partial.txt (tools/make_partial_rope_fixtures.py):
    /// transformers' `apply_rotary_pos_emb` with `partial_rotary_factor`, in f32.
    struct Fixture {
        name: String,
        dims: [usize; 4],
        theta: f64,
        factor: f64,
        pos: Vec<i32>,
        inv_freq: Vec<f32>,
        x: Vec<f32>,
        y: Vec<f32>,
    }

    fn fixtures() -> Vec<Fixture> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/rope/partial.txt");
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut out: Vec<Fixture> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (key, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{path}: line {line:?}"));
            let w: Vec<&str> = rest.split_whitespace().collect();
            let f32s = || w.iter().map(|v| v.parse::<f32>().unwrap()).collect::<Vec<f32>>();
            if key == "case" {
                let n = |i: usize| w[i].parse::<usize>().unwrap();
                out.push(Fixture {
                    name: w[0].to_string(),
                    dims: [n(1), n(2), n(3), n(4)],
                    theta: w[5].parse().unwrap(),
                    factor: w[6].parse().unwrap(),
                    pos: Vec::new(),
                    inv_freq: Vec::new(),
                    x: Vec::new(),
                    y: Vec::new(),
                });
                continue;
            }
            let f = out.last_mut().unwrap_or_else(|| panic!("{path}: {key} before any case"));
            match key {
                "pos" => f.pos = w.iter().map(|v| v.parse().unwrap()).collect(),
                "inv_freq" => f.inv_freq = f32s(),
                "x" => f.x = f32s(),
                "y" => f.y = f32s(),
                k => panic!("{path}: unknown key {k}"),
            }
        }
        out
    }

    /// The CPU kernel against transformers on partial rotary (Phi-4-mini's 0.75, 0.5, 0.2) and
    /// full rotation, in f32 and f64: the first `r = int(D · factor)` dims rotate in pairs
    /// `(i, i + r/2)`, the rest are the input's bit for bit; kiln's frequencies for `r` dims are
    /// transformers'; the inverse rotation brings the input back.
    #[test]
    fn partial_rotary_matches_transformers() {
        let all = fixtures();
        assert_eq!(all.len(), 4, "cases in the fixture");
        for f in all {
            let [b, t, h, d] = f.dims;
            let r = 2 * f.inv_freq.len();
            assert_eq!(r, (d as f64 * f.factor + 1e-9) as usize, "{}: rotary dims", f.name);
            assert!(r < d || f.factor == 1.0, "{}", f.name);
            let ours = crate::ops::inv_freq(r, f.theta, None).unwrap().to_vec_f32().unwrap();
            for (a, e) in ours.iter().zip(&f.inv_freq) {
                assert!((a - e).abs() <= 1e-6 * e.abs(), "{}: inv_freq {a} vs transformers' {e}", f.name);
            }
            let (x, pos) =
                (Tensor::from_vec(f.x.clone(), [b, t, h, d]).unwrap(), Tensor::from_vec(f.pos, [b, t]).unwrap());
            let fq = Tensor::from_vec(f.inv_freq, [r / 2]).unwrap();
            for dt in [DType::F32, DType::F64] {
                let (xd, fd) = (x.to_dtype(dt).unwrap(), fq.to_dtype(dt).unwrap());
                let y = CpuBackend.rope(&xd, &pos, &fd, 1.0, false).unwrap();
                let yv = y.to_vec_f64().unwrap();
                let mut worst = 0.0f64;
                for (i, (&g, &e)) in yv.iter().zip(&f.y).enumerate() {
                    let err = (g - e as f64).abs();
                    worst = worst.max(err);
                    // torch and kiln round the same f32 angle's cos/sin; f64 keeps the angle exact.
                    assert!(
                        err <= 1e-5 * (1.0 + (e as f64).abs()),
                        "{} {}: element {i}: {g} vs {e}",
                        f.name,
                        dt.name()
                    );
                    if i % d >= r {
                        assert_eq!(g, f.x[i] as f64, "{} {}: pass-through dim {}", f.name, dt.name(), i % d);
                    }
                }
                eprintln!("rope {} ({r} of {d} dims) {}: max |kiln − transformers| {worst:.1e}", f.name, dt.name());
                let back = CpuBackend.rope(&y, &pos, &fd, 1.0, true).unwrap().to_vec_f64().unwrap();
                for (i, (&g, &e)) in back.iter().zip(&f.x).enumerate() {
                    assert!((g - e as f64).abs() <= 1e-5 * (1.0 + (e as f64).abs()), "{}: inverse at {i}", f.name);
                }
            }
        }
    }

    /// `mscale` multiplies the rotated dims only (as transformers' cos·s and sin·s): the
    /// rotary slice is exactly s times the unscaled one in f64, the pass-through dims unchanged.
    #[test]
    fn mscale_scales_the_rotary_slice_only() {
        let (b, t, h, d, r) = (2, 5, 3, 10, 6);
        let x: Vec<f64> = (0..b * t * h * d).map(|i| ((i * 37 % 101) as f64 / 50.0) - 1.0).collect();
        let x = Tensor::from_vec(x, [b, t, h, d]).unwrap();
        let pos = Tensor::from_vec((0..(b * t) as i32).collect::<Vec<_>>(), [b, t]).unwrap();
        let fq = crate::ops::inv_freq(r, 100.0, None).unwrap().to_dtype(DType::F64).unwrap();
        let s = 1.1902f32;
        for inverse in [false, true] {
            let one = CpuBackend.rope(&x, &pos, &fq, 1.0, inverse).unwrap().to_vec_f64().unwrap();
            let got = CpuBackend.rope(&x, &pos, &fq, s, inverse).unwrap().to_vec_f64().unwrap();
            let xv = x.to_vec_f64().unwrap();
            for (i, (&g, &o)) in got.iter().zip(&one).enumerate() {
                let want = if i % d < r { o * s as f64 } else { xv[i] };
                assert!((g - want).abs() <= 1e-14 * (1.0 + want.abs()), "dim {} ({inverse}): {g} vs {want}", i % d);
            }
        }
    }

    /// No frequencies, more than D/2 of them, an odd D, or positions that do not match: errors
    /// naming the sizes, no panic.
    #[test]
    fn bad_rope_operands_are_refused() {
        let x = Tensor::from_vec(vec![0.5f32; 2 * 3 * 8], [1, 2, 3, 8]).unwrap();
        let pos = Tensor::from_vec(vec![0i32, 1], [1, 2]).unwrap();
        let freqs = |n: usize| Tensor::from_vec(vec![0.1f32; n], [n]).unwrap();
        for n in [0, 5, 8] {
            let e = CpuBackend.rope(&x, &pos, &freqs(n), 1.0, false).unwrap_err().to_string();
            assert!(e.contains("1 to D/2 = 4 frequencies"), "{n} frequencies: {e}");
        }
        for n in [1, 3, 4] {
            assert!(CpuBackend.rope(&x, &pos, &freqs(n), 1.0, false).is_ok(), "{n} frequencies");
        }
        let odd = Tensor::from_vec(vec![0.5f32; 2 * 7], [1, 2, 1, 7]).unwrap();
        let e = CpuBackend.rope(&odd, &pos, &freqs(3), 1.0, false).unwrap_err().to_string();
        assert!(e.contains("even D"), "{e}");
        let e = CpuBackend.rope(&x, &freqs(2), &freqs(4), 1.0, false).unwrap_err().to_string();
        assert!(e.contains("one i32 position per (b, t)"), "{e}");
        let three = Tensor::from_vec(vec![0i32, 1, 2], [1, 3]).unwrap();
        assert!(CpuBackend.rope(&x, &three, &freqs(4), 1.0, false).is_err());
    }
}
