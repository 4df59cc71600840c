//! Attention forward and backward against a naive full-softmax reference (with and without a
//! sliding window and soft-capped scores), and packing: rows packed into one sequence with
//! segment ids give exactly what each row gives alone; and against PyTorch: transformers' eager
//! attention with a sliding-window mask and tanh soft-capping
//! (`tests/fixtures/attention/window_softcap.bin`, written by `tools/make_attention_fixtures.py`).

use kiln_core::backend::AttentionOps;
use kiln_core::backend::AttnArgs;
use kiln_core::rng::Rng;
use kiln_core::{CpuBackend, Tensor};

fn randn(rng: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| rng.normal()).collect()
}

/// `(t, hq, hkv, d)` of single-row inputs.
type Dims = (usize, usize, usize, usize);

/// The score options of the naive reference: scale, sliding window, soft-cap.
#[derive(Clone, Copy)]
struct Scores {
    scale: f64,
    window: Option<usize>,
    softcap: Option<f64>,
}

impl Scores {
    fn plain(scale: f64) -> Scores {
        Scores { scale, window: None, softcap: None }
    }
    /// The keys query `i` sees: causal, and the last `window` of them.
    fn keys(&self, i: usize) -> std::ops::RangeInclusive<usize> {
        self.window.map_or(0, |w| (i + 1).saturating_sub(w))..=i
    }
    /// The score of a raw dot product and its derivative: `cap·tanh(s·scale/cap)`.
    fn of(&self, dot: f64) -> (f64, f64) {
        let s = dot * self.scale;
        match self.softcap {
            Some(c) => ((s / c).tanh() * c, 1.0 - (s / c).tanh().powi(2)),
            None => (s, 1.0),
        }
    }
}

