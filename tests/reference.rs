//! The CPU model against PyTorch/transformers/PEFT fixtures (written by tools/make_fixtures.py):
//! logits, loss and LoRA gradients of tiny random Llama, Mistral, Qwen2 and Qwen3 models.

use std::path::PathBuf;

use kiln::adapters::{LoraConfig, LoraSet, Target};
use kiln::core::{Tape, Tensor};
use kiln::data::batch::shift_targets;
use kiln::formats::WeightStore;
use kiln::model::{Inputs, Llama, default_positions};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    assert!(a.iter().all(|x| x.is_finite()), "NaN/inf in kiln output");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

struct Reference {
    ids: Tensor,
    labels: Vec<i32>,
    store: WeightStore,
}

fn load(name: &str) -> (Llama, LoraSet, Reference) {
    let dir = fixture(name);
    let model = Llama::load(&dir, false).unwrap();
    let store = WeightStore::open(&dir.join("reference.safetensors")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
    let cfg = LoraConfig {
        r: meta["lora_r"].as_u64().unwrap() as usize,
        alpha: meta["lora_alpha"].as_f64().unwrap(),
        rslora: false,
        targets: Target::ALL.to_vec(),
        dropout: 0.0,
    };
    let mut lora = LoraSet::new(&model.config, cfg, 0).unwrap();
    for l in 0..model.config.num_layers {
        for t in Target::ALL {
            let m = format!("model.layers.{l}.{}", t.module());
            lora.set(l, t, store.get(&format!("lora_A.{m}")).unwrap(), store.get(&format!("lora_B.{m}")).unwrap())
                .unwrap();
        }
    }
    let ids = store.get("input_ids").unwrap();
    let labels = store.get("labels").unwrap().as_slice::<i32>().unwrap().to_vec();
    (model, lora, Reference { ids, labels, store })
}

fn check(name: &str, checkpoint: bool) {
    let (model, lora, r) = load(name);
    let (b, t) = (r.ids.dims()[0], r.ids.dims()[1]);
    let pos = default_positions(b, t).unwrap();
    let inp = Inputs { ids: &r.ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let targets = Tensor::from_vec(shift_targets(&r.labels, b, t, None), [b, t]).unwrap();

    let tape = Tape::new();
    let logits = model.forward(&tape, &inp, Some(&lora), checkpoint).unwrap();
    let want = r.store.get("logits").unwrap().to_vec_f32().unwrap();
    let e = rel_err(&logits.value().to_vec_f32().unwrap(), &want);
    assert!(e <= 1e-4, "{name}: logits relative error {e:e}");

    let ce = kiln::core::ops::cross_entropy(&tape, &logits, &targets).unwrap();
    let loss = ce.loss.value().item().unwrap();
    let want_loss = r.store.get("loss").unwrap().item().unwrap();
    let le = ((loss - want_loss) / want_loss).abs();
    assert!(le <= 1e-5, "{name}: loss {loss} vs {want_loss} (rel {le:e})");

    let grads = tape.backward(&ce.loss).unwrap();
    let mut worst = 0.0f64;
    for (pname, var) in lora.named_params() {
        // model.layers.0.self_attn.q_proj.lora_A.weight → grad_A.model.layers.0.self_attn.q_proj
        let (m, rest) = pname.split_once(".lora_").unwrap();
        let key = format!("grad_{}.{m}", &rest[..1]);
        let want = r.store.get(&key).unwrap().to_vec_f32().unwrap();
        let got = grads.get(var).unwrap_or_else(|| panic!("{name}: no gradient for {pname}")).to_vec_f32().unwrap();
        let e = rel_err(&got, &want);
        assert!(e <= 1e-3, "{name}: gradient of {pname} relative error {e:e}");
        worst = worst.max(e);
    }
    // Frozen base weights never get gradients.
    for (wname, var) in model.named_weights() {
        assert!(grads.get(var).is_none(), "{name}: frozen {wname} got a gradient");
    }
    eprintln!(
        "{name} (checkpoint={checkpoint}): logits rel {e:.2e}, loss rel {le:.2e}, worst LoRA grad rel {worst:.2e}"
    );
}

#[test]
fn tiny_llama_matches_pytorch() {
    check("tiny-llama", false);
}

#[test]
fn tiny_mistral_matches_pytorch() {
    check("tiny-mistral", false);
}

#[test]
fn tiny_qwen2_matches_pytorch() {
    check("tiny-qwen2", false);
}

#[test]
fn tiny_qwen3_matches_pytorch() {
    check("tiny-qwen3", false);
}

#[test]
fn gradient_checkpointing_matches_pytorch() {
    check("tiny-llama", true);
}

#[test]
fn frozen_weights_stay_in_the_memory_map() {
    let (model, _, _) = load("tiny-qwen3");
    for (name, v) in model.named_weights() {
        assert!(v.value().is_mapped(), "{name} was copied out of the map");
    }
}

#[test]
fn adamw_trajectory_matches_pytorch() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let (model, mut lora, r) = load(name);
        let (b, t) = (r.ids.dims()[0], r.ids.dims()[1]);
        let pos = default_positions(b, t).unwrap();
        let inp = Inputs { ids: &r.ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
        let targets = Tensor::from_vec(shift_targets(&r.labels, b, t, None), [b, t]).unwrap();
        let want = r.store.get("adamw_losses").unwrap().to_vec_f32().unwrap();
        let mut opt = kiln::train::AdamW::new(1e-2);
        let tape = Tape::new();
        let ce = model.loss(&tape, &inp, &targets, Some(&lora), false).unwrap();
        let mut grads = tape.backward(&ce.loss).unwrap();
        for (i, w) in want.iter().enumerate() {
            opt.step(lora.params_mut(), &grads, None).unwrap();
            let tape = Tape::new();
            let ce = model.loss(&tape, &inp, &targets, Some(&lora), false).unwrap();
            let got = ce.loss.value().item().unwrap();
            let rel = ((got - *w as f64) / *w as f64).abs();
            assert!(rel <= 1e-4, "{name}: loss after AdamW step {} is {got}, PyTorch {w} (rel {rel:e})", i + 1);
            grads = tape.backward(&ce.loss).unwrap();
        }
    }
}

#[test]
fn packed_rows_give_the_logits_of_separate_rows() {
    let (model, lora, r) = load("tiny-qwen3");
    let ids = r.ids.as_slice::<i32>().unwrap();
    let t = r.ids.dims()[1];
    // Pack row 0 (first 7 tokens) and row 1 (all tokens) into one sequence.
    let (la, lb) = (7, t);
    let mut packed: Vec<i32> = ids[..la].to_vec();
    packed.extend_from_slice(&ids[t..t + lb]);
    let pos: Vec<i32> = (0..la as i32).chain(0..lb as i32).collect();
    let seg: Vec<i32> = std::iter::repeat_n(0, la).chain(std::iter::repeat_n(1, lb)).collect();
    let n = la + lb;
    let (pi, pp, ps) = (
        Tensor::from_vec(packed, [1, n]).unwrap(),
        Tensor::from_vec(pos, [1, n]).unwrap(),
        Tensor::from_vec(seg, [1, n]).unwrap(),
    );
    let tape = Tape::no_grad();
    let got = model
        .forward(
            &tape,
            &Inputs { ids: &pi, pos: &pp, seg: Some(&ps), shared_prefix: false, base_only: false },
            Some(&lora),
            false,
        )
        .unwrap()
        .value()
        .to_vec_f32()
        .unwrap();
    let v = model.config.vocab_size;
    for (row, off, len) in [(0usize, 0usize, la), (1, la, lb)] {
        let one = Tensor::from_vec(ids[row * t..row * t + len].to_vec(), [1, len]).unwrap();
        let pos = default_positions(1, len).unwrap();
        let want = model
            .forward(
                &tape,
                &Inputs { ids: &one, pos: &pos, seg: None, shared_prefix: false, base_only: false },
                Some(&lora),
                false,
            )
            .unwrap()
            .value()
            .to_vec_f32()
            .unwrap();
        let e = rel_err(&got[off * v..(off + len) * v], &want);
        assert!(e < 1e-6, "packed row {row}: relative error {e:e}");
    }
}
