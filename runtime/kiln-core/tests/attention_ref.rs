//! Attention forward and backward against a naive full-softmax reference, and packing: rows packed into one
//! sequence with segment ids give exactly what each row gives alone.

use kiln_core::backend::AttentionOps;
use kiln_core::backend::AttnArgs;
use kiln_core::rng::Rng;
use kiln_core::{CpuBackend, Tensor};

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// softmax(q·kᵀ·scale + causal mask)·v with the full T×T matrix, one head at a time.
/// `(t, hq, hkv, d)` of single-row inputs.
type Dims = (usize, usize, usize, usize);

fn naive(q: &[f64], k: &[f64], v: &[f64], (t, hq, hkv, d): Dims, scale: f64) -> Vec<f64> {
    let mut o = vec![0.0; t * hq * d];
    for h in 0..hq {
        let g = h / (hq / hkv);
        for i in 0..t {
            let s: Vec<f64> = (0..=i)
                .map(|j| (0..d).map(|x| q[(i * hq + h) * d + x] * k[(j * hkv + g) * d + x]).sum::<f64>() * scale)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (j, sj) in s.iter().enumerate() {
                for x in 0..d {
                    o[(i * hq + h) * d + x] += (sj - m).exp() / z * v[(j * hkv + g) * d + x];
                }
            }
        }
    }
    o
}

#[test]
fn matches_naive_softmax_across_key_blocks() {
    let mut r = Rng::new(3);
    // T = 75 spans three 32-key blocks of the online softmax, GQA 6:2.
    let (t, hq, hkv, d) = (75, 6, 2, 7);
    let (q, k, v) = (randn(&mut r, t * hq * d), randn(&mut r, t * hkv * d), randn(&mut r, t * hkv * d));
    let want = naive(&q, &k, &v, (t, hq, hkv, d), 0.4);
    let tq = Tensor::from_vec(q, [1, t, hq, d]).unwrap();
    let tk = Tensor::from_vec(k, [1, t, hkv, d]).unwrap();
    let tv = Tensor::from_vec(v, [1, t, hkv, d]).unwrap();
    let (o, _) = CpuBackend
        .attention_fwd(&AttnArgs {
            q: &tq,
            k: &tk,
            v: &tv,
            seg: None,
            shared_prefix: false,
            scale: 0.4,
            window: None,
            softcap: None,
        })
        .unwrap();
    let got = o.to_vec_f64().unwrap();
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-12, "max abs error {err:e}");
}

#[test]
fn packed_rows_do_not_see_each_other() {
    let mut r = Rng::new(4);
    let (hq, hkv, d) = (4, 2, 5);
    let lens = [9usize, 30, 4];
    let total: usize = lens.iter().sum();
    let (q, k, v) = (randn(&mut r, total * hq * d), randn(&mut r, total * hkv * d), randn(&mut r, total * hkv * d));
    let seg: Vec<i32> = lens.iter().enumerate().flat_map(|(i, &l)| std::iter::repeat_n(i as i32, l)).collect();
    let mk = |x: &[f64], t: usize, h: usize| Tensor::from_vec(x.to_vec(), [1, t, h, d]).unwrap();
    let segt = Tensor::from_vec(seg, [1, total]).unwrap();
    let (packed, _) = CpuBackend
        .attention_fwd(&AttnArgs {
            q: &mk(&q, total, hq),
            k: &mk(&k, total, hkv),
            v: &mk(&v, total, hkv),
            seg: Some(&segt),
            shared_prefix: false,
            scale: 0.5,
            window: None,
            softcap: None,
        })
        .unwrap();
    let packed = packed.to_vec_f64().unwrap();
    let mut start = 0;
    for &l in &lens {
        let (a, b) = (start, start + l);
        let (o, _) = CpuBackend
            .attention_fwd(&AttnArgs {
                q: &mk(&q[a * hq * d..b * hq * d], l, hq),
                k: &mk(&k[a * hkv * d..b * hkv * d], l, hkv),
                v: &mk(&v[a * hkv * d..b * hkv * d], l, hkv),
                seg: None,
                shared_prefix: false,
                scale: 0.5,
                window: None,
                softcap: None,
            })
            .unwrap();
        // Key blocks start at different offsets, so only the summation order differs.
        let err = o
            .to_vec_f64()
            .unwrap()
            .iter()
            .zip(&packed[a * hq * d..b * hq * d])
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "row of length {l}: max abs difference {err:e}");
        start = b;
    }
}

