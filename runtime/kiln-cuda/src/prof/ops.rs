//! One op at a user's shape, run once (`kiln prof run`): what the profiler and the model look at.
//! Inputs are small random values; nothing is checked (the parity table does that).

use kiln_core::backend::{
    AdamWItem, AdamWStep, AttentionOps, ElementwiseOps, EmbeddingOps, LinearNeeds, LoraRef, MatmulOps, MemoryOps,
    NormOps, OptimOps,
};
use kiln_core::{DType, Error, Result, Tensor};

use crate::backend::KernelBackend;

/// The ops `kiln prof run` knows, with the shape each takes.
pub const OPS: [(&str, &str); 13] = [
    ("gemm", "MxKxN: x [M,K] in --act · Wᵀ, W [N,K] in --dtype (bf16, f16, f32)"),
    ("qgemm", "MxKxN: W [N,K] quantized (--dtype q4_k, nf4, q4_1, q8_0)"),
    ("lora", "MxKxNxR: the fused LoRA forward, W bf16, rank R"),
    ("lora_bwd", "MxKxNxR: LoRA forward then backward (dx, dA, dB)"),
    ("gemv", "KxN: one row against W [N,K] in --dtype"),
    ("attention", "BxTxHxD: causal attention forward, H query and key heads"),
    ("attention_bwd", "BxTxHxD: attention forward then backward"),
    ("rms_norm", "RxD: forward then backward"),
    ("cross_entropy", "RxV: one chunk's nll and dlogits (the fused head's kernel)"),
    ("lm_head_ce", "RxHxV: the fused LM head + cross-entropy, h [R,H] f32, W [V,H] in --dtype frozen: loss and dh"),
    ("adamw", "N: one AdamW step over N f32 parameters"),
    ("add", "N: a + b in --act"),
    ("embedding", "RxHxV: R ids into a bf16 [V,H] table, forward"),
];

/// Parses `AxBxC` into its numbers (each > 0), with `n` of them.
pub fn parse_shape(s: &str, n: usize, op: &str) -> Result<Vec<usize>> {
    let v: Vec<usize> = s
        .split('x')
        .map(|d| d.trim().parse::<usize>().ok().filter(|&d| d > 0))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| Error::Msg(format!("--shape {s:?}: positive integers joined by 'x'")))?;
    if v.len() != n {
        let want = OPS.iter().find(|(o, _)| *o == op).map(|(_, w)| *w).unwrap_or("");
        return Err(Error::Msg(format!("--shape {s:?}: {op} takes {n} sizes ({want})")));
    }
    Ok(v)
}

use crate::bench::randn;

fn up(be: &KernelBackend, n: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
    be.upload(&Tensor::from_vec(randn(n.iter().product(), seed), n.to_vec())?.to_dtype(dtype)?)
}

/// How many sizes `op`'s shape has.
pub fn arity(op: &str) -> Result<usize> {
    Ok(match op {
        "gemm" | "qgemm" | "embedding" | "lm_head_ce" => 3,
        "lora" | "lora_bwd" | "attention" | "attention_bwd" => 4,
        "gemv" | "rms_norm" | "cross_entropy" => 2,
        "adamw" | "add" => 1,
        _ => {
            let known: Vec<&str> = OPS.iter().map(|(o, _)| *o).collect();
            return Err(Error::Msg(format!("--op {op}: one of {}", known.join(", "))));
        }
    })
}

