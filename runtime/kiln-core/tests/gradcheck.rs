//! Every op's backward against central finite differences in f64, on random inputs at odd
//! shapes (not multiples of any block size). The scalar checked is `L = Σ y ⊙ r` for a fixed
//! random `r`, so every output element contributes.

use std::rc::Rc;

use kiln_core::ops::{self, Lora, RopeScaling};
use kiln_core::rng::Rng;
use kiln_core::{Result, Tape, Tensor, Var};

fn randn(rng: &mut Rng, dims: &[usize], scale: f64) -> Tensor {
    let n = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.normal() * scale).collect::<Vec<f64>>(), dims.to_vec()).unwrap()
}

fn ids(v: Vec<i32>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(v, dims.to_vec()).unwrap()
}

type OpFn<'a> = &'a dyn Fn(&Tape, &[Var]) -> Result<Var>;

/// Checks d(Σ y·r)/d(input) for every input flagged trainable. Returns the worst relative error.
fn check(name: &str, inputs: Vec<(Tensor, bool)>, f: OpFn<'_>, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let vars: Vec<Var> = inputs.iter().map(|(t, g)| Var::leaf(t.clone(), *g)).collect();
    let tape = Tape::new();
    let y = f(&tape, &vars).unwrap();
    let r = randn(&mut rng, y.value().dims(), 1.0);
    let rv = r.to_vec_f64().unwrap();
    let grads = tape.backward_from(vec![(y.id(), r.clone())]).unwrap();
    assert!(tape.is_empty(), "{name}: backward must consume the tape");
    let eval = |vs: &[Var]| -> f64 {
        // A recording tape, so training-only behaviour (dropout) is the same in both passes.
        let y = f(&Tape::new(), vs).unwrap();
        y.value().to_vec_f64().unwrap().iter().zip(&rv).map(|(a, b)| a * b).sum()
    };
    let mut worst = 0.0f64;
    for (i, (t, trainable)) in inputs.iter().enumerate() {
        if !trainable {
            assert!(grads.get(&vars[i]).is_none(), "{name}: frozen input {i} got a gradient");
            continue;
        }
        let g = grads.get(&vars[i]).unwrap_or_else(|| panic!("{name}: no gradient for input {i}"));
        assert_eq!(g.dims(), t.dims(), "{name}: gradient shape of input {i}");
        let ga = g.to_vec_f64().unwrap();
        let base = t.to_vec_f64().unwrap();
        let (mut num, mut den) = (0.0f64, 0.0f64);
        // Every element for small inputs, an even sample for larger ones.
        let stride = (base.len() / 97).max(1);
        for e in (0..base.len()).step_by(stride) {
            let h = 1e-6 * base[e].abs().max(1.0);
            let probe = |delta: f64| {
                let mut v = base.clone();
                v[e] += delta;
                let mut vs = vars.clone();
                vs[i] = Var::leaf(Tensor::from_vec(v, t.dims().to_vec()).unwrap(), true);
                eval(&vs)
            };
            let fd = (probe(h) - probe(-h)) / (2.0 * h);
            assert!(ga[e].is_finite(), "{name}: NaN/inf gradient");
            num += (ga[e] - fd).powi(2);
            den += fd.powi(2);
        }
        let rel = (num / den.max(1e-300)).sqrt();
        assert!(den > 0.0, "{name}: input {i} has an all-zero gradient; the check would prove nothing");
        // f64 central differences carry ~1e-7..1e-5 of round-off on tiny gradients (CE over a
        // 4k vocabulary); a wrong formula is off by O(1).
        assert!(rel < 3e-5, "{name}: input {i} relative gradient error {rel:e}");
        worst = worst.max(rel);
    }
    worst
}

#[test]
fn grad_add_glu_reshape() {
    let mut r = Rng::new(1);
    let (a, b) = (randn(&mut r, &[3, 7], 1.0), randn(&mut r, &[3, 7], 1.0));
    check("add", vec![(a.clone(), true), (b.clone(), true)], &|t, v| ops::add(t, &v[0], &v[1]), 2);
    check("swiglu", vec![(a.clone(), true), (b.clone(), true)], &|t, v| ops::swiglu(t, &v[0], &v[1]), 3);
    check("geglu", vec![(a, true), (b, true)], &|t, v| ops::geglu(t, &v[0], &v[1]), 3);
    let x = randn(&mut r, &[2, 3, 5], 1.0);
    let w = randn(&mut r, &[5], 1.0);
    check(
        "reshape",
        vec![(x, true), (w, true)],
        &|t, v| {
            let y = ops::rms_norm(t, &v[0], &v[1], 1e-5)?;
            ops::reshape(t, &y, [6, 5])
        },
        4,
    );
}