/// softmax(scores + causal/window mask)·v with the full T×T matrix, one head at a time.
fn naive(q: &[f64], k: &[f64], v: &[f64], (t, hq, hkv, d): Dims, sc: Scores) -> Vec<f64> {
    let mut o = vec![0.0; t * hq * d];
    for h in 0..hq {
        let g = h / (hq / hkv);
        for i in 0..t {
            let keys: Vec<usize> = sc.keys(i).collect();
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| sc.of((0..d).map(|x| q[(i * hq + h) * d + x] * k[(j * hkv + g) * d + x]).sum::<f64>()).0)
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for (&j, sj) in keys.iter().zip(&s) {
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
    let want = naive(&q, &k, &v, (t, hq, hkv, d), Scores::plain(0.4));
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
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)) ⊙ cap′, dQ = s·dS·K, dK = s·dSᵀ·Q.
fn naive_bwd(q: &[f64], k: &[f64], v: &[f64], g: &[f64], (t, hq, hkv, d): Dims, sc: Scores) -> [Vec<f64>; 3] {
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let at = |x: &[f64], row: usize, c: usize| x[row * d + c];
    for h in 0..hq {
        let gh = h / (hq / hkv);
        for i in 0..t {
            let (qi, ki) = (i * hq + h, |j: usize| j * hkv + gh);
            let keys: Vec<usize> = sc.keys(i).collect();
            let (s, dcap): (Vec<f64>, Vec<f64>) =
                keys.iter().map(|&j| sc.of((0..d).map(|x| at(q, qi, x) * at(k, ki(j), x)).sum::<f64>())).unzip();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
            let dp: Vec<f64> = keys.iter().map(|&j| (0..d).map(|x| at(g, qi, x) * at(v, ki(j), x)).sum()).collect();
            let delta: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
            for (n, &j) in keys.iter().enumerate() {
                let ds = p[n] * (dp[n] - delta) * dcap[n];
                for x in 0..d {
                    dv[ki(j) * d + x] += p[n] * at(g, qi, x);
                    dq[qi * d + x] += sc.scale * ds * at(k, ki(j), x);
                    dk[ki(j) * d + x] += sc.scale * ds * at(q, qi, x);
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
    let want = naive_bwd(&q, &k, &v, &g, (t, hq, hkv, d), Scores::plain(0.25));
    for (name, got, want) in [("dq", dq, &want[0]), ("dk", dk, &want[1]), ("dv", dv, &want[2])] {
        let got = got.to_vec_f64().unwrap();
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
            assert!(a.is_finite() && (a - b).abs() <= 1e-9 * scale, "{name}[{i}]: {a} vs {b}");
        }
    }
}

/// Runs forward and backward on the CPU in f64 (inputs `[t, h, d]` of one batch row).
fn cpu_fwd_bwd(
    x: [&[f64]; 4],
    (t, hq, hkv, d): Dims,
    seg: Option<&Tensor>,
    sc: Scores,
) -> (Vec<f64>, Vec<f64>, [Vec<f64>; 3]) {
    let mk = |x: &[f64], h: usize| Tensor::from_vec(x.to_vec(), [1, t, h, d]).unwrap();
    let (tq, tk, tv, tg) = (mk(x[0], hq), mk(x[1], hkv), mk(x[2], hkv), mk(x[3], hq));
    let args = AttnArgs {
        q: &tq,
        k: &tk,
        v: &tv,
        seg,
        shared_prefix: false,
        scale: sc.scale,
        window: sc.window,
        softcap: sc.softcap,
    };
    let (o, lse) = CpuBackend.attention_fwd(&args).unwrap();
    let (dq, dk, dv) = CpuBackend.attention_bwd(&args, &o, &lse, &tg).unwrap();
    let v = |t: Tensor| t.to_vec_f64().unwrap();
    (v(o), v(lse), [v(dq), v(dk), v(dv)])
}

/// The largest elementwise difference relative to the largest reference magnitude.
fn worst(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-300);
    got.iter()
        .zip(want)
        .map(|(a, b)| if a.is_finite() { (a - b).abs() / scale } else { f64::INFINITY })
        .fold(0.0, f64::max)
}

#[test]
fn sliding_window_and_soft_cap_match_the_naive_reference() {
    // T = 150 crosses the forward's 32-key blocks and the backward's 64-query blocks, so windows
    // of 33 and 40 skip whole blocks of keys on both sides; a window of 1 leaves the diagonal
    // only (P = 1, dq = dk = 0); 200 is longer than the row (no effect); GQA 6:2, odd head dim.
    let (t, hq, hkv, d) = (150, 6, 2, 7);
    let mut rng = Rng::new(31);
    let (q, k, v, g) = (
        randn(&mut rng, t * hq * d),
        randn(&mut rng, t * hkv * d),
        randn(&mut rng, t * hkv * d),
        randn(&mut rng, t * hq * d),
    );
    let plain = naive(&q, &k, &v, (t, hq, hkv, d), Scores::plain(0.4));
    for (window, softcap) in [
        (Some(1), None),
        (Some(5), Some(2.0)),
        (Some(33), None),
        (Some(40), Some(50.0)),
        (None, Some(1.0)),
        (Some(200), Some(30.0)),
    ] {
        let sc = Scores { scale: 0.4, window, softcap };
        let (o, _, grads) = cpu_fwd_bwd([&q, &k, &v, &g], (t, hq, hkv, d), None, sc);
        let want = naive(&q, &k, &v, (t, hq, hkv, d), sc);
        let e = worst(&o, &want);
        assert!(e < 1e-12, "window {window:?} cap {softcap:?}: o error {e:e}");
        let wants = naive_bwd(&q, &k, &v, &g, (t, hq, hkv, d), sc);
        for (name, got, want) in
            [("dq", &grads[0], &wants[0]), ("dk", &grads[1], &wants[1]), ("dv", &grads[2], &wants[2])]
        {
            if window == Some(1) && name != "dv" {
                // One visible key: P = 1 whatever the scores, so dq and dk vanish.
                assert!(got.iter().all(|x| x.abs() < 1e-12), "window 1: {name} must be zero");
                continue;
            }
            let e = worst(got, want);
            assert!(e < 1e-9, "window {window:?} cap {softcap:?}: {name} error {e:e}");
        }
        // A window longer than the row changes nothing; every other row here changes the result.
        if window.is_some_and(|w| w >= t) {
            let unwindowed = naive(&q, &k, &v, (t, hq, hkv, d), Scores { window: None, ..sc });
            let e = worst(&o, &unwindowed);
            assert!(e < 1e-12, "a window longer than the row changed the result ({e:e})");
        } else {
            let moved = worst(&o, &plain);
            assert!(moved > 1e-3, "window {window:?} cap {softcap:?} changed nothing ({moved:e})");
        }
    }
}

#[test]
fn windowed_packed_rows_match_each_row_alone() {
    // Index distance is position distance inside a segment, so packing keeps each row's window.
    let mut r = Rng::new(32);
    let (hq, hkv, d) = (4, 2, 5);
    let lens = [9usize, 30, 4, 41];
    let total: usize = lens.iter().sum();
    let x = [
        randn(&mut r, total * hq * d),
        randn(&mut r, total * hkv * d),
        randn(&mut r, total * hkv * d),
        randn(&mut r, total * hq * d),
    ];
    let seg: Vec<i32> = lens.iter().enumerate().flat_map(|(i, &l)| std::iter::repeat_n(i as i32, l)).collect();
    let segt = Tensor::from_vec(seg, [1, total]).unwrap();
    let sc = Scores { scale: 0.5, window: Some(6), softcap: Some(2.5) };
    let (po, plse, pg) = cpu_fwd_bwd([&x[0], &x[1], &x[2], &x[3]], (total, hq, hkv, d), Some(&segt), sc);
    let mut start = 0;
    for &l in &lens {
        let (a, b) = (start, start + l);
        let part = |v: &[f64], h: usize| v[a * h * d..b * h * d].to_vec();
        let alone = [part(&x[0], hq), part(&x[1], hkv), part(&x[2], hkv), part(&x[3], hq)];
        let (o, lse, g) = cpu_fwd_bwd([&alone[0], &alone[1], &alone[2], &alone[3]], (l, hq, hkv, d), None, sc);
        let pairs = [
            ("o", o, part(&po, hq)),
            ("lse", lse, plse[a * hq..b * hq].to_vec()),
            ("dq", g[0].clone(), part(&pg[0], hq)),
            ("dk", g[1].clone(), part(&pg[1], hkv)),
            ("dv", g[2].clone(), part(&pg[2], hkv)),
        ];
        for (name, alone, packed) in pairs {
            let e = worst(&packed, &alone);
            assert!(e < 1e-12, "row of length {l}: {name} differs by {e:e}");
        }
        start = b;
    }
}

#[test]
fn decoding_with_a_window_matches_the_full_pass() {
    // The window counts absolute positions: the last queries over the whole cache see the same
    // keys as in the full pass.
    let mut r = Rng::new(33);
    let (t, hq, hkv, d) = (41, 4, 2, 6);
    let (q, k, v) = (randn(&mut r, t * hq * d), randn(&mut r, t * hkv * d), randn(&mut r, t * hkv * d));
    let kt = Tensor::from_vec(k, [1, t, hkv, d]).unwrap();
    let vt = Tensor::from_vec(v, [1, t, hkv, d]).unwrap();
    let run = |q: &[f64], n: usize| {
        let qt = Tensor::from_vec(q.to_vec(), [1, n, hq, d]).unwrap();
        let args = AttnArgs {
            q: &qt,
            k: &kt,
            v: &vt,
            seg: None,
            shared_prefix: false,
            scale: 0.3,
            window: Some(7),
            softcap: Some(3.0),
        };
        let (o, lse) = CpuBackend.attention_fwd(&args).unwrap();
        (o.to_vec_f64().unwrap(), lse.to_vec_f64().unwrap())
    };
    let (full, full_lse) = run(&q, t);
    for n in [1, 3, 12] {
        let (o, lse) = run(&q[(t - n) * hq * d..], n);
        let e = worst(&o, &full[(t - n) * hq * d..]).max(worst(&lse, &full_lse[(t - n) * hq..]));
        assert!(e < 1e-12, "{n} queries: max difference {e:e}");
    }
}

#[test]
fn a_window_of_no_keys_and_bad_caps_are_refused() {
    let x = Tensor::from_vec(vec![0.5f32; 2 * 3 * 2], [1, 2, 3, 2]).unwrap();
    let call = |window: Option<usize>, softcap: Option<f64>| {
        let a = AttnArgs { q: &x, k: &x, v: &x, seg: None, shared_prefix: false, scale: 1.0, window, softcap };
        CpuBackend.attention_fwd(&a).map(|_| ()).map_err(|e| e.to_string())
    };
    assert!(call(Some(1), Some(1e-3)).is_ok());
    let e = call(Some(0), None).unwrap_err();
    assert!(e.contains("window"), "{e}");
    for cap in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = call(None, Some(cap)).unwrap_err();
        assert!(e.contains("soft-cap"), "cap {cap}: {e}");
    }
}

/// The records of `tests/fixtures/attention/window_softcap.bin`: name → (dims, values).
fn fixture() -> std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/attention/window_softcap.bin");
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut at = 0;
    let mut take = |n: usize| {
        let s = &bytes[at..at + n];
        at += n;
        s
    };
    let mut out = std::collections::HashMap::new();
    while out.len() < 10 {
        let n = take(1)[0] as usize;
        let name = String::from_utf8(take(n).to_vec()).unwrap();
        let rank = take(1)[0] as usize;
        let dims: Vec<usize> = (0..rank).map(|_| u32::from_le_bytes(take(4).try_into().unwrap()) as usize).collect();
        let vals =
            (0..dims.iter().product::<usize>()).map(|_| f32::from_le_bytes(take(4).try_into().unwrap())).collect();
        out.insert(name, (dims, vals));
    }
    assert_eq!(at, bytes.len(), "trailing bytes in the fixture");
    out
}

/// ‖got − want‖ / ‖want‖.
fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in got.iter().zip(want) {
        assert!(a.is_finite());
        num += (a as f64 - b as f64).powi(2);
        den += (b as f64).powi(2);
    }
    (num / den).sqrt()
}