/// The useful work of the op at the shape: (flops, bytes every input and output must cross
/// DRAM at least once), for the ratio to a card's peaks; weights in `dtype`, the GEMMs'
/// activations in `act`.
pub fn work(op: &str, s: &[usize], dtype: DType, act: DType) -> (f64, f64) {
    let f = |v: usize| v as f64;
    let wb = |n: usize| f(dtype.bytes(n));
    let ab = f(act.bytes(1));
    match op {
        "gemm" | "qgemm" => (2.0 * f(s[0] * s[1] * s[2]), ab * f(s[0] * s[1] + s[0] * s[2]) + wb(s[1] * s[2])),
        "lora" => {
            let (m, k, n, r) = (s[0], s[1], s[2], s[3]);
            (2.0 * f(m * k * n + m * r * (k + n)), ab * f(m * k + m * n) + 4.0 * f(r * (k + n)) + 2.0 * f(n * k))
        }
        "lora_bwd" => {
            let (m, k, n, r) = (s[0], s[1], s[2], s[3]);
            // Forward u = x·Aᵀ and y; backward g = dy·B, dB, dA and dx's rank term: 6·m·r·(k + n).
            let io = 2.0 * ab * f(m * k + m * n) + 8.0 * f(r * (k + n));
            (4.0 * f(m * k * n) + 6.0 * f(m * r * (k + n)), io + 4.0 * f(n * k))
        }
        "gemv" => (2.0 * f(s[0] * s[1]), wb(s[0] * s[1]) + 4.0 * f(s[0] + s[1])),
        "attention" | "attention_bwd" => {
            let (b, t, h, d) = (s[0], s[1], s[2], s[3]);
            // Causal: half the T×T scores; forward 2 GEMMs, backward 5 (FlashAttention-2's count).
            let fwd = 2.0 * 2.0 * f(b * h * d) * f(t * t) / 2.0;
            let io = 4.0 * f(b * t * h * d);
            // Forward reads q, k, v and writes o; backward reads q, k, v, o, dO, writes dq, dk, dv.
            if op == "attention" { (fwd, 4.0 * io) } else { (fwd * 3.5, 12.0 * io) }
        }
        "rms_norm" => (0.0, 4.0 * f(s[0] * s[1]) * 5.0),
        "cross_entropy" => (0.0, 4.0 * f(s[0] * s[1]) * 2.0),
        // h·Wᵀ and dlogits·W; h, W and dh cross DRAM once (the logits never need to).
        "lm_head_ce" => (4.0 * f(s[0] * s[1] * s[2]), 8.0 * f(s[0] * s[1]) + wb(s[1] * s[2]) + 4.0 * f(s[0])),
        "adamw" => (0.0, 4.0 * f(s[0]) * 7.0),
        "add" => (0.0, 12.0 * f(s[0])),
        "embedding" => (0.0, f(s[0] * s[1]) * 6.0),
        _ => (0.0, 0.0),
    }
}

