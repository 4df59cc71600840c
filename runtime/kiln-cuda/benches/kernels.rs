//! Criterion benches of the CUDA kernels, through the same backend calls as `kiln bench kernels`:
//! on a GPU when one opens (`cargo bench -p kiln-cuda`), else on the CPU emulation (which checks
//! the path; its times say nothing about a GPU).

use criterion::{Criterion, criterion_group, criterion_main};
use kiln_core::backend::{LoraRef, MatmulOps, MemoryOps};
use kiln_core::{DType, Tensor};
use kiln_cuda::backend::{KernelBackend, Variant, set_variant};

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
    for v in [Variant::V2, Variant::V3, Variant::V4, Variant::V5] {
        if v == Variant::V5 && !be.exec.has_wgmma() {
            continue;
        }
        set_variant(v);
        g.bench_function(format!("gemm {v:?} {m}x{k}x{n} W bf16"), |bench| {
            bench.iter(|| {
                be.linear_fwd(&x, &w, None, None).unwrap();
                be.exec.synchronize().unwrap();
            })
        });
    }
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
