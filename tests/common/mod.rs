//! Shared by the training tests: a small random Llama over the fixture BPE tokenizer.

use std::path::{Path, PathBuf};

use kiln::model::init::{TinySpec, create_random_llama};

/// Writes `dir/model`: a random Llama whose vocabulary (709 rows) covers the fixture
/// tokenizer's 700 ids with spare rows, and the tokenizer files beside it.
pub fn tiny_model(dir: &Path, seed: u64) -> PathBuf {
    let m = dir.join("model");
    let spec = TinySpec {
        vocab_size: 709,
        hidden_size: 64,
        intermediate_size: 128,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        init_std: 0.1,
    };
    create_random_llama(&m, &spec, seed).unwrap();
    let fx = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer");
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(fx.join(f), m.join(f)).unwrap();
    }
    m
}