/// Runs `op` once at shape `s` (weights in `dtype` where the op has them; the GEMMs', LoRA's,
/// attention's, RMSNorm's and add's activations in `act`: f32, or bf16/f16 as the
/// mixed-precision path carries them).
pub fn run(be: &KernelBackend, op: &str, s: &[usize], dtype: DType, act: DType) -> Result<()> {
    match op {
        "gemm" | "qgemm" => {
            let (m, k, n) = (s[0], s[1], s[2]);
            let x = up(be, &[m, k], act, 1)?;
            let w = if let DType::Quant(ty) = dtype {
                let q = kiln_core::quant::quantize(ty, &randn(n * k, 2))?;
                be.upload(&Tensor::from_quant_bytes(q, ty, [n, k])?)?
            } else {
                up(be, &[n, k], dtype, 2)?
            };
            be.linear_fwd(&x, &w, None, None).map(drop)
        }
        "gemv" => {
            let x = up(be, &[1, s[0]], DType::F32, 1)?;
            let w = up(be, &[s[1], s[0]], dtype, 2)?;
            be.linear_fwd(&x, &w, None, None).map(drop)
        }
        "lora" | "lora_bwd" => {
            let (m, k, n, r) = (s[0], s[1], s[2], s[3]);
            let x = up(be, &[m, k], act, 1)?;
            let w = up(be, &[n, k], DType::BF16, 2)?;
            let (a, b) = (up(be, &[r, k], DType::F32, 3)?, up(be, &[n, r], DType::F32, 4)?);
            let l = || LoraRef { a: &a, b: &b, scale: 2.0 };
            let (_, u) = be.linear_fwd(&x, &w, None, Some(l()))?;
            if op == "lora_bwd" {
                let dy = up(be, &[m, n], act, 5)?;
                let u = u.ok_or_else(|| Error::Msg("LoRA forward saved no u".into()))?;
                let needs = LinearNeeds { x: true, lora: true, ..Default::default() };
                be.linear_bwd(&dy, &x, &w, Some((l(), &u)), needs)?;
            }
            Ok(())
        }
        "attention" | "attention_bwd" => {
            let (b, t, h, d) = (s[0], s[1], s[2], s[3]);
            let (q, k, v) =
                (up(be, &[b, t, h, d], act, 1)?, up(be, &[b, t, h, d], act, 2)?, up(be, &[b, t, h, d], act, 3)?);
            let args = kiln_core::backend::AttnArgs::causal(&q, &k, &v);
            let (o, lse) = be.attention_fwd(&args)?;
            if op == "attention_bwd" {
                let d_o = up(be, &[b, t, h, d], act, 4)?;
                be.attention_bwd(&args, &o, &lse, &d_o)?;
            }
            Ok(())
        }
        "rms_norm" => {
            let (x, w, dy) =
                (up(be, &[s[0], s[1]], act, 1)?, up(be, &[s[1]], DType::F32, 2)?, up(be, &[s[0], s[1]], act, 3)?);
            let (_, rstd) = be.rms_norm_fwd(&x, &w, 1e-5)?;
            be.rms_norm_bwd(&dy, &x, &w, &rstd).map(drop)
        }
        "cross_entropy" => {
            let logits = up(be, &[s[0], s[1]], DType::F32, 1)?;
            let t: Vec<i32> = (0..s[0]).map(|i| (i * 7919 % s[1]) as i32).collect();
            let targets = be.upload(&Tensor::from_vec(t, [s[0]])?)?;
            kiln_core::Backend::cross_entropy_chunk(be, &logits, &targets, Some(1.0 / s[0] as f64)).map(drop)
        }
        "lm_head_ce" => {
            use kiln_core::{Tape, Var};
            let (rows, h, vocab) = (s[0], s[1], s[2]);
            let x = Var::leaf(up(be, &[rows, h], DType::F32, 1)?, true);
            let w = if let DType::Quant(ty) = dtype {
                let q = kiln_core::quant::quantize(ty, &randn(vocab * h, 2))?;
                be.upload(&Tensor::from_quant_bytes(q, ty, [vocab, h])?)?
            } else {
                up(be, &[vocab, h], dtype, 2)?
            };
            let w = Var::constant(w);
            let t: Vec<i32> = (0..rows).map(|i| (i * 7919 % vocab) as i32).collect();
            let t = Tensor::from_vec(t, [rows])?;
            let tape = Tape::new();
            let chunk = kiln_core::Backend::loss_chunk_rows(be, vocab);
            let out = kiln_core::ops::linear_cross_entropy(&tape, &x, &w, &t, chunk)?;
            tape.backward(&out.loss).map(drop)
        }
        "adamw" => {
            let (mut p, g) = (up(be, &[s[0]], DType::F32, 1)?, up(be, &[s[0]], DType::F32, 2)?);
            let (mut m, mut v) = (be.zeros(&[s[0]].into(), DType::F32)?, be.zeros(&[s[0]].into(), DType::F32)?);
            let hp = AdamWStep { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
            be.adamw_step(AdamWItem { param: &mut p, grad: &g, m: &mut m, v: &mut v }, hp)
        }
        "add" => {
            let (a, b) = (up(be, &[s[0]], act, 1)?, up(be, &[s[0]], act, 2)?);
            be.add(&a, &b).map(drop)
        }
        "embedding" => {
            let (rows, h, vocab) = (s[0], s[1], s[2]);
            let w = up(be, &[vocab, h], DType::BF16, 1)?;
            let ids: Vec<i32> = (0..rows).map(|i| (i * 7919 % vocab) as i32).collect();
            let ids = be.upload(&Tensor::from_vec(ids, [rows])?)?;
            be.embedding_fwd(&w, &ids).map(drop)
        }
        _ => arity(op).map(drop),
    }
}