#[test]
fn grad_linear_with_bias_and_lora() {
    let mut r = Rng::new(5);
    let (m, k, n, rank) = (7, 13, 11, 3);
    let x = randn(&mut r, &[m, k], 1.0);
    let w = randn(&mut r, &[n, k], 0.3);
    let bias = randn(&mut r, &[n], 0.3);
    let a = randn(&mut r, &[rank, k], 0.3);
    let b = randn(&mut r, &[n, rank], 0.3);
    let f = |t: &Tape, v: &[Var]| {
        let l = Lora::new(v[3].clone(), v[4].clone(), 1.7);
        ops::linear(t, &v[0], &v[1], Some(&v[2]), Some(&l))
    };
    check(
        "linear+lora",
        vec![(x.clone(), true), (w.clone(), true), (bias.clone(), true), (a.clone(), true), (b.clone(), true)],
        &f,
        6,
    );
    // Frozen base weight, trainable adapter: W must not get a gradient.
    check(
        "linear+lora frozen W",
        vec![(x.clone(), true), (w.clone(), false), (bias.clone(), false), (a.clone(), true), (b.clone(), true)],
        &f,
        7,
    );
    // LoRA dropout: the adapter's input is masked (same mask in every pass: fixed seed).
    let fd = |t: &Tape, v: &[Var]| {
        let l = Lora { dropout: 0.4, seed: 99, ..Lora::new(v[3].clone(), v[4].clone(), 1.7) };
        ops::linear(t, &v[0], &v[1], Some(&v[2]), Some(&l))
    };
    check("linear+lora dropout", vec![(x, true), (w, false), (bias, true), (a, true), (b, true)], &fd, 8);
}

#[test]
fn grad_rms_norm() {
    let mut r = Rng::new(8);
    let x = randn(&mut r, &[5, 19], 2.0);
    let w = randn(&mut r, &[19], 1.0);
    check("rms_norm", vec![(x, true), (w, true)], &|t, v| ops::rms_norm(t, &v[0], &v[1], 1e-6), 9);
}

#[test]
fn grad_rope_default_and_llama3() {
    let mut r = Rng::new(10);
    let x = randn(&mut r, &[2, 5, 3, 6], 1.0);
    let pos = ids(vec![0, 1, 2, 3, 4, 0, 1, 2, 0, 1], &[2, 5]);
    for scaling in [
        None,
        Some(RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 16.0,
        }),
    ] {
        let f = ops::inv_freq(6, 100.0, scaling).unwrap();
        let (p, fq) = (pos.clone(), f.clone());
        check("rope", vec![(x.clone(), true)], &move |t, v| ops::rope(t, &v[0], &p, &fq, 1.0), 11);
    }
}

#[test]
fn grad_rope_partial_rotary() {
    // The first 6 of 10 dims rotate (3 pairs), then a single pair of 10; the pass-through
    // dims' gradient is the upstream one.
    let mut r = Rng::new(31);
    let x = randn(&mut r, &[2, 5, 3, 10], 1.0);
    let pos = ids(vec![0, 1, 2, 3, 4, 7, 8, 0, 1, 2], &[2, 5]);
    // The rotated dims scaled (LongRoPE's attention factor) or not.
    for (rot, m) in [(6, 1.0), (2, 1.0), (6, 1.19), (10, 0.8)] {
        let f = ops::inv_freq(rot, 100.0, None).unwrap();
        let (p, fq) = (pos.clone(), f.clone());
        check("rope partial", vec![(x.clone(), true)], &move |t, v| ops::rope(t, &v[0], &p, &fq, m), 32);
    }
}

