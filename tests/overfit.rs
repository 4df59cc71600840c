//! LoRA + AdamW can memorize one fixture batch: the loss falls by ≥ 90 % within 100 steps.

use std::path::PathBuf;

use kiln::adapters::{LoraConfig, LoraSet};
use kiln::core::{Tape, Tensor};
use kiln::data::batch::shift_targets;
use kiln::formats::WeightStore;
use kiln::model::{Inputs, Llama, default_positions};
use kiln::train::AdamW;

#[test]
fn lora_overfits_one_batch() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen2");
    let model = Llama::load(&dir, false).unwrap();
    let r = WeightStore::open(&dir.join("reference.safetensors")).unwrap();
    let ids = r.get("input_ids").unwrap();
    let labels = r.get("labels").unwrap().as_slice::<i32>().unwrap().to_vec();
    let (b, t) = (ids.dims()[0], ids.dims()[1]);
    let pos = default_positions(b, t).unwrap();
    let targets = Tensor::from_vec(shift_targets(&labels, b, t, None), [b, t]).unwrap();
    let mut lora = LoraSet::new(&model.config, LoraConfig { r: 8, alpha: 16.0, ..Default::default() }, 42).unwrap();
    let mut opt = AdamW::new(1e-2);
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let mut losses = Vec::new();
    for step in 0..100 {
        let tape = Tape::new();
        let ce = model.loss(&tape, &inp, &targets, Some(&lora), step % 2 == 1).unwrap();
        let loss = ce.loss.value().item().unwrap();
        assert!(loss.is_finite(), "step {step}: loss {loss}");
        losses.push(loss);
        let grads = tape.backward(&ce.loss).unwrap();
        opt.step(lora.params_mut(), &grads, Some(1.0)).unwrap();
        if loss < 0.1 * losses[0] {
            break;
        }
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("overfit: loss {first:.4} → {last:.4} in {} steps", losses.len());
    assert!(last <= 0.1 * first, "loss only fell from {first} to {last} in 100 steps");
}