#[test]
fn window_and_soft_cap_match_pytorch() {
    let fx = fixture();
    let p = &fx["params"].1;
    let (window, softcap, scale) = (p[0] as usize, p[1] as f64, p[2] as f64);
    let t = |name: &str| Tensor::from_vec(fx[name].1.clone(), fx[name].0.clone()).unwrap();
    let (q, k, v, d_o) = (t("q"), t("k"), t("v"), t("d_o"));
    // f32 inputs, so the CPU computes in f32 as PyTorch did.
    let args = AttnArgs {
        q: &q,
        k: &k,
        v: &v,
        seg: None,
        shared_prefix: false,
        scale,
        window: Some(window),
        softcap: Some(softcap),
    };
    let (o, lse) = CpuBackend.attention_fwd(&args).unwrap();
    let (dq, dk, dv) = CpuBackend.attention_bwd(&args, &o, &lse, &d_o).unwrap();
    let mut report = Vec::new();
    for (name, got) in [("o", o), ("lse", lse), ("dq", dq), ("dk", dk), ("dv", dv)] {
        assert_eq!(got.dims(), &fx[name].0[..], "{name} shape");
        let e = rel(&got.to_vec_f32().unwrap(), &fx[name].1);
        assert!(e <= 1e-5, "{name}: relative error {e:e} against PyTorch");
        report.push(format!("{name} {e:.1e}"));
    }
    // Without the window (or the cap) kiln would miss PyTorch by far more.
    for (w, c) in [(None, Some(softcap)), (Some(window), None)] {
        let a = AttnArgs { window: w, softcap: c, ..args };
        let o = CpuBackend.attention_fwd(&a).unwrap().0.to_vec_f32().unwrap();
        let e = rel(&o, &fx["o"].1);
        assert!(e > 1e-2, "window {w:?} cap {c:?} still matches ({e:e}): the fixture would not catch it");
    }
    eprintln!("window {window}, soft-cap {softcap} vs PyTorch: relative errors {}", report.join(", "));
}