#[test]
fn decoding_over_cached_keys_matches_the_full_pass() {
    let mut r = Rng::new(5);
    let (t, hq, hkv, d) = (41, 4, 2, 6);
    let (q, k, v) = (randn(&mut r, t * hq * d), randn(&mut r, t * hkv * d), randn(&mut r, t * hkv * d));
    let kt = Tensor::from_vec(k, [1, t, hkv, d]).unwrap();
    let vt = Tensor::from_vec(v, [1, t, hkv, d]).unwrap();
    let full_q = Tensor::from_vec(q.clone(), [1, t, hq, d]).unwrap();
    let (full, _) = CpuBackend
        .attention_fwd(&AttnArgs {
            q: &full_q,
            k: &kt,
            v: &vt,
            seg: None,
            shared_prefix: false,
            scale: 0.3,
            window: None,
            softcap: None,
        })
        .unwrap();
    let full = full.to_vec_f64().unwrap();
    // The last 3 queries against all 41 keys: the last 3 rows of the full pass.
    let n = 3;
    let tail = Tensor::from_vec(q[(t - n) * hq * d..].to_vec(), [1, n, hq, d]).unwrap();
    let (o, _) = CpuBackend
        .attention_fwd(&AttnArgs {
            q: &tail,
            k: &kt,
            v: &vt,
            seg: None,
            shared_prefix: false,
            scale: 0.3,
            window: None,
            softcap: None,
        })
        .unwrap();
    let err =
        o.to_vec_f64().unwrap().iter().zip(&full[(t - n) * hq * d..]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(err < 1e-12, "max abs difference {err:e}");
}

/// The gradients of `naive` for output gradient `g`: P = softmax, dV = Pᵀ·dO, dP = dO·Vᵀ,
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = s·dS·K, dK = s·dSᵀ·Q.
fn naive_bwd(q: &[f64], k: &[f64], v: &[f64], g: &[f64], (t, hq, hkv, d): Dims, scale: f64) -> [Vec<f64>; 3] {
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let at = |x: &[f64], row: usize, c: usize| x[row * d + c];
    for h in 0..hq {
        let gh = h / (hq / hkv);
        for i in 0..t {
            let (qi, ki) = (i * hq + h, |j: usize| j * hkv + gh);
            let s: Vec<f64> =
                (0..=i).map(|j| (0..d).map(|x| at(q, qi, x) * at(k, ki(j), x)).sum::<f64>() * scale).collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            let dp: Vec<f64> = (0..=i).map(|j| (0..d).map(|x| at(g, qi, x) * at(v, ki(j), x)).sum()).collect();
            let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for j in 0..=i {
                let ds = p[j] * (dp[j] - delta);
                for x in 0..d {
                    dv[ki(j) * d + x] += p[j] * at(g, qi, x);
                    dq[qi * d + x] += scale * ds * at(k, ki(j), x);
                    dk[ki(j) * d + x] += scale * ds * at(q, qi, x);
                }
            }
        }
    }
    [dq, dk, dv]
}

#[test]
fn backward_matches_the_naive_gradients_across_query_blocks() {
    // T = 150: three blocks of queries (64, 64, 22) in the blocked backward.
    let (t, hq, hkv, d) = (150, 6, 2, 16);
    let mut rng = Rng::new(21);
    let (q, k, v, g) = (
        randn(&mut rng, t * hq * d),
        randn(&mut rng, t * hkv * d),
        randn(&mut rng, t * hkv * d),
        randn(&mut rng, t * hq * d),
    );
    let mk = |x: &[f64], h: usize| Tensor::from_vec(x.to_vec(), [1, t, h, d]).unwrap();
    let (tq, tk, tv, tg) = (mk(&q, hq), mk(&k, hkv), mk(&v, hkv), mk(&g, hq));
    let args =
        AttnArgs { q: &tq, k: &tk, v: &tv, seg: None, shared_prefix: false, scale: 0.25, window: None, softcap: None };
    let (o, lse) = CpuBackend.attention_fwd(&args).unwrap();
    let (dq, dk, dv) = CpuBackend.attention_bwd(&args, &o, &lse, &tg).unwrap();
    let want = naive_bwd(&q, &k, &v, &g, (t, hq, hkv, d), 0.25);
    for (name, got, want) in [("dq", dq, &want[0]), ("dk", dk, &want[1]), ("dv", dv, &want[2])] {
        let got = got.to_vec_f64().unwrap();
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
            assert!(a.is_finite() && (a - b).abs() <= 1e-9 * scale, "{name}[{i}]: {a} vs {b}");
        }
    }
}
