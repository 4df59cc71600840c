//! Criterion benches of the CUDA kernels, through the same backend calls as `kiln bench kernels`:
//! on a GPU when one opens (`cargo bench -p kiln-cuda`), else on the CPU emulation (which checks
//! the path; its times say nothing about a GPU).

use criterion::{Criterion, criterion_group, criterion_main};
use kiln_core::backend::{LoraRef, MatmulOps, MemoryOps};
use kiln_core::{DType, Tensor};
use kiln_cuda::GemmVariant;
use kiln_cuda::backend::KernelBackend;

fn backend() -> (&'static KernelBackend, bool) {
    match kiln_cuda::kernel_backend("cuda", 0) {
        Ok(b) => (b, true),
        Err(_) => (kiln_cuda::kernel_backend("cuda-emu", 0).expect("the emulation is compiled in"), false),
    }
}

fn up(be: &KernelBackend, dims: &[usize], dtype: DType) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|i| ((i * 2654435761) % 1000) as f32 / 1000.0 - 0.5).collect();
    be.upload(&Tensor::from_vec(v, dims.to_vec()).unwrap().to_dtype(dtype).unwrap()).unwrap()
}

fn kernels(c: &mut Criterion) {
    let (be, gpu) = backend();
    let (m, k, n, r) = if gpu { (4096, 4096, 4096, 16) } else { (64, 64, 64, 8) };
    let x = up(be, &[m, k], DType::F32);
    let w = up(be, &[n, k], DType::BF16);
    let (a, b) = (up(be, &[r, k], DType::F32), up(be, &[n, r], DType::F32));
    let mut g = c.benchmark_group(format!("cuda kernels on {}", be.exec.describe()));
    g.sample_size(10);
    // The naive v1 is the correctness reference, too slow to time at these shapes.
    for v in GemmVariant::ALL.into_iter().filter(|&v| v != GemmVariant::V1 && be.runs(v)) {
        let bv = be.with_gemm(v);
        g.bench_function(format!("gemm {v} {m}x{k}x{n} W bf16"), |bench| {
            bench.iter(|| {
                bv.linear_fwd(&x, &w, None, None).unwrap();
                bv.exec.synchronize().unwrap();
            })
        });
    }
    let be = be.with_gemm(GemmVariant::V3);
    g.bench_function(format!("lora fused fwd r{r} {m}x{k}x{n}"), |bench| {
        bench.iter(|| {
            be.linear_fwd(&x, &w, None, Some(LoraRef { a: &a, b: &b, scale: 2.0 })).unwrap();
            be.exec.synchronize().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, kernels);
criterion_main!(benches);
