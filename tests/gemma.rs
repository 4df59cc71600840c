//! Gemma 3 and Gemma 2 against transformers, PEFT and llama.cpp's converter (fixtures by
//! tools/make_gemma_fixtures.py): logits, loss and LoRA gradients of tiny random models from
//! their safetensors folders and from the GGUF files the converter wrote; a loader that forgets
//! Gemma's `1 + w` norms fails; LoRA training lowers a held-out loss; the adapter carries PEFT's
//! names; merged and GGUF exports read back with the norms stored as each format stores them;
//! a vision-language checkpoint's language model loads; bad Gemma config fields are named.
//!
//! Tolerances as tests/reference.rs for the folders (logits 1e-5, loss 2e-6, LoRA gradients
//! 3e-5, relative), 1e-4 for the GGUF files; measured figures are printed with `--nocapture`.

use std::path::{Path, PathBuf};

use kiln::adapters::{LoraConfig, LoraSet, Target};
use kiln::core::{Tape, Tensor};
use kiln::data::batch::shift_targets;
use kiln::formats::WeightStore;
use kiln::model::{Arch, Inputs, Llama, ModelConfig, RopeKind, default_positions};

#[path = "common/compare.rs"]
mod compare;
use compare::{f32s, rel_err};

const LOGITS_TOL: f64 = 1e-5;
const LOSS_TOL: f64 = 2e-6;
const LORA_GRAD_TOL: f64 = 3e-5;
const GGUF_TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    compare::fixture_in("gemma", name)
}

fn tmp(name: &str) -> PathBuf {
    compare::fresh_dir("gemma", name)
}

/// The fixture's PEFT LoRA (A and B from `reference.safetensors`), one per layer and target.
fn lora_of(model: &Llama, family: &str) -> LoraSet {
    let r = WeightStore::open(&fixture(family).join("reference.safetensors")).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, rslora: false, targets: Target::ALL.to_vec(), dropout: 0.0 };
    let mut lora = LoraSet::new(&model.config, cfg, 0).unwrap();
    let mut set = 0;
    for l in 0..model.config.num_layers {
        for t in Target::ALL {
            let m = format!("model.layers.{l}.{}", t.module());
            lora.set(l, t, r.get(&format!("lora_A.{m}")).unwrap(), r.get(&format!("lora_B.{m}")).unwrap()).unwrap();
            set += 1;
        }
    }
    assert_eq!(set, model.config.num_layers * Target::ALL.len());
    assert_eq!(r.names().iter().filter(|n| n.starts_with("lora_A.")).count(), set, "fixture lora_A count");
    lora
}

struct Run {
    logits: Vec<f32>,
    loss: f64,
    worst_grad: f64,
}

/// Logits, loss and (with `grads`) the LoRA gradients of `model` + `lora` on the rows of
/// `family/file`, against transformers' values there.
fn against(model: &Llama, lora: Option<&LoraSet>, family: &str, file: &str, grads: bool) -> Run {
    let r = WeightStore::open(&fixture(family).join(file)).unwrap();
    let ids = r.get("input_ids").unwrap();
    let (b, t) = (ids.dims()[0], ids.dims()[1]);
    let labels = r.get("labels").unwrap().as_slice::<i32>().unwrap().to_vec();
    let targets = Tensor::from_vec(shift_targets(&labels, b, t, None), [b, t]).unwrap();
    let pos = default_positions(b, t).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::new();
    let logits = model.forward(&tape, &inp, lora, false).unwrap().value().to_vec_f32().unwrap();
    let ce = model.loss(&tape, &inp, &targets, lora, false).unwrap();
    let loss = ce.loss.value().item().unwrap();
    let mut worst_grad = 0.0f64;
    if let Some(lora) = lora.filter(|_| grads) {
        let g = tape.backward(&ce.loss).unwrap();
        let mut n = 0;
        for (pname, var) in lora.named_params() {
            let (m, rest) = pname.split_once(".lora_").unwrap();
            let want = f32s(&r, &format!("grad_{}.{m}", &rest[..1]));
            let got = g.get(var).unwrap_or_else(|| panic!("no gradient for {pname}")).to_vec_f32().unwrap();
            let e = rel_err(&format!("{family}/{file}: gradient of {pname}"), &got, &want);
            assert!(e <= LORA_GRAD_TOL, "{family}/{file}: gradient of {pname} relative error {e:e}");
            worst_grad = worst_grad.max(e);
            n += 1;
        }
        assert_eq!(n, r.names().iter().filter(|k| k.starts_with("grad_")).count(), "gradients compared");
        for (w, var) in model.named_weights() {
            assert!(g.get(var).is_none(), "frozen {w} got a gradient");
        }
    }
    let want_loss = r.get("loss").unwrap().item().unwrap();
    Run { logits, loss: ((loss - want_loss) / want_loss).abs(), worst_grad }
}

