//! The GPU-vs-CPU training comparison, written once and instantiated per backend
//! (`tests/cuda_train.rs`, `tests/wgpu_train.rs`): `kiln train` on the backend and on the CPU
//! from the same small random model and data, each run of at least [`MIN_STEPS`] steps, with
//! every step's loss and gradient norm and the trained weights compared (within [`F32`] where
//! the backend computes in f32, [`HALF`] where 16-bit arithmetic is in the run), and decoding
//! with the adapter trained on the backend compared with the CPU's.

use std::path::{Path, PathBuf};

use super::{F32, HALF, MIN_STEPS, Run, Tol, family_model, same_generation, same_run, train_run, train_setup};

/// The arguments that keep a run's rows short, for the runs the CUDA emulation makes slow:
/// ChatML without the fixture template's default system prompt (26 tokens a row instead of 77).
pub const SHORT_ROWS: [&str; 2] = ["--template", "chatml"];

/// One backend's comparison: what differs between backends, as values and hooks.
pub struct GpuTrain {
    /// The `--backend` value ("cuda-emu", "wgpu").
    pub backend: &'static str,
    /// The run folders' tag ("cuda" → `cuda/`, `q-nf4-cuda/`, `dpo-cuda/`, …) and the prefix of
    /// the test folders (`cuda-train-lora`).
    pub tag: &'static str,
    /// Whether the backend opens here; `false` skips the test (it says why).
    pub ready: fn() -> bool,
    /// How closely the backend's default arithmetic follows the CPU's (on the 30-step LoRA run).
    pub default_tol: Tol,
    /// Environment of the backend's f32 runs (the CUDA emulation: GEMM v2, whose attention is
    /// f32 too; the default variant runs attention on bf16 tensor cores).
    pub f32_env: &'static [(&'static str, &'static str)],
    /// Steps of each QLoRA run.
    pub qlora_steps: &'static str,
    /// How far the adapter's decoding log-probabilities may be from the CPU's.
    pub decode_tol: f64,
    /// Backend-specific runs after the 30-step LoRA run, given its arguments and CPU run.
    pub after_lora: fn(&Runs, &[&str], &Run),
    /// Backend-specific runs beside the NF4 QLoRA run, given its arguments and CPU run.
    pub after_nf4: fn(&Runs, &[&str], &Run),
}

/// A test's folder, model and data.
pub struct Runs {
    pub dir: PathBuf,
    pub model: PathBuf,
    pub data: PathBuf,
    pub backend: &'static str,
    pub tag: &'static str,
    pub f32_env: &'static [(&'static str, &'static str)],
}

impl Runs {
    /// `kiln train` on `backend` with `env` into `dir/<sub>`.
    pub fn run(&self, sub: &str, backend: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        train_run(&self.model, &self.data, &self.dir.join(sub), backend, args, env)
    }
    /// The CPU's run of `args` in `<sub>-cpu`.
    pub fn cpu(&self, sub: &str, args: &[&str]) -> Run {
        self.run(&format!("{sub}-cpu"), "cpu", args, &[])
    }
    /// The backend's f32 run of `args` in `<sub>-<tag>`, compared with `cpu` within `tol`
    /// ([`F32`], or an f32 tolerance of its own).
    pub fn same_in_f32(&self, name: &str, sub: &str, args: &[&str], cpu: &Run, base: Option<&Path>, tol: Tol) {
        let gpu = self.run(&format!("{sub}-{}", self.tag), self.backend, args, self.f32_env);
        same_run(name, self.backend, cpu, &gpu, base, tol);
    }
    /// Runs `args` on the CPU and the backend (f32) in `<sub>-cpu` and `<sub>-<tag>` and
    /// compares them within `tol`.
    pub fn compare(&self, name: &str, sub: &str, args: &[&str], base: Option<&Path>, tol: Tol) {
        let cpu = self.cpu(sub, args);
        self.same_in_f32(name, sub, args, &cpu, base, tol);
    }
    /// The backend's run of `args` with `env` (16-bit arithmetic in it) into `dir/<sub>`, within
    /// [`HALF`] of `cpu`.
    pub fn close_in_16bit(&self, name: &str, sub: &str, args: &[&str], env: &[(&str, &str)], cpu: &Run) {
        let gpu = self.run(sub, self.backend, args, env);
        same_run(name, self.backend, cpu, &gpu, None, HALF);
    }
    /// `args` with `--precision f16` (the wgpu f16 GEMMs) into `dir/<sub>`, within [`HALF`].
    pub fn close_in_f16(&self, name: &str, sub: &str, args: &[&str], cpu: &Run) {
        let a: Vec<&str> = args.iter().copied().chain(["--precision", "f16"]).collect();
        self.close_in_16bit(name, sub, &a, &[], cpu);
    }
}

