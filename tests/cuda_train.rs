//! `kiln train --backend cuda-emu` end to end: every op of a training step runs as the CUDA
//! kernels of `kernels/*.cu`, executed on the CPU by kiln's emulation harness, and the per-step
//! losses of LoRA (30 steps), QLoRA (NF4, Q4_1), DPO and full fine-tuning of a small random
//! model match the CPU backend's within 1 % relative (attention and the quantized bases run on
//! bf16 tensor cores), and decoding with the trained adapter picks the CPU's tokens. On a machine with a GPU, `tools/gpu-check.sh` runs the same
//! comparison with `--backend cuda`.

mod common;

use common::gpu_train::{GpuTrain, Runs, dpo_and_full, lora_and_qlora};

const CUDA_EMU: GpuTrain = GpuTrain {
    backend: "cuda-emu",
    tag: "cuda",
    ready: || true,
    qlora_steps: "10",
    // Decoding runs attention on bf16 tensor cores.
    decode_tol: 2e-2,
    after_lora,
    after_nf4,
};

/// Gradient checkpointing (each block recomputed in backward) and 8-bit optimizer state, with
/// gradient-norm clipping: the fused multi-tensor AdamW takes the clipping factor.
fn after_lora(runs: &Runs, _: &[&str], _: &[f64]) {
    let args = ["--max-steps", "8", "--gradient-checkpointing", "true", "--max-grad-norm", "0.5"];
    runs.compare("lora, checkpointed, clipped", "ckpt", &args);
    runs.compare("lora, 8-bit AdamW", "q8", &["--max-steps", "8", "--optim", "adamw8bit"]);
}

/// The Hopper GEMM (v5, wgmma; the emulation implements it) on the NF4 QLoRA run.
fn after_nf4(runs: &Runs, args: &[&str], cpu: &[f64]) {
    let env = [("KILN_CUDA_GEMM", "v5")];
    let v5 = common::train_losses_env(&runs.model, &runs.data, &runs.dir.join("q-nf4-v5"), "cuda-emu", args, &env);
    common::same_losses("qlora nf4, GEMM v5 (wgmma)", "cuda-emu", cpu, &v5);
}

#[test]
fn lora_on_cuda_kernels_matches_the_cpu() {
    lora_and_qlora(&CUDA_EMU);
}

#[test]
fn dpo_and_full_on_cuda_kernels_match_the_cpu() {
    dpo_and_full(&CUDA_EMU);
}

/// 8-bit AdamW with its moments on the device (one kernel dequantizes, steps and requantizes)
/// gives the host path's parameters and moments bit for bit, over three clipped steps of
/// tensors that are not whole 256-value blocks.
#[test]
fn eight_bit_adamw_on_the_device_matches_the_host_path() {
    use kiln::core::{Backend, Tape, Tensor, Var};
    let emu = kiln_cuda::open_emu().unwrap();
    assert!(emu.has_adamw8());
    let mut rng = kiln::core::rng::Rng::new(9);
    let sizes = [300usize, 1000, 5];
    let mut randn = |n: usize, s: f64| {
        Tensor::from_vec((0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<_>>(), [n]).unwrap()
    };
    let init: Vec<Tensor> = sizes.iter().map(|&n| randn(n, 1.0)).collect();
    let grads: Vec<Vec<Tensor>> = (0..3).map(|_| sizes.iter().map(|&n| randn(n, 0.1)).collect()).collect();
    let run = |be: &'static dyn Backend| -> Vec<Vec<f32>> {
        let mut params: Vec<Var> = init.iter().map(|t| Var::leaf(be.upload(t).unwrap(), true)).collect();
        let mut opt = kiln::train::AdamW::new(1e-2);
        opt.eight_bit = true;
        for step in &grads {
            let seeds = params.iter().zip(step).map(|(p, g)| (p.id(), be.upload(g).unwrap())).collect();
            let g = Tape::new().backward_from(seeds).unwrap();
            opt.step(params.iter_mut().collect(), &g, Some(0.5)).unwrap();
        }
        let mut out = Vec::new();
        for p in &params {
            out.push(p.value().to_vec_f32().unwrap());
            let (m, v) = opt.moments(p).unwrap().unwrap();
            out.push(m.to_vec_f32().unwrap());
            out.push(v.to_vec_f32().unwrap());
        }
        out
    };
    let host = run(&kiln::core::CpuBackend);
    let dev = run(emu);
    for (i, (h, d)) in host.iter().zip(&dev).enumerate() {
        let diff = h.iter().zip(d).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(diff, 0, "tensor {i} (param, m, v of each): {diff} of {} values differ", h.len());
    }
    eprintln!("8-bit AdamW on the device: 3 tensors × 3 steps bit-exact with the host path");
}
