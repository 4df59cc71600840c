//! Phi-3 / Phi-4-mini against transformers, PEFT and llama.cpp's converter (fixtures by
//! tools/make_phi3_fixtures.py): fused `qkv_proj`/`gate_up_proj` split at load, LongRoPE's
//! short and long factors chosen by the longest position as transformers chooses them, a PEFT
//! LoRA on the fused matrices (loaded, its gradients, saved back in PEFT's layout), LoRA
//! training, the merged export fused again, the GGUF the converter writes, and bad input.
//!
//! Tolerances as tests/reference.rs: logits 1e-5 and loss 2e-6 relative, LoRA gradients 3e-5,
//! GGUF logits 1e-4 (measured figures are printed with `--nocapture`).

use std::path::{Path, PathBuf};

use kiln::adapters::{LoraConfig, LoraSet, Target};
use kiln::core::{Tape, Tensor};
use kiln::data::batch::shift_targets;
use kiln::formats::WeightStore;
use kiln::model::{Inputs, KvCache, Llama, ModelConfig, RopeKind, default_positions};

#[path = "common/compare.rs"]
mod compare;
use compare::{f32s, rel_err};

const LOGITS_TOL: f64 = 1e-5;
const LOSS_TOL: f64 = 2e-6;
const LORA_GRAD_TOL: f64 = 3e-5;
const GGUF_TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    compare::fixture_in("phi3", name)
}

fn tmp(name: &str) -> PathBuf {
    compare::fresh_dir("phi3", name)
}

fn reference(name: &str) -> WeightStore {
    WeightStore::open(&fixture(name).join("reference.safetensors")).unwrap()
}