#[test]
fn grad_attention_gqa_with_and_without_segments() {
    let mut r = Rng::new(12);
    let (b, t, hq, hkv, d) = (2, 37, 4, 2, 5);
    let q = randn(&mut r, &[b, t, hq, d], 1.0);
    let k = randn(&mut r, &[b, t, hkv, d], 1.0);
    let v = randn(&mut r, &[b, t, hkv, d], 1.0);
    let scale = 1.0 / (d as f64).sqrt();
    let inputs = vec![(q, true), (k, true), (v, true)];
    check("attention", inputs.clone(), &|tp, x| ops::attention(tp, &x[0], &x[1], &x[2], None, false, scale), 13);
    let seg: Vec<i32> = (0..b * t)
        .map(|i| {
            if i % t < 20 {
                0
            } else if i % t < 33 {
                1
            } else {
                2
            }
        })
        .collect();
    let seg = ids(seg, &[b, t]);
    check(
        "attention packed",
        inputs.clone(),
        &|tp, x| ops::attention(tp, &x[0], &x[1], &x[2], Some(&seg), false, scale),
        14,
    );
    // Preference layout: a shared prompt (segment 4), two answers that see it (5, 6), then a
    // second group's prompt (8) with one answer (9) and padding (-1).
    let tree: Vec<i32> = (0..b * t)
        .map(|i| match i % t {
            0..12 => 4,
            12..20 => 5,
            20..27 => 6,
            27..31 => 8,
            31..35 => 9,
            _ => -1,
        })
        .collect();
    let tree = ids(tree, &[b, t]);
    check(
        "attention shared prefix",
        inputs,
        &|tp, x| ops::attention(tp, &x[0], &x[1], &x[2], Some(&tree), true, scale),
        21,
    );
}

#[test]
fn grad_attention_with_a_sliding_window_and_soft_cap() {
    // Odd shapes; windows of 1 (the diagonal alone: P = 1, so only v has a gradient), a few keys
    // (blocks of keys skipped), and longer than the rows; caps that bend the scores
    // (q·k/√d ~ ±2 against caps of 1.5 and 3) and one that does not; packed rows with a window.
    let mut r = Rng::new(15);
    let (b, t, hq, hkv, d) = (2, 37, 4, 2, 5);
    let q = randn(&mut r, &[b, t, hq, d], 2.0);
    let k = randn(&mut r, &[b, t, hkv, d], 1.0);
    let v = randn(&mut r, &[b, t, hkv, d], 1.0);
    let scale = 1.0 / (d as f64).sqrt();
    let seg: Vec<i32> = (0..b * t).map(|i| (i % t * 3 / t) as i32).collect();
    let seg = ids(seg, &[b, t]);
    let inputs = vec![(q, true), (k, true), (v, true)];
    for (window, softcap, packed, seed) in [
        (Some(4), Some(1.5), false, 16),
        (Some(9), None, true, 17),
        (None, Some(3.0), false, 18),
        (Some(50), Some(1.5), true, 19),
        (Some(3), Some(30.0), true, 20),
    ] {
        let opts = ops::AttnOptions { seg: packed.then_some(&seg), shared_prefix: false, scale, window, softcap };
        let name = format!("attention window {window:?} softcap {softcap:?} packed {packed}");
        check(&name, inputs.clone(), &|tp, x| ops::attention_with(tp, &x[0], &x[1], &x[2], &opts), seed);
    }
    // Window 1: q and k get exactly zero gradient (check() refuses all-zero gradients), v the
    // output gradient of its own query heads.
    let frozen = vec![(inputs[0].0.clone(), false), (inputs[1].0.clone(), false), (inputs[2].0.clone(), true)];
    let opts = ops::AttnOptions { seg: None, shared_prefix: false, scale, window: Some(1), softcap: Some(2.0) };
    check("attention window 1", frozen, &|tp, x| ops::attention_with(tp, &x[0], &x[1], &x[2], &opts), 22);
}

#[test]
fn grad_embedding_and_cross_entropy() {
    let mut r = Rng::new(15);
    let w = randn(&mut r, &[23, 7], 1.0);
    let tok = ids(vec![3, 0, 22, 3, 9, 3, 17], &[7]);
    check("embedding", vec![(w, true)], &|t, v| ops::embedding(t, &v[0], &tok), 16);
    let logits = randn(&mut r, &[9, 4099 + 37], 2.0);
    let targets = ids(vec![5, -100, 4100, 0, 77, -100, 4135, 1, 2], &[9]);
    check("cross_entropy", vec![(logits, true)], &|t, v| Ok(ops::cross_entropy(t, &v[0], &targets)?.loss), 17);
}