/// LoRA (30 steps, the backend's default arithmetic; in f32 too where that is not f32), the
/// backend's own runs, QLoRA over NF4 and Q4_1 bases, and decoding with the trained adapter.
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
    let runs = Runs { dir, model, data, backend: g.backend, tag: g.tag, f32_env: g.f32_env };
    let args = ["--max-steps", "30", "--lora-dropout", "0.1"];
    let cpu = runs.run("cpu", "cpu", &args, &[]);
    let gpu = runs.run(g.tag, g.backend, &args, &[]);
    same_run("lora", g.backend, &cpu, &gpu, None, g.default_tol);
    assert!(gpu.losses[29] < gpu.losses[0] * 0.8, "the {} run did not learn: {:?}", g.backend, gpu.losses);
    // The adapter written from the device loads like the CPU one; decoding with it runs each
    // step's linear layers as the backend's matrix-vector kernels.
    let adapter = runs.dir.join(g.tag).join("adapter");
    assert!(adapter.join("adapter_model.safetensors").is_file());
    same_generation(&runs.model, &adapter, g.backend, g.decode_tol);
    if g.default_tol != F32 {
        let steps = MIN_STEPS.to_string();
        let args = [&SHORT_ROWS[..], &["--max-steps", &steps, "--lora-dropout", "0.1"]].concat();
        runs.compare("lora, f32", "lora-f32", &args, None, F32);
    }
    (g.after_lora)(&runs, &args, &cpu);
    // QLoRA: the base's linear weights quantized (NF4, and the default model's Q4_1), kept in
    // their blocks on the device and decoded inside each linear layer.
    assert!(g.qlora_steps.parse::<usize>().is_ok_and(|n| n >= MIN_STEPS));
    for q in ["nf4", "q4_1"] {
        let args = [&SHORT_ROWS[..], &["--method", "qlora", "--quantize", q, "--max-steps", g.qlora_steps]].concat();
        let cpu = runs.cpu(&format!("q-{q}"), &args);
        runs.same_in_f32(&format!("qlora {q}"), &format!("q-{q}"), &args, &cpu, None, F32);
        if q == "nf4" {
            (g.after_nf4)(&runs, &args, &cpu);
        }
    }
}

/// DPO and full fine-tuning (with weight decay), [`MIN_STEPS`] steps each in f32: the full
/// run's weights are compared by what training changed in them. On CUDA also full fine-tuning
/// and bottleneck adapters with bf16 activations, within [`HALF`].
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
    let runs = Runs { dir, model, data, backend: g.backend, tag: g.tag, f32_env: g.f32_env };
    let steps = MIN_STEPS.to_string();
    let args = [&SHORT_ROWS[..], &["--method", "dpo", "--max-steps", &steps]].concat();
    runs.compare("dpo", "dpo", &args, None, F32);
    let sft: String = (0..8)
        .map(|i| format!("{}\n", serde_json::json!({"text": format!("count {i} {} {}", i + 1, i + 2)})))
        .collect();
    let sft_path = runs.dir.join("sft.jsonl");
    std::fs::write(&sft_path, sft).unwrap();
    let base = runs.model.join("model.safetensors");
    assert!(base.is_file());
    let runs = Runs { data: sft_path, ..runs };
    let full = ["--method", "full", "--max-steps", &steps, "--weight-decay", "0.1"];
    let cpu = runs.cpu("full", &full);
    runs.same_in_f32("full", "full", &full, &cpu, Some(&base), F32);
    if g.tag == "cuda" {
        // The mixed-precision path (bf16 activations, the default) with f32 trainable weights:
        // every product widens its activations around the f32 GEMMs, dW included.
        runs.close_in_16bit("full, bf16 activations", "full-act16", &full, &[], &cpu);
        // Bottleneck adapters (f32 weights, a gate of ones in the activations' type).
        let adapter = ["--method", "adapter", "--max-steps", &steps];
        let cpu = runs.cpu("adapter", &adapter);
        runs.close_in_16bit("adapter, bf16 activations", "adapter-act16", &adapter, &[], &cpu);
    }
}

/// LoRA on Gemma 3 (sliding layers of window 8 between global ones, q/k norms), Gemma 2
/// (attention and final soft-caps, sandwich norms), Phi-3 (fused qkv/gate_up, LongRoPE with its
/// long factors past 16 positions) and Phi-4-mini (partial rotary, tied head): [`MIN_STEPS`]
/// steps in f32 on rows longer than the window, against the CPU within [`F32`].
pub fn families(g: &GpuTrain) {
    if !(g.ready)() {
        return;
    }
    let rows: String = (0..8)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("colour of item {i}, please?"),
                    "completion": format!("item {i} is blue and {} is green", i + 1)})
            )
        })
        .collect();
    let steps = MIN_STEPS.to_string();
    let args = [&SHORT_ROWS[..], &["--max-steps", &steps]].concat();
    for family in ["gemma/gemma3", "gemma/gemma2", "phi3/phi3", "phi3/phi4-mini"] {
        let name = family.split('/').next_back().unwrap();
        let (dir, _, data) = train_setup(&format!("{}-train", g.tag), name, &rows);
        let model = family_model(&dir, family, 11);
        let runs = Runs { dir, model, data, backend: g.backend, tag: g.tag, f32_env: g.f32_env };
        let cpu = runs.cpu(name, &args);
        assert!(cpu.losses[MIN_STEPS - 1] < cpu.losses[0], "{name}: the CPU run did not learn: {:?}", cpu.losses);
        runs.same_in_f32(&format!("{name} lora"), name, &args, &cpu, None, F32);
    }
}