/// Logits of `model` on `ids` `[B, T]`, and the mean cross-entropy of `labels` when given.
fn run(model: &Llama, ids: &Tensor, labels: Option<&Tensor>, lora: Option<&LoraSet>) -> (Vec<f32>, Option<f64>) {
    let (b, t) = (ids.dims()[0], ids.dims()[1]);
    let pos = default_positions(b, t).unwrap();
    let inp = Inputs { ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::no_grad();
    let logits = model.forward(&tape, &inp, lora, false).unwrap();
    let loss = labels.map(|l| {
        let targets = Tensor::from_vec(shift_targets(l.as_slice::<i32>().unwrap(), b, t, None), [b, t]).unwrap();
        kiln::core::ops::cross_entropy(&tape, &logits, &targets).unwrap().loss.value().item().unwrap()
    });
    (logits.value().to_vec_f32().unwrap(), loss)
}

/// Logits and loss on the long rows (long factors) and logits on the short rows (short
/// factors) against transformers'; returns the three relative errors.
fn against_transformers(what: &str, model: &Llama, r: &WeightStore, tol: f64) -> [f64; 3] {
    let (logits, loss) = run(model, &r.get("input_ids").unwrap(), Some(&r.get("labels").unwrap()), None);
    let e = rel_err(&format!("{what}: logits"), &logits, &f32s(r, "logits"));
    let want = r.get("loss").unwrap().item().unwrap();
    let le = ((loss.unwrap() - want) / want).abs();
    let (short, _) = run(model, &r.get("short_ids").unwrap(), None, None);
    let se = rel_err(&format!("{what}: short logits"), &short, &f32s(r, "short_logits"));
    assert!(e <= tol, "{what}: logits (long factors) relative error {e:e} (tolerance {tol:e})");
    assert!(se <= tol, "{what}: logits (short factors) relative error {se:e} (tolerance {tol:e})");
    let loss_tol = if tol > LOGITS_TOL { tol } else { LOSS_TOL };
    assert!(le <= loss_tol, "{what}: loss {loss:?} vs {want} (rel {le:e}, tolerance {loss_tol:e})");
    [e, se, le]
}

#[test]
fn phi3_matches_transformers() {
    let model = Llama::load(&fixture("phi3"), false).unwrap();
    let c = &model.config;
    assert_eq!((c.rotary_dim, c.head_dim), (16, 16));
    let RopeKind::LongRope(l) = &c.rope else { panic!("{:?}", c.rope) };
    assert_eq!((l.short_factor.len(), l.original_max_position_embeddings), (8, 16));
    // transformers' default: √(1 + ln(max_position_embeddings / original) / ln(original)).
    let af = (1.0 + 4f64.ln() / 16f64.ln()).sqrt();
    assert!((l.attention_factor - af).abs() < 1e-12, "{}", l.attention_factor);
    assert!((c.rope_mscale() as f64 - af).abs() < 1e-6 && c.attention_scale() == 0.25);
    let [e, se, le] = against_transformers("phi3", &model, &reference("phi3"), LOGITS_TOL);
    eprintln!("phi3: logits rel {e:.2e} (long factors), {se:.2e} (short), loss rel {le:.2e}");
    // The config kiln writes reads back to the same settings.
    let back = ModelConfig::from_json(&c.to_hf_json(), Path::new("x/config.json")).unwrap();
    assert_eq!((back.rope.clone(), back.rotary_dim), (c.rope.clone(), c.rotary_dim));
}

/// Phi-3's `sliding_window` (transformers masks it as Mistral's): window 8 on rows of 24
/// against transformers' logits (tools/make_phi3_fixtures.py), in one pass and decoded token by
/// token past the window; without the window the logits are off.
#[test]
fn phi3_sliding_window_matches_transformers() {
    let r = reference("phi3");
    let want = f32s(&WeightStore::open(&fixture("phi3/window.safetensors")).unwrap(), "logits");
    let mut cfg = ModelConfig::load(&fixture("phi3")).unwrap();
    cfg.sliding_window = Some(8);
    assert_eq!((cfg.applies_window(), cfg.layer_window(1)), (true, Some(8)));
    let store = WeightStore::open(&fixture("phi3")).unwrap();
    let model = Llama::from_source(cfg, &store, false).unwrap();
    let ids = r.get("input_ids").unwrap();
    let e = rel_err("phi3 window 8", &run(&model, &ids, None, None).0, &want);
    assert!(e <= LOGITS_TOL, "phi3 window 8: logits relative error {e:e}");
    // Row 0 through the KV cache: 17 tokens at once (past the original 16, so the long factors
    // apply from the start, as in the one-pass reference), then token by token, each step
    // attending to its window of 8.
    let row: Vec<i32> = ids.as_slice::<i32>().unwrap()[..24].to_vec();
    let mut cache = KvCache::new(&model);
    let mut decoded = model.forward_cached(&row[..17], &mut cache, None).unwrap();
    for &id in &row[17..] {
        decoded.extend(model.forward_cached(&[id], &mut cache, None).unwrap());
    }
    // forward_cached gives the last token's logits: positions 16 to 23.
    let v = want.len() / 48;
    let de = rel_err("phi3 window 8 decoded", &decoded, &want[16 * v..24 * v]);
    assert!(de <= LOGITS_TOL, "phi3 window 8 decoded: relative error {de:e}");
    let plain = Llama::load(&fixture("phi3"), false).unwrap();
    let off = rel_err("phi3 without the window", &run(&plain, &ids, None, None).0, &want);
    assert!(off > 100.0 * LOGITS_TOL, "ignoring the window still matches ({off:e})");
    eprintln!("phi3 window 8: logits rel {e:.2e}, decoded {de:.2e}; without the window {off:.2e}");
}

/// The memory plan's trainable count equals the adapter's: q/k/v (gate/up) share one A.
#[test]
fn plan_counts_the_shared_lora_a_once() {
    let cfg = ModelConfig::load(&fixture("phi3")).unwrap();
    let tc = kiln::train::config::TrainConfig::default();
    let lc =
        LoraConfig { r: tc.lora_r, alpha: tc.lora_alpha, rslora: false, targets: tc.targets().unwrap(), dropout: 0.0 };
    let set = LoraSet::new(&cfg, lc, 0).unwrap();
    let planned = kiln::train::plan::trainable(&tc, &cfg).unwrap();
    assert_eq!(planned, set.num_params() as u64, "plan vs the adapter's tensors");
}

#[test]
fn broken_variants_do_not_match() {
    let r = reference("phi3");
    let ids = r.get("input_ids").unwrap();
    let want = f32s(&r, "logits");
    // Short factors where the long ones apply.
    let mut cfg = ModelConfig::load(&fixture("phi3")).unwrap();
    if let RopeKind::LongRope(l) = &mut cfg.rope {
        l.long_factor = l.short_factor.clone();
    }
    let store = WeightStore::open(&fixture("phi3")).unwrap();
    let m = Llama::from_source(cfg, &store, false).unwrap();
    let e = rel_err("short factors", &run(&m, &ids, None, None).0, &want);
    assert!(e > 100.0 * LOGITS_TOL, "short factors on long rows still match ({e:e})");
    // gate and up halves of gate_up_proj swapped.
    let dir = tmp("swapped");
    let mut tensors = Vec::new();
    for n in store.names() {
        let t = store.get(&n).unwrap();
        let t = if n.ends_with("gate_up_proj.weight") {
            let half = t.dims()[0] / 2;
            let (g, u) = (t.narrow0(0, half).unwrap().to_vec_f32().unwrap(), t.narrow0(half, half).unwrap());
            let mut v = u.to_vec_f32().unwrap();
            v.extend(g);
            Tensor::from_vec(v, t.dims().to_vec()).unwrap()
        } else {
            t
        };
        tensors.push((n, t));
    }
    kiln::formats::write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    std::fs::copy(fixture("phi3/config.json"), dir.join("config.json")).unwrap();
    let m = Llama::load(&dir, false).unwrap();
    let e2 = rel_err("gate/up swapped", &run(&m, &ids, None, None).0, &want);
    assert!(e2 > 100.0 * LOGITS_TOL, "gate/up swapped still matches ({e2:e})");
    eprintln!("broken: short factors rel {e:.2e}, gate/up swapped rel {e2:.2e}");
}

/// Gradient of every LoRA tensor against PEFT's (fused names): A once per fused matrix, B the
/// parts' blocks joined; returns the worst relative error and the count compared.
fn fused_grads(lora: &LoraSet, grads: &kiln::core::Grads, want: &WeightStore, layers: usize) -> (f64, usize) {
    let (mut worst, mut n) = (0.0f64, 0);
    for i in 0..layers {
        for (module, parts) in [
            ("self_attn.qkv_proj", &[Target::Q, Target::K, Target::V][..]),
            ("self_attn.o_proj", &[Target::O][..]),
            ("mlp.gate_up_proj", &[Target::Gate, Target::Up][..]),
            ("mlp.down_proj", &[Target::Down][..]),
        ] {
            let m = format!("model.layers.{i}.{module}");
            let loras: Vec<_> = parts.iter().map(|&t| lora.get(i, t).unwrap()).collect();
            // One A variable for the whole fused matrix.
            assert!(loras.iter().all(|l| l.a.id() == loras[0].a.id()), "{m}: parts do not share A");
            let ga = grads.get(&loras[0].a).unwrap().to_vec_f32().unwrap();
            let gb: Vec<f32> = loras.iter().flat_map(|l| grads.get(&l.b).unwrap().to_vec_f32().unwrap()).collect();
            for (which, got) in [("A", ga), ("B", gb)] {
                let e = rel_err(&format!("grad {which} {m}"), &got, &f32s(want, &format!("grad_{which}.{m}")));
                assert!(e <= LORA_GRAD_TOL, "gradient of {m} lora_{which}: relative error {e:e}");
                worst = worst.max(e);
                n += 1;
            }
        }
    }
    (worst, n)
}

#[test]
fn peft_lora_on_fused_matrices() {
    let model = Llama::load(&fixture("phi3"), false).unwrap();
    let adapter = fixture("phi3/adapter");
    let lora = LoraSet::load_peft(&adapter, &model.config).unwrap();
    let want = WeightStore::open(&fixture("phi3/lora.safetensors")).unwrap();
    let r = reference("phi3");
    let (ids, labels) = (r.get("input_ids").unwrap(), r.get("labels").unwrap());
    let (logits, loss) = run(&model, &ids, Some(&labels), Some(&lora));
    let e = rel_err("lora logits", &logits, &f32s(&want, "lora_logits"));
    let wl = want.get("lora_loss").unwrap().item().unwrap();
    let le = ((loss.unwrap() - wl) / wl).abs();
    assert!(e <= LOGITS_TOL && le <= LOSS_TOL, "LoRA logits rel {e:e}, loss rel {le:e}");
    // Gradients of the loss.
    let (b, t) = (ids.dims()[0], ids.dims()[1]);
    let pos = default_positions(b, t).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let targets = Tensor::from_vec(shift_targets(labels.as_slice::<i32>().unwrap(), b, t, None), [b, t]).unwrap();
    let tape = Tape::new();
    let ce = model.loss(&tape, &inp, &targets, Some(&lora), false).unwrap();
    let grads = tape.backward(&ce.loss).unwrap();
    let (worst, n) = fused_grads(&lora, &grads, &want, model.config.num_layers);
    assert_eq!(n, want.names().iter().filter(|k| k.starts_with("grad_")).count(), "gradients compared");
    // The optimizer sees each fused A once: 4 A and 7 B blocks per layer.
    assert_eq!(lora.named_params().len(), 11 * model.config.num_layers);
    eprintln!("phi3 LoRA: logits rel {e:.2e}, loss rel {le:.2e}, worst of {n} gradients rel {worst:.2e}");

    // Saved again: PEFT's own names, shapes and values, and its target_modules.
    let out = tmp("saved");
    lora.save_peft(&out, "phi3", 0.0, &[]).unwrap();
    let peft = WeightStore::open(&adapter.join("adapter_model.safetensors")).unwrap();
    let ours = WeightStore::open(&out.join("adapter_model.safetensors")).unwrap();
    let (mut a, mut b) = (peft.names(), ours.names());
    a.sort();
    b.sort();
    assert_eq!(a, b, "tensor names of the saved adapter");
    for n in &a {
        assert_eq!(f32s(&peft, n), f32s(&ours, n), "{n}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    let mut mods: Vec<&str> = cfg["target_modules"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    mods.sort();
    assert_eq!(mods, ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]);
}

#[test]
fn lora_training_lowers_held_out_loss() {
    let model = Llama::load(&fixture("phi3"), false).unwrap();
    let targets: Vec<Target> = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
        .iter()
        .flat_map(|m| Target::parse_group(m).unwrap())
        .collect();
    let cfg = LoraConfig { r: 4, alpha: 8.0, rslora: false, targets, dropout: 0.0 };
    let mut lora = LoraSet::new(&model.config, cfg, 1).unwrap();
    // A repeating sequence: what the first half teaches predicts the held-out second half.
    let seq: Vec<i32> = (0..48).map(|i| i * 7 % 13 + 5).collect();
    let rows = |s: &[i32]| Tensor::from_vec(s.to_vec(), [1, s.len()]).unwrap();
    let (train, held) = (rows(&seq[..24]), rows(&seq[24..]));
    let loss_of = |lora: &LoraSet, ids: &Tensor, tape: &Tape| {
        let t = ids.dims()[1];
        let pos = default_positions(1, t).unwrap();
        let inp = Inputs { ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
        let tg = Tensor::from_vec(shift_targets(ids.as_slice::<i32>().unwrap(), 1, t, None), [1, t]).unwrap();
        model.loss(tape, &inp, &tg, Some(lora), false).unwrap().loss
    };
    let before = loss_of(&lora, &held, &Tape::no_grad()).value().item().unwrap();
    let mut opt = kiln::train::AdamW::new(2e-2);
    for _ in 0..8 {
        let tape = Tape::new();
        let l = loss_of(&lora, &train, &tape);
        let grads = tape.backward(&l).unwrap();
        opt.step(lora.params_mut(), &grads, None).unwrap();
    }
    let after = loss_of(&lora, &held, &Tape::no_grad()).value().item().unwrap();
    // The shared A was trained and reaches k and v.
    let (q, k) = (lora.get(0, Target::Q).unwrap(), lora.get(0, Target::K).unwrap());
    assert_eq!(q.a.value().to_vec_f32().unwrap(), k.a.value().to_vec_f32().unwrap());
    eprintln!("phi3 LoRA training: held-out loss {before:.4} → {after:.4}");
    assert!(after < before - 0.1, "held-out loss {before} → {after}");
}

#[test]
fn merged_export_is_fused_and_reads_back() {
    let model = Llama::load(&fixture("phi3"), false).unwrap();
    let lora = LoraSet::load_peft(&fixture("phi3/adapter"), &model.config).unwrap();
    let out = tmp("merged");
    kiln::export::merged::export_merged(&model, Some(&lora), None, kiln::core::DType::F32, &out).unwrap();
    let st = WeightStore::open(&out).unwrap();
    let names = st.names();
    assert!(names.iter().any(|n| n == "model.layers.0.self_attn.qkv_proj.weight"), "{names:?}");
    assert!(names.iter().any(|n| n == "model.layers.1.mlp.gate_up_proj.weight"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("q_proj") || n.contains(".up_proj")), "{names:?}");
    assert_eq!(st.get("model.layers.0.self_attn.qkv_proj.weight").unwrap().dims(), [64, 32]);
    // The merged folder gives the adapter's logits.
    let merged = Llama::load(&out, false).unwrap();
    let want = WeightStore::open(&fixture("phi3/lora.safetensors")).unwrap();
    let r = reference("phi3");
    let e = rel_err("merged", &run(&merged, &r.get("input_ids").unwrap(), None, None).0, &f32s(&want, "lora_logits"));
    assert!(e <= LOGITS_TOL, "merged export: logits rel {e:e}");
    eprintln!("merged export: logits rel {e:.2e}");
}

#[test]
fn gguf_from_llama_cpp_converter_matches_transformers() {
    let model = Llama::load(&fixture("phi3.gguf"), false).unwrap();
    let c = &model.config;
    assert!(matches!(&c.rope, RopeKind::LongRope(l) if l.original_max_position_embeddings == 16));
    let [e, se, le] = against_transformers("phi3.gguf", &model, &reference("phi3"), GGUF_TOL);
    eprintln!("phi3.gguf: logits rel {e:.2e} (long), {se:.2e} (short), loss rel {le:.2e}");
}

fn config_err(edit: impl Fn(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("phi3/config.json")).unwrap()).unwrap();
    edit(&mut v);
    ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap_err().to_string()
}

#[test]
fn bad_input_is_refused_naming_file_and_field() {
    let e = config_err(|v| {
        v["rope_parameters"]["long_factor"].as_array_mut().unwrap().pop();
    });
    assert!(
        e.contains("rope_parameters.long_factor") && e.contains("m/config.json") && e.contains("expected 8"),
        "{e}"
    );
    let e = config_err(|v| v["rope_parameters"]["short_factor"][2] = (-1.0).into());
    assert!(e.contains("rope_parameters.short_factor") && e.contains("entry 2"), "{e}");
    // 16 · 0.7 = 11 rotary dims: odd.
    let e = config_err(|v| v["rope_parameters"]["partial_rotary_factor"] = 0.7.into());
    assert!(e.contains("partial_rotary_factor") && e.contains("11") && e.contains("m/config.json"), "{e}");
    // A fused weight with rows missing.
    let dir = tmp("short-qkv");
    let store = WeightStore::open(&fixture("phi3")).unwrap();
    let tensors: Vec<(String, Tensor)> = store
        .names()
        .into_iter()
        .map(|n| {
            let t = store.get(&n).unwrap();
            let t = if n == "model.layers.1.self_attn.qkv_proj.weight" { t.narrow0(0, 48).unwrap() } else { t };
            (n, t)
        })
        .collect();
    kiln::formats::write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    std::fs::copy(fixture("phi3/config.json"), dir.join("config.json")).unwrap();
    let e = Llama::load(&dir, false).err().unwrap().to_string();
    assert!(e.contains("model.layers.1.self_attn.qkv_proj.weight") && e.contains("model.safetensors"), "{e}");
    // LoRA on part of a fused matrix.
    let cfg = ModelConfig::load(&fixture("phi3")).unwrap();
    let lc = LoraConfig { r: 4, alpha: 8.0, rslora: false, targets: vec![Target::Q], dropout: 0.0 };
    let e = LoraSet::new(&cfg, lc, 0).unwrap_err().to_string();
    assert!(e.contains("qkv_proj"), "{e}");
}

#[test]
fn phi4_mini_partial_rotary_matches_transformers() {
    // partial_rotary_factor 0.75 of head_dim 16: 12 dims rotate, 4 pass through; tied head.
    // LongRoPE's attention factor scales cos and sin, so only the rotated dims: folded into the
    // softmax scale it would scale the pass-through dims' scores too.
    let model = Llama::load(&fixture("phi4-mini"), false).unwrap();
    let c = &model.config;
    assert_eq!((c.rotary_dim, c.head_dim, c.tie_word_embeddings), (12, 16, true));
    let RopeKind::LongRope(l) = &c.rope else { panic!("{:?}", c.rope) };
    assert_eq!(l.short_factor.len(), 6);
    let r = reference("phi4-mini");
    let [e, se, le] = against_transformers("phi4-mini", &model, &r, LOGITS_TOL);
    eprintln!("phi4-mini: logits rel {e:.2e} (long factors), {se:.2e} (short), loss rel {le:.2e}");
    // Without the factor (1.5 here) the rotated scores are off: the test can fail.
    let mut cfg = c.clone();
    if let RopeKind::LongRope(l) = &mut cfg.rope {
        l.attention_factor = 1.0;
    }
    let m = Llama::from_source(cfg, &WeightStore::open(&fixture("phi4-mini")).unwrap(), false).unwrap();
    let e2 = rel_err("no attention factor", &run(&m, &r.get("input_ids").unwrap(), None, None).0, &f32s(&r, "logits"));
    assert!(e2 > 100.0 * LOGITS_TOL, "phi4-mini without the attention factor still matches ({e2:e})");
    eprintln!("phi4-mini without LongRoPE's attention factor: logits rel {e2:.2e}");
    // The config kiln writes keeps the factor.
    let back = ModelConfig::from_json(&c.to_hf_json(), Path::new("x/config.json")).unwrap();
    assert_eq!((back.rope.clone(), back.rotary_dim), (c.rope.clone(), c.rotary_dim));
}