#[test]
fn grad_fused_lm_head_and_cross_entropy() {
    // 11 rows in chunks of 4 (4, 4, 3), ignored targets among them; h and W both trainable,
    // then W frozen (LoRA's tied embedding).
    let mut r = Rng::new(18);
    let h = randn(&mut r, &[11, 6], 1.0);
    let w = randn(&mut r, &[53, 6], 0.7);
    let targets = ids(vec![5, -100, 52, 0, 7, -100, 33, 1, 2, 50, 9], &[11]);
    let f = |t: &Tape, v: &[Var]| Ok(ops::linear_cross_entropy(t, &v[0], &v[1], &targets, 4)?.loss);
    check("linear_cross_entropy", vec![(h.clone(), true), (w.clone(), true)], &f, 19);
    check("linear_cross_entropy frozen W", vec![(h.clone(), true), (w.clone(), false)], &f, 20);
    // Same loss and gradients as the unfused pair.
    let (hv, wv) = (Var::leaf(h, true), Var::leaf(w, true));
    let tape = Tape::new();
    let fused = ops::linear_cross_entropy(&tape, &hv, &wv, &targets, 4).unwrap();
    let gf = tape.backward(&fused.loss).unwrap();
    let tape = Tape::new();
    let logits = ops::linear(&tape, &hv, &wv, None, None).unwrap();
    let plain = ops::cross_entropy(&tape, &logits, &targets).unwrap();
    let gp = tape.backward(&plain.loss).unwrap();
    assert_eq!(fused.n_valid, plain.n_valid);
    let (a, b) = (fused.loss.value().item().unwrap(), plain.loss.value().item().unwrap());
    assert!((a - b).abs() <= 1e-12 * b.abs(), "loss {a} vs {b}");
    for v in [&hv, &wv] {
        let (x, y) = (gf.get(v).unwrap().to_vec_f64().unwrap(), gp.get(v).unwrap().to_vec_f64().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())), "gradients differ");
    }
}

#[test]
fn grad_token_nll() {
    // Per-token NLL with chunks of 4 over 11 rows: W trainable (full fine-tuning), then frozen
    // (the saved unit gradients scaled by the upstream weights).
    let mut r = Rng::new(22);
    let h = randn(&mut r, &[11, 6], 1.0);
    let w = randn(&mut r, &[53, 6], 0.7);
    let targets = ids(vec![5, -100, 52, 0, 7, -100, 33, 1, 2, 50, 9], &[11]);
    let f = |t: &Tape, v: &[Var]| ops::linear_token_nll(t, &v[0], &v[1], &targets, 4);
    check("linear_token_nll", vec![(h.clone(), true), (w.clone(), true)], &f, 23);
    check("linear_token_nll frozen W", vec![(h.clone(), true), (w.clone(), false)], &f, 24);
    // Its mean over counted rows is the fused cross-entropy.
    let (hv, wv) = (Var::leaf(h, false), Var::leaf(w, false));
    let nll = ops::linear_token_nll(&Tape::no_grad(), &hv, &wv, &targets, 4).unwrap().value().to_vec_f64().unwrap();
    let ce = ops::linear_cross_entropy(&Tape::no_grad(), &hv, &wv, &targets, 4).unwrap();
    assert_eq!(nll[1], 0.0, "an ignored row has no loss");
    let mean = nll.iter().sum::<f64>() / ce.n_valid as f64;
    let l = ce.loss.value().item().unwrap();
    assert!((mean - l).abs() <= 1e-12 * l.abs(), "{mean} vs {l}");
}

