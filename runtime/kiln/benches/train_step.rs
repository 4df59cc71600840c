//! One LoRA training step (forward, backward, AdamW) of a small random Llama on the CPU:
//! 4 layers, hidden 256, batch 4 × 128 tokens. Throughput is in tokens.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln::adapters::{LoraConfig, LoraSet};
use kiln::core::{Tape, Tensor};
use kiln::data::batch::shift_targets;
use kiln::model::init::{TinySpec, create_random_llama};
use kiln::model::{Inputs, Llama, default_positions};
use kiln::train::AdamW;

fn step(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("kiln-bench-step-{}", std::process::id()));
    let spec = TinySpec {
        vocab_size: 2048,
        hidden_size: 256,
        intermediate_size: 704,
        num_layers: 4,
        num_heads: 8,
        num_kv_heads: 2,
        init_std: 0.05,
    };
    create_random_llama(&dir, &spec, 0).unwrap();
    let model = Llama::load(&dir, false).unwrap();
    let (b, t) = (4, 128);
    let ids: Vec<i32> = (0..b * t).map(|i| ((i * 7919) % 2048) as i32).collect();
    let targets = Tensor::from_vec(shift_targets(&ids, b, t, None), [b, t]).unwrap();
    let ids = Tensor::from_vec(ids, [b, t]).unwrap();
    let pos = default_positions(b, t).unwrap();
    let mut lora = LoraSet::new(&model.config, LoraConfig::default(), 1).unwrap();
    let mut opt = AdamW::new(1e-3);
    let mut g = c.benchmark_group("train_step_cpu");
    g.sample_size(10);
    g.throughput(Throughput::Elements((b * t) as u64));
    for ckpt in [false, true] {
        g.bench_function(format!("lora_r8_4x256_b4x128_checkpoint={ckpt}"), |bench| {
            bench.iter(|| {
                let tape = Tape::new();
                let ce = model
                    .loss(
                        &tape,
                        &Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false },
                        &targets,
                        Some(&lora),
                        ckpt,
                    )
                    .unwrap();
                let grads = tape.backward(&ce.loss).unwrap();
                opt.step(lora.params_mut(), &grads, Some(1.0)).unwrap();
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, step);
criterion_main!(benches);