fn want_logits(family: &str, file: &str) -> Vec<f32> {
    f32s(&WeightStore::open(&fixture(family).join(file)).unwrap(), "logits")
}

#[test]
fn gemma3_folder_matches_transformers() {
    let model = Llama::load(&fixture("gemma3"), false).unwrap();
    let c = &model.config;
    let g = c.gemma.as_ref().unwrap();
    assert_eq!(c.arch, Arch::Gemma3);
    assert_eq!(g.sliding, [true, true, true, true, true, false]);
    assert_eq!((g.sliding_window, g.local_rope_theta, c.rope_theta), (Some(8), 10_000.0, 1_000_000.0));
    assert_eq!(c.rope, RopeKind::Linear(2.0));
    let lora = lora_of(&model, "gemma3");
    let r = against(&model, Some(&lora), "gemma3", "short.safetensors", true);
    let e = rel_err("gemma3 logits", &r.logits, &want_logits("gemma3", "short.safetensors"));
    assert!(e <= LOGITS_TOL, "gemma3: logits relative error {e:e}");
    assert!(r.loss <= LOSS_TOL, "gemma3: loss relative error {:e}", r.loss);
    eprintln!(
        "gemma3 folder (rows of 8): logits rel {e:.2e}, loss rel {:.2e}, worst LoRA grad rel {:.2e}",
        r.loss, r.worst_grad
    );
}

#[test]
fn gemma3_gguf_matches_transformers() {
    let folder = Llama::load(&fixture("gemma3"), false).unwrap();
    let model = Llama::load(&fixture("gemma3/model.gguf"), false).unwrap();
    // The converter's keys give the folder's shape: layer pattern, windows, both RoPE bases,
    // the global layers' linear scaling, the attention scale.
    assert_eq!(model.config.gemma, folder.config.gemma);
    assert_eq!(
        (model.config.rope.clone(), model.config.rope_theta),
        (folder.config.rope.clone(), folder.config.rope_theta)
    );
    assert_eq!(model.config.attention_scale(), folder.config.attention_scale());
    let lora = lora_of(&model, "gemma3");
    let r = against(&model, Some(&lora), "gemma3", "short.safetensors", false);
    let e = rel_err("gemma3 GGUF logits", &r.logits, &want_logits("gemma3", "short.safetensors"));
    assert!(e <= GGUF_TOL && r.loss <= GGUF_TOL, "gemma3 GGUF: logits rel {e:e}, loss rel {:e}", r.loss);
    eprintln!("gemma3 GGUF (rows of 8): logits rel {e:.2e}, loss rel {:.2e}", r.loss);
}

/// A loader that reads Gemma's norm weights as Llama's (w, not 1 + w) gives other logits: the
/// comparison above would catch it.
#[test]
fn gemma3_norms_without_the_offset_fail() {
    let path = fixture("gemma3");
    let config = ModelConfig::load(&path).unwrap();
    let store = WeightStore::open(&path).unwrap();
    let broken = Llama::from_source(config, &store, false).unwrap();
    let lora = lora_of(&broken, "gemma3");
    let r = against(&broken, Some(&lora), "gemma3", "short.safetensors", false);
    let e = rel_err("broken logits", &r.logits, &want_logits("gemma3", "short.safetensors"));
    assert!(e > 100.0 * LOGITS_TOL, "norms read without 1 + w still match ({e:e})");
    eprintln!("gemma3 with w for 1 + w: logits rel {e:.2e} (fails, as it must)");
}