#[test]
fn grad_softcap_and_capped_lm_head() {
    // Soft-capping on values inside and well beyond ±cap (standard deviation 4·cap).
    let mut r = Rng::new(25);
    let x = randn(&mut r, &[3, 7], 10.0);
    check("softcap", vec![(x, true)], &|t, v| ops::softcap(t, &v[0], 2.5), 26);
    // The fused LM head on capped logits: W scaled so the raw logits (standard deviation ≈ 5)
    // reach well past the cap 3 where tanh saturates; chunks of 4 over 11 rows, ignored
    // targets among them; W trainable, then frozen.
    let h = randn(&mut r, &[11, 6], 1.0);
    let w = randn(&mut r, &[53, 6], 2.0);
    let targets = ids(vec![5, -100, 52, 0, 7, -100, 33, 1, 2, 50, 9], &[11]);
    let cap = Some(3.0);
    let ce = |t: &Tape, v: &[Var]| Ok(ops::linear_cross_entropy_capped(t, &v[0], &v[1], &targets, 4, cap)?.loss);
    check("linear_cross_entropy capped", vec![(h.clone(), true), (w.clone(), true)], &ce, 27);
    check("linear_cross_entropy capped frozen W", vec![(h.clone(), true), (w.clone(), false)], &ce, 28);
    let nll = |t: &Tape, v: &[Var]| ops::linear_token_nll_capped(t, &v[0], &v[1], &targets, 4, cap);
    check("linear_token_nll capped", vec![(h.clone(), true), (w.clone(), true)], &nll, 29);
    check("linear_token_nll capped frozen W", vec![(h.clone(), true), (w.clone(), false)], &nll, 30);

    // The same loss and gradients as the separate ops: cross_entropy(softcap(linear(h, W))).
    let (hv, wv) = (Var::leaf(h.clone(), true), Var::leaf(w.clone(), true));
    let tape = Tape::new();
    let fused = ops::linear_cross_entropy_capped(&tape, &hv, &wv, &targets, 4, cap).unwrap();
    let gf = tape.backward(&fused.loss).unwrap();
    let tape = Tape::new();
    let logits = ops::linear(&tape, &hv, &wv, None, None).unwrap();
    let capped = ops::softcap(&tape, &logits, 3.0).unwrap();
    let plain = ops::cross_entropy(&tape, &capped, &targets).unwrap();
    let gp = tape.backward(&plain.loss).unwrap();
    assert_eq!(fused.n_valid, plain.n_valid);
    let (a, b) = (fused.loss.value().item().unwrap(), plain.loss.value().item().unwrap());
    assert!((a - b).abs() <= 1e-12 * b.abs(), "loss {a} vs {b}");
    for v in [&hv, &wv] {
        let (x, y) = (gf.get(v).unwrap().to_vec_f64().unwrap(), gp.get(v).unwrap().to_vec_f64().unwrap());
        assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())), "gradients differ");
    }
    // The cap changes the loss (the logits do reach past it), and the per-token NLL's mean over
    // counted rows is the capped cross-entropy.
    let uncapped = ops::linear_cross_entropy(&Tape::no_grad(), &hv, &wv, &targets, 4).unwrap();
    let u = uncapped.loss.value().item().unwrap();
    assert!((u - a).abs() > 1e-3 * a.abs(), "capped {a} vs uncapped {u}");
    let per = ops::linear_token_nll_capped(&Tape::no_grad(), &hv, &wv, &targets, 4, cap).unwrap();
    let mean = per.value().to_vec_f64().unwrap().iter().sum::<f64>() / fused.n_valid as f64;
    assert!((mean - a).abs() <= 1e-12 * a.abs(), "{mean} vs {a}");
    // A cap that is not a positive number is refused.
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let e = ops::linear_cross_entropy_capped(&Tape::no_grad(), &hv, &wv, &targets, 4, Some(bad));
        assert!(e.is_err(), "cap {bad} accepted");
    }
}

#[test]
fn checkpointed_block_gives_the_same_gradients() {
    let mut r = Rng::new(18);
    let x = Var::leaf(randn(&mut r, &[6, 9], 1.0), true);
    let w1 = Var::leaf(randn(&mut r, &[9], 1.0), true);
    let w2 = Var::leaf(randn(&mut r, &[12, 9], 0.3), true);
    let block = {
        let (w1, w2) = (w1.clone(), w2.clone());
        Rc::new(move |t: &Tape, x: &Var| {
            let h = ops::rms_norm(t, x, &w1, 1e-5)?;
            let y = ops::linear(t, &h, &w2, None, None)?;
            ops::swiglu(t, &y, &y)
        })
    };
    let seed = randn(&mut r, &[6, 12], 1.0);
    let plain = Tape::new();
    let y = block(&plain, &x).unwrap();
    let n_plain = plain.len();
    let g1 = plain.backward_from(vec![(y.id(), seed.clone())]).unwrap();
    let ck = Tape::new();
    let y2 = ck.checkpoint(&x, block).unwrap();
    assert_eq!(ck.len(), 1, "a checkpointed block keeps one node instead of {n_plain}");
    assert_eq!(y.value().to_vec_f64().unwrap(), y2.value().to_vec_f64().unwrap());
    let g2 = ck.backward_from(vec![(y2.id(), seed)]).unwrap();
    for v in [&x, &w1, &w2] {
        assert_eq!(g1.get(v).unwrap().to_vec_f64().unwrap(), g2.get(v).unwrap().to_vec_f64().unwrap());
    }
}
