//! `kiln train --backend cuda-emu` end to end: every op of a training step runs as the CUDA
//! kernels of `kernels/*.cu`, executed on the CPU by kiln's emulation harness. Under GEMM v2
//! (f32 GEMMs and f32 attention) LoRA (30 steps, also checkpointed and clipped, and with 8-bit
//! AdamW), QLoRA (NF4, Q4_1), DPO and full fine-tuning of a small random model, and LoRA on
//! Gemma 3, Gemma 2, Phi-3 and Phi-4-mini (sliding windows, soft-caps, fused projections,
//! LongRoPE, partial rotary), each at least 10 steps, give the CPU backend's per-step losses
//! and gradient norms and its trained weights within 1e-4 relative; under the tensor-core variants (v6, the default: the
//! NF4 base decoded to bf16 and the multistage GEMM; v3 and v5: decoded in the loader; all with bf16
//! attention) NF4 QLoRA is within 1e-2; decoding with the trained
//! adapter picks the CPU's tokens. On a machine with a GPU, `tools/gpu-check.sh` runs the same
//! comparison with `--backend cuda`.

mod common;

use common::gpu_train::{GpuTrain, Runs, SHORT_ROWS, dpo_and_full, families, lora_and_qlora};
use common::{F32, F32_ADAMW8, HALF, Run};

const CUDA_EMU: GpuTrain = GpuTrain {
    backend: "cuda-emu",
    tag: "cuda",
    ready: || true,
    // GEMM v6 (the default): activations in bf16 between kernels (mixed precision), attention
    // on bf16 tensor cores.
    default_tol: HALF,
    // GEMM v2: f32 products, attention v1 in f32 (v3–v7 run attention on tensor cores), and
    // activations in f32 between kernels.
    f32_env: &[("KILN_CUDA_GEMM", "v2"), ("KILN_CUDA_ACT", "f32")],
    qlora_steps: "10",
    // Decoding runs the default variant: attention on bf16 tensor cores.
    decode_tol: 2e-2,
    after_lora,
    after_nf4,
};

/// Gradient checkpointing (each block recomputed in backward) and 8-bit optimizer state, with
/// gradient-norm clipping: the fused multi-tensor AdamW takes the clipping factor. In f32.
fn after_lora(runs: &Runs, _: &[&str], _: &Run) {
    let args = [&SHORT_ROWS[..], &["--max-steps", "10", "--gradient-checkpointing", "true", "--max-grad-norm", "0.5"]]
        .concat();
    runs.compare("lora, checkpointed, clipped", "ckpt", &args, None, F32);
    let args = [&SHORT_ROWS[..], &["--max-steps", "10", "--optim", "adamw8bit"]].concat();
    runs.compare("lora, 8-bit AdamW", "q8", &args, None, F32_ADAMW8);
}

/// The tensor-core variants on the NF4 QLoRA run: v6 (the default: the NF4 base decoded to bf16,
/// then the multistage GEMM, LoRA fused as its second phase, in the forward and in dx), v3 (mma
/// GEMMs decoding the base in their loader), v5 (Hopper's wgmma; the emulation implements it) and
/// v7 (Hopper's TMA + wgmma, the default on a Hopper GPU: forward products on v7, dx on v6), all
/// with attention on bf16 tensor cores.
fn after_nf4(runs: &Runs, args: &[&str], cpu: &Run) {
    for v in ["v6", "v3", "v5", "v7"] {
        let name = format!("qlora nf4, GEMM {v} (bf16 tensor cores)");
        runs.close_in_16bit(&name, &format!("q-nf4-{v}"), args, &[("KILN_CUDA_GEMM", v)], cpu);
    }
}

#[test]
fn lora_on_cuda_kernels_matches_the_cpu() {
    lora_and_qlora(&CUDA_EMU);
}

#[test]
fn dpo_and_full_on_cuda_kernels_match_the_cpu() {
    dpo_and_full(&CUDA_EMU);
}

#[test]
fn gemma_and_phi_on_cuda_kernels_match_the_cpu() {
    families(&CUDA_EMU);
}

/// The comparison fails on runs that differ by a small change of settings which the check
/// before it (losses within 1 % per step, nothing else) let through: a learning rate 1 % or
/// 0.1 % higher, AdamW without the weight decay asked for; each part (losses, gradient norms,
/// weights) on its own. CPU runs of the tiny model, a fraction of a second each.
#[test]
fn the_run_comparison_catches_a_small_change() {
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"prompt": format!("colour {i}?"), "completion": format!("blue {}", i % 4)})
            )
        })
        .collect();
    let (dir, model, data) = common::train_setup("cuda-train", "catch", &rows);
    let run = |sub: &str, extra: &[&str]| {
        let args = [&SHORT_ROWS[..], &["--max-steps", "10"], extra].concat();
        common::train_run(&model, &data, &dir.join(sub), "cpu", &args, &[])
    };
    let base = run("base", &["--weight-decay", "0.1"]);
    let old = |other: &Run| base.losses.iter().zip(&other.losses).all(|(a, b)| (a - b).abs() <= 0.01 * a.abs());
    // The same settings again: the CPU is deterministic, so the comparison passes exactly.
    let again = run("again", &["--weight-decay", "0.1"]);
    let same = common::compare_runs(&base, &again, None, F32);
    assert!(same.as_deref().is_ok_and(|l| l.contains("loss 0.0e0")), "{same:?}");
    // Fewer than 10 steps, a step missing, or a NaN fails.
    let l = &base.losses;
    assert!(common::close_series("loss", &l[..9], &l[..9], F32.steps).is_err());
    assert!(common::close_series("loss", l, &l[1..], F32.steps).is_err());
    let nan: Vec<f64> = l.iter().enumerate().map(|(i, &x)| if i == 4 { f64::NAN } else { x }).collect();
    assert!(common::close_series("loss", l, &nan, F32.steps).is_err());
    assert!(common::close_series("loss", &nan, l, F32.steps).is_err());
    for (what, extra) in [
        ("a learning rate 1 % higher", &["--weight-decay", "0.1", "--learning-rate", "3.03e-3"][..]),
        ("a learning rate 0.1 % higher", &["--weight-decay", "0.1", "--learning-rate", "3.003e-3"][..]),
        ("AdamW without weight decay", &["--weight-decay", "0"][..]),
    ] {
        let other = run(&what.replace(' ', "-"), extra);
        assert!(old(&other), "{what}: the 1 % loss check passes it: {:?} vs {:?}", base.losses, other.losses);
        // Each part of the comparison catches it on its own.
        let loss = common::close_series("loss", &base.losses, &other.losses, F32.steps).expect_err(what);
        let norm =
            common::close_series("gradient norm", &base.grad_norms, &other.grad_norms, F32.steps).expect_err(what);
        let (w, _, _) = common::close_weights(&base.weights, &other.weights, None).unwrap();
        assert!(w > F32.weights, "{what}: trained weights within {w:.1e}");
        eprintln!("{what}: caught by the losses ({loss}), the gradient norms ({norm}) and the weights ({w:.1e})");
    }
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
