//! `kiln train --backend wgpu` end to end — on lavapipe in CI: 30-step LoRA and QLoRA (NF4,
//! Q4_1) fine-tunes of a small random model and 10-step DPO and full fine-tunes whose per-step
//! losses and gradient norms and trained weights match the CPU backend's within 1e-4 relative
//! (f32), and within 1e-2 with f16 GEMMs (LoRA, NF4 QLoRA); 10-step LoRA on Gemma 3, Gemma 2,
//! Phi-3 and Phi-4-mini within 1e-4. With no adapter the tests fail under CI (the tier must not
//! be skipped) and say why elsewhere.

use std::process::Command;

mod common;

use common::F32;
use common::gpu_train::{GpuTrain, dpo_and_full, families, lora_and_qlora};

fn wgpu_ready() -> bool {
    match kiln_wgpu::open() {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP wgpu training: {e}");
            false
        }
        Err(e) => panic!("{e}: CI must run the wgpu tier (install mesa-vulkan-drivers libvulkan1)"),
    }
}

/// f16 GEMMs (lavapipe has SHADER_F16): within 1e-2 of the f32 CPU run, for LoRA and NF4 QLoRA.
const WGPU: GpuTrain = GpuTrain {
    backend: "wgpu",
    tag: "wgpu",
    ready: wgpu_ready,
    // Every kernel computes in f32 unless --precision f16 is given.
    default_tol: F32,
    f32_env: &[],
    qlora_steps: "30",
    decode_tol: 1e-4,
    after_lora: |runs, args, cpu| runs.close_in_f16("lora, f16 GEMMs", "f16", args, cpu),
    after_nf4: |runs, args, cpu| runs.close_in_f16("qlora nf4, f16 GEMMs", "q-nf4-f16", args, cpu),
};

#[test]
fn lora_on_wgpu_matches_the_cpu() {
    lora_and_qlora(&WGPU);
}

#[test]
fn dpo_and_full_on_wgpu_match_the_cpu() {
    dpo_and_full(&WGPU);
}

#[test]
fn gemma_and_phi_on_wgpu_match_the_cpu() {
    families(&WGPU);
}

#[test]
fn no_vulkan_fails_clearly_and_auto_falls_back() {
    // No Vulkan driver at all (the loader finds no ICD): --backend wgpu says so and exits
    // non-zero; --backend auto trains on the CPU. Runs with or without lavapipe installed.
    let rows: String =
        (0..6).map(|i| format!("{}\n", serde_json::json!({"prompt": format!("q{i}"), "completion": "a"}))).collect();
    let (d, model, data) = common::train_setup("wgpu-train", "novk", &rows);
    let run = |backend: &str| {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .env("WGPU_BACKEND", "vulkan")
            .env("VK_ICD_FILENAMES", "/nonexistent/icd.json")
            .env("VK_DRIVER_FILES", "/nonexistent/icd.json")
            .args(["train", "--backend", backend, "--max-steps", "1", "--eval-split", "0"])
            .arg("--model")
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(d.join(backend))
            .output()
            .unwrap()
    };
    let o = run("wgpu");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--backend wgpu: wgpu: no adapter"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = run("auto");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("backend: cpu"), "{err}");
}
