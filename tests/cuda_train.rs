//! `kiln train --backend cuda-emu` end to end: every op of a training step runs as the CUDA
//! kernels of `kernels/*.cu`, executed on the CPU by kiln's emulation harness, and the per-step
//! losses of LoRA (30 steps), QLoRA (NF4, Q4_1), DPO and full fine-tuning of a small random
//! model match the CPU backend's within 1 % relative. On a machine with a GPU, `tools/gpu-check.sh` runs the same
//! comparison with `--backend cuda`.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn losses(model: &Path, data: &Path, out: &Path, backend: &str, extra: &[&str]) -> Vec<f64> {
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", "--backend", backend, "--learning-rate", "3e-3", "--batch-size", "2", "--eval-split", "0"])
        .args(["--packing", "false"])
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
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

fn setup(name: &str, rows: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cuda-train-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 7);
    let data = d.join("data.jsonl");
    std::fs::write(&data, rows).unwrap();
    (d, m, data)
}

fn same(name: &str, cpu: &[f64], gpu: &[f64]) {
    assert_eq!(cpu.len(), gpu.len(), "{name}: steps");
    for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
        assert!(
            b.is_finite() && (a - b).abs() <= 0.01 * a.abs(),
            "{name} step {}: cpu {a} vs cuda-emu {b}\n{cpu:?}\n{gpu:?}",
            i + 1
        );
    }
    let worst = cpu.iter().zip(gpu).map(|(a, b)| ((a - b) / a).abs()).fold(0.0, f64::max);
    eprintln!(
        "{name}: {} steps, cpu {:.4} → {:.4}, cuda-emu {:.4} → {:.4}, worst relative difference {worst:.1e}",
        cpu.len(),
        cpu[0],
        cpu[cpu.len() - 1],
        gpu[0],
        gpu[gpu.len() - 1]
    );
}

#[test]
fn lora_on_cuda_kernels_matches_the_cpu() {
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("colour {i}?"), "completion": format!("blue {}", i % 4)})
            )
        })
        .collect();
    let (d, model, data) = setup("lora", &rows);
    let args = ["--max-steps", "30", "--lora-dropout", "0.1"];
    let cpu = losses(&model, &data, &d.join("cpu"), "cpu", &args);
    let gpu = losses(&model, &data, &d.join("cuda"), "cuda-emu", &args);
    same("lora", &cpu, &gpu);
    assert!(gpu[29] < gpu[0] * 0.8, "the cuda-emu run did not learn: {gpu:?}");
    assert!(d.join("cuda/adapter/adapter_model.safetensors").is_file());
    // QLoRA: the base's linear weights quantized (NF4, and the default model's Q4_1), kept in
    // their blocks on the device and decoded inside the GEMM.
    for q in ["nf4", "q4_1"] {
        let args = ["--method", "qlora", "--quantize", q, "--max-steps", "10"];
        let cpu = losses(&model, &data, &d.join(format!("q-{q}-cpu")), "cpu", &args);
        let gpu = losses(&model, &data, &d.join(format!("q-{q}-cuda")), "cuda-emu", &args);
        same(&format!("qlora {q}"), &cpu, &gpu);
    }
}

#[test]
fn dpo_and_full_on_cuda_kernels_match_the_cpu() {
    let rows: String = (0..16)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("question {i}?"), "chosen": format!("yes {}", i % 3),
                    "rejected": format!("not sure about {i}")})
            )
        })
        .collect();
    let (d, model, data) = setup("dpo", &rows);
    let args = ["--method", "dpo", "--max-steps", "4"];
    same(
        "dpo",
        &losses(&model, &data, &d.join("dpo-cpu"), "cpu", &args),
        &losses(&model, &data, &d.join("dpo-cuda"), "cuda-emu", &args),
    );
    let sft: String = (0..8)
        .map(|i| format!("{}\n", serde_json::json!({"text": format!("count {i} {} {}", i + 1, i + 2)})))
        .collect();
    let sft_path = d.join("sft.jsonl");
    std::fs::write(&sft_path, sft).unwrap();
    let args = ["--method", "full", "--max-steps", "3"];
    same(
        "full",
        &losses(&model, &sft_path, &d.join("full-cpu"), "cpu", &args),
        &losses(&model, &sft_path, &d.join("full-cuda"), "cuda-emu", &args),
    );
}