/// A Gemma 3 vision-language checkpoint (config with `text_config`, weights under
/// `language_model.model.*` beside a vision tower) loads its language model alone.
#[test]
fn gemma3_language_model_of_a_vision_language_checkpoint() {
    let dir = tmp("vlm");
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("gemma3/config.json")).unwrap()).unwrap();
    let cfg = serde_json::json!({"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
        "text_config": text, "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 8}});
    std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let store = WeightStore::open(&fixture("gemma3")).unwrap();
    let mut tensors: Vec<(String, Tensor)> = store
        .names()
        .into_iter()
        .map(|n| (format!("language_model.{n}"), store.get(&n).unwrap().to_cpu().unwrap()))
        .collect();
    tensors.push((
        "vision_tower.vision_model.post_layernorm.weight".into(),
        Tensor::from_vec(vec![1f32; 8], [8]).unwrap(),
    ));
    kiln::formats::write_safetensors(&dir.join("model.safetensors"), &tensors).unwrap();
    let model = Llama::load(&dir, false).unwrap();
    assert!(model.config.gemma.as_ref().unwrap().multimodal);
    let lora = lora_of(&model, "gemma3");
    let r = against(&model, Some(&lora), "gemma3", "short.safetensors", false);
    let e = rel_err("vision-language checkpoint logits", &r.logits, &want_logits("gemma3", "short.safetensors"));
    assert!(e <= LOGITS_TOL, "{e:e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A few AdamW steps of LoRA on a repeating token pattern lower the loss on another stretch of
/// the same pattern; the adapter is saved under PEFT's module names and loads back.
#[test]
fn gemma3_lora_training_lowers_held_out_loss() {
    let model = Llama::load(&fixture("gemma3"), false).unwrap();
    let cfg = LoraConfig { r: 4, alpha: 8.0, rslora: false, targets: Target::ALL.to_vec(), dropout: 0.0 };
    let mut lora = LoraSet::new(&model.config, cfg, 1).unwrap();
    // A cycle of four tokens: each position's next token is fixed, which a LoRA learns quickly.
    let row = |start: usize| -> Vec<i32> { (start..start + 8).map(|i| [10, 21, 37, 52][i % 4]).collect() };
    let batch = |starts: &[usize]| -> (Tensor, Tensor) {
        let ids: Vec<i32> = starts.iter().flat_map(|&s| row(s)).collect();
        let n = starts.len();
        let targets = shift_targets(&ids, n, 8, None);
        (Tensor::from_vec(ids, [n, 8]).unwrap(), Tensor::from_vec(targets, [n, 8]).unwrap())
    };
    let loss = |lora: &LoraSet, ids: &Tensor, targets: &Tensor| -> f64 {
        let pos = default_positions(ids.dims()[0], 8).unwrap();
        let inp = Inputs { ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
        model.loss(&Tape::no_grad(), &inp, targets, Some(lora), false).unwrap().loss.value().item().unwrap()
    };
    let (train_ids, train_t) = batch(&[0, 1, 2, 4]);
    let (held_ids, held_t) = batch(&[3, 7]);
    let before = loss(&lora, &held_ids, &held_t);
    let mut opt = kiln::train::AdamW::new(5e-2);
    for _ in 0..20 {
        let pos = default_positions(4, 8).unwrap();
        let inp = Inputs { ids: &train_ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
        let tape = Tape::new();
        let ce = model.loss(&tape, &inp, &train_t, Some(&lora), false).unwrap();
        let grads = tape.backward(&ce.loss).unwrap();
        opt.step(lora.params_mut(), &grads, None).unwrap();
    }
    let after = loss(&lora, &held_ids, &held_t);
    assert!(after < 0.8 * before, "held-out loss {before} → {after}");
    eprintln!("gemma3 LoRA: held-out loss {before:.4} → {after:.4}");

    let dir = tmp("adapter");
    lora.save_peft(&dir, "gemma3", 0.0, &[]).unwrap();
    let names = WeightStore::open(&dir.join("adapter_model.safetensors")).unwrap().names();
    for want in [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.5.mlp.down_proj.lora_B.weight",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let back = LoraSet::load_peft(&dir, &model.config).unwrap();
    assert!((loss(&back, &held_ids, &held_t) - after).abs() < 1e-9);
    std::fs::remove_dir_all(&dir).ok();
}

/// The merged export stores transformers' `w` (the fixture's own norm values) and reads back to
/// the adapted model's logits; the GGUF export stores `1 + w` (as the converter does) and reads
/// back likewise.
#[test]
fn gemma3_exports_read_back() {
    let model = Llama::load(&fixture("gemma3"), false).unwrap();
    let lora = lora_of(&model, "gemma3");
    let want = against(&model, Some(&lora), "gemma3", "short.safetensors", false).logits;
    let dir = tmp("merged");
    kiln::export::export_merged(&model, Some(&lora), None, kiln::core::DType::F32, &dir).unwrap();
    let written = WeightStore::open(&dir).unwrap();
    let source = WeightStore::open(&fixture("gemma3")).unwrap();
    let mut norms = 0;
    for n in source.names().into_iter().filter(|n| n.ends_with("norm.weight")) {
        // (1 + w) − 1 in f32 is w to within an ulp of 1.
        let e = rel_err(&n, &f32s(&written, &n), &f32s(&source, &n));
        assert!(e < 1e-6, "{n}: written norm differs from transformers' by {e:e}");
        norms += 1;
    }
    assert_eq!(norms, 6 * 6 + 1, "norms compared");
    let merged = Llama::load(&dir, false).unwrap();
    assert_eq!(merged.config.gemma, model.config.gemma);
    let got = against(&merged, None, "gemma3", "short.safetensors", false).logits;
    let e = rel_err("merged export", &got, &want);
    assert!(e <= 1e-5, "merged export logits rel {e:e}");

    let out = dir.join("model.gguf");
    let gguf_src = fixture("gemma3/model.gguf");
    let from_gguf = Llama::load(&gguf_src, false).unwrap();
    kiln::export::export_gguf(
        &from_gguf,
        Some(&lora),
        &gguf_src,
        kiln::export::quant_type("f32").unwrap(),
        false,
        &out,
    )
    .unwrap();
    let g = kiln::formats::gguf::GgufFile::open(&out).unwrap();
    let src = kiln::formats::gguf::GgufFile::open(&gguf_src).unwrap();
    let norm = |f: &kiln::formats::gguf::GgufFile, n: &str| -> Vec<f32> {
        bytemuck::pod_collect_to_vec::<u8, f32>(f.bytes(f.tensor(n).unwrap()))
    };
    assert_eq!(norm(&g, "blk.0.post_ffw_norm.weight"), norm(&src, "blk.0.post_ffw_norm.weight"));
    let again = Llama::load(&out, false).unwrap();
    let got = against(&again, None, "gemma3", "short.safetensors", false).logits;
    let e2 = rel_err("GGUF export", &got, &want);
    assert!(e2 <= GGUF_TOL, "GGUF export logits rel {e2:e}");
    eprintln!("gemma3 exports: merged rel {e:.2e}, GGUF rel {e2:.2e}");
    std::fs::remove_dir_all(&dir).ok();
}

fn gemma3_json() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("gemma3/config.json")).unwrap()).unwrap()
}

/// The older spellings (`sliding_window_pattern`, top-level `rope_theta`,
/// `rope_local_base_freq`, `rope_scaling`) mean what transformers makes of them.
#[test]
fn gemma3_older_config_spellings() {
    let new = ModelConfig::load(&fixture("gemma3")).unwrap();
    let mut v = gemma3_json();
    let o = v.as_object_mut().unwrap();
    o.remove("layer_types");
    o.remove("rope_parameters");
    o.insert("sliding_window_pattern".into(), 6.into());
    o.insert("rope_theta".into(), 1_000_000.0.into());
    o.insert("rope_local_base_freq".into(), 10_000.0.into());
    o.insert("rope_scaling".into(), serde_json::json!({"rope_type": "linear", "factor": 2.0}));
    let old = ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap();
    assert_eq!(old.gemma, new.gemma);
    assert_eq!((old.rope, old.rope_theta), (new.rope.clone(), new.rope_theta));
    // Class defaults: no pattern means every sixth layer global; no sliding RoPE base means 10 000.
    o_remove(&mut v, "sliding_window_pattern");
    o_remove(&mut v, "rope_local_base_freq");
    let d = ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap();
    assert_eq!(d.gemma.as_ref().unwrap().sliding, new.gemma.as_ref().unwrap().sliding);
    assert_eq!(d.gemma.as_ref().unwrap().local_rope_theta, 10_000.0);
    // The config kiln writes reads back the same; query_pre_attn_scalar stays an integer
    // (transformers' strict config classes refuse 16.0).
    let out = new.to_hf_json();
    assert!(out["query_pre_attn_scalar"].is_u64(), "{}", out["query_pre_attn_scalar"]);
    let back = ModelConfig::from_json(&out, Path::new("x/config.json")).unwrap();
    assert_eq!((back.gemma, back.rope), (new.gemma, new.rope));
}

fn o_remove(v: &mut serde_json::Value, k: &str) {
    v.as_object_mut().unwrap().remove(k);
}

#[test]
fn bad_gemma_config_fields_are_named() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "layer_types",
            serde_json::json!(["sliding_attention", "full_attention"]),
            "has 2 entries, but num_hidden_layers is 6",
        ),
        (
            "layer_types",
            serde_json::json!([
                "sliding_attention",
                "local",
                "sliding_attention",
                "sliding_attention",
                "sliding_attention",
                "full_attention"
            ]),
            "layer_types[1]",
        ),
        ("query_pre_attn_scalar", serde_json::json!(0), "query_pre_attn_scalar"),
        ("query_pre_attn_scalar", serde_json::json!(-8.0), "positive"),
        ("sliding_window", serde_json::json!(0), "sliding_window"),
        ("hidden_activation", serde_json::json!("gelu"), "hidden_activation"),
        ("final_logit_softcapping", serde_json::json!(-1.0), "final_logit_softcapping"),
        ("use_bidirectional_attention", serde_json::json!(true), "use_bidirectional_attention"),
        (
            "rope_parameters",
            serde_json::json!({"full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "linear", "factor": 0.0, "rope_theta": 1e4}}),
            "rope_parameters.sliding_attention.factor",
        ),
    ];
    for (k, x, want) in cases {
        let mut v = gemma3_json();
        v[k] = x.clone();
        let e = ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("m/config.json"), "{k} = {x}: {e}");
    }
    let mut v = gemma3_json();
    v.as_object_mut().unwrap().remove("layer_types");
    v["sliding_window_pattern"] = serde_json::json!(0);
    let e = ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap_err().to_string();
    assert!(e.contains("sliding_window_pattern"), "{e}");
    let e = ModelConfig::from_json(&serde_json::json!({"model_type": "gemma3"}), Path::new("m/config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("text_config") && e.contains("m/config.json"), "{e}");
}

/// Rows of 24 tokens: keys fall out of the sliding layers' window of 8.
#[test]
fn gemma3_long_rows_match_transformers() {
    for file in ["gemma3", "gemma3/model.gguf"] {
        let model = Llama::load(&fixture(file), false).unwrap();
        let lora = lora_of(&model, "gemma3");
        let gguf = file.ends_with(".gguf");
        let r = against(&model, Some(&lora), "gemma3", "reference.safetensors", !gguf);
        let e = rel_err("gemma3 long logits", &r.logits, &want_logits("gemma3", "reference.safetensors"));
        let (lt, st) = if gguf { (GGUF_TOL, GGUF_TOL) } else { (LOGITS_TOL, LOSS_TOL) };
        assert!(e <= lt && r.loss <= st, "{file}: logits rel {e:e}, loss rel {:e}", r.loss);
        eprintln!(
            "{file} (rows of 24): logits rel {e:.2e}, loss rel {:.2e}, worst LoRA grad rel {:.2e}",
            r.loss, r.worst_grad
        );
    }
}

/// Gemma 2: attention and final-logit soft-caps, alternating sliding and global layers, one
/// RoPE base; from the folder (with LoRA gradients) and from the converter's GGUF.
#[test]
fn gemma2_matches_transformers() {
    let folder = Llama::load(&fixture("gemma2"), false).unwrap();
    let g = folder.config.gemma.clone().unwrap();
    assert_eq!(folder.config.arch, Arch::Gemma2);
    assert_eq!((g.attn_softcap, g.final_softcap, g.sliding_window), (Some(3.0), Some(5.0), Some(8)));
    assert_eq!(g.sliding, [true, false, true, false]);
    let model = Llama::load(&fixture("gemma2/model.gguf"), false).unwrap();
    assert_eq!(model.config.gemma, folder.config.gemma);
    for (m, gguf) in [(&folder, false), (&model, true)] {
        let lora = lora_of(m, "gemma2");
        for file in ["short.safetensors", "reference.safetensors"] {
            let r = against(m, Some(&lora), "gemma2", file, !gguf);
            let e = rel_err("gemma2 logits", &r.logits, &want_logits("gemma2", file));
            let (lt, st) = if gguf { (GGUF_TOL, GGUF_TOL) } else { (LOGITS_TOL, LOSS_TOL) };
            assert!(e <= lt && r.loss <= st, "gemma2 {file} (gguf {gguf}): logits rel {e:e}, loss rel {:e}", r.loss);
            eprintln!(
                "gemma2 {file} (gguf {gguf}): logits rel {e:.2e}, loss rel {:.2e}, worst LoRA grad rel {:.2e}",
                r.loss, r.worst_grad
            );
        }
    }
}
