//! The GPU-vs-CPU training comparison, written once and instantiated per backend
//! (`tests/cuda_train.rs`, `tests/wgpu_train.rs`): `kiln train` on the backend and on the CPU
//! from the same small random model and data, per-step losses compared, and decoding with the
//! adapter trained on the backend compared with the CPU's.

use std::path::PathBuf;

use super::{close_losses, same_generation, same_losses, train_losses, train_setup};

/// One backend's comparison: what differs between backends, as values and hooks.
pub struct GpuTrain {
    /// The `--backend` value ("cuda-emu", "wgpu").
    pub backend: &'static str,
    /// The run folders' tag ("cuda" → `cuda/`, `q-nf4-cuda/`, `dpo-cuda/`, …) and the prefix of
    /// the test folders (`cuda-train-lora`).
    pub tag: &'static str,
    /// Whether the backend opens here; `false` skips the test (it says why).
    pub ready: fn() -> bool,
    /// Steps of each QLoRA run.
    pub qlora_steps: &'static str,
    /// How far the adapter's decoding log-probabilities may be from the CPU's.
    pub decode_tol: f64,
    /// Backend-specific runs after the 30-step LoRA run, given its arguments and CPU losses.
    pub after_lora: fn(&Runs, &[&str], &[f64]),
    /// Backend-specific runs beside the NF4 QLoRA run, given its arguments and CPU losses.
    pub after_nf4: fn(&Runs, &[&str], &[f64]),
}

/// A test's folder, model and data.
pub struct Runs {
    pub dir: PathBuf,
    pub model: PathBuf,
    pub data: PathBuf,
    pub backend: &'static str,
    pub tag: &'static str,
}

impl Runs {
    /// The per-step losses of `kiln train` on `backend` into `dir/<sub>`.
    pub fn losses(&self, sub: &str, backend: &str, args: &[&str]) -> Vec<f64> {
        train_losses(&self.model, &self.data, &self.dir.join(sub), backend, args)
    }
    /// Compares the CPU and the backend on `args`, run in `<sub>-cpu` and `<sub>-<tag>`.
    pub fn compare(&self, name: &str, sub: &str, args: &[&str]) {
        let cpu = self.losses(&format!("{sub}-cpu"), "cpu", args);
        let gpu = self.losses(&format!("{sub}-{}", self.tag), self.backend, args);
        same_losses(name, self.backend, &cpu, &gpu);
    }
    /// `args` with `--precision f16` (the wgpu f16 GEMMs) into `dir/<sub>`, within 2 % of `cpu`.
    pub fn close_in_f16(&self, name: &str, sub: &str, args: &[&str], cpu: &[f64]) {
        let a: Vec<&str> = args.iter().copied().chain(["--precision", "f16"]).collect();
        close_losses(name, self.backend, cpu, &self.losses(sub, self.backend, &a), 0.02);
    }
}

/// LoRA (30 steps), the backend's own runs, QLoRA over NF4 and Q4_1 bases, and decoding with
/// the trained adapter.
pub fn lora_and_qlora(g: &GpuTrain) {
    if !(g.ready)() {
        return;
    }
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("colour {i}?"), "completion": format!("blue {}", i % 4)})
            )
        })
        .collect();
    let (dir, model, data) = train_setup(&format!("{}-train", g.tag), "lora", &rows);
    let runs = Runs { dir, model, data, backend: g.backend, tag: g.tag };
    let args = ["--max-steps", "30", "--lora-dropout", "0.1"];
    let cpu = runs.losses("cpu", "cpu", &args);
    let gpu = runs.losses(g.tag, g.backend, &args);
    same_losses("lora", g.backend, &cpu, &gpu);
    assert!(gpu[29] < gpu[0] * 0.8, "the {} run did not learn: {gpu:?}", g.backend);
    // The adapter written from the device loads like the CPU one; decoding with it runs each
    // step's linear layers as the backend's matrix-vector kernels.
    let adapter = runs.dir.join(g.tag).join("adapter");
    assert!(adapter.join("adapter_model.safetensors").is_file());
    same_generation(&runs.model, &adapter, g.backend, g.decode_tol);
    (g.after_lora)(&runs, &args, &cpu);
    // QLoRA: the base's linear weights quantized (NF4, and the default model's Q4_1), kept in
    // their blocks on the device and decoded inside each linear layer.
    for q in ["nf4", "q4_1"] {
        let args = ["--method", "qlora", "--quantize", q, "--max-steps", g.qlora_steps];
        let cpu = runs.losses(&format!("q-{q}-cpu"), "cpu", &args);
        let gpu = runs.losses(&format!("q-{q}-{}", g.tag), g.backend, &args);
        same_losses(&format!("qlora {q}"), g.backend, &cpu, &gpu);
        if q == "nf4" {
            (g.after_nf4)(&runs, &args, &cpu);
        }
    }
}

/// A short DPO run and a short full fine-tune.
pub fn dpo_and_full(g: &GpuTrain) {
    if !(g.ready)() {
        return;
    }
    let rows: String = (0..16)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("question {i}?"), "chosen": format!("yes {}", i % 3),
                    "rejected": format!("not sure about {i}")})
            )
        })
        .collect();
    let (dir, model, data) = train_setup(&format!("{}-train", g.tag), "dpo", &rows);
    let runs = Runs { dir, model, data, backend: g.backend, tag: g.tag };
    runs.compare("dpo", "dpo", &["--method", "dpo", "--max-steps", "4"]);
    let sft: String = (0..8)
        .map(|i| format!("{}\n", serde_json::json!({"text": format!("count {i} {} {}", i + 1, i + 2)})))
        .collect();
    let sft_path = runs.dir.join("sft.jsonl");
    std::fs::write(&sft_path, sft).unwrap();
    let runs = Runs { data: sft_path, ..runs };
    runs.compare("full", "full", &["--method", "full", "--max-steps", "3"]);
}
