//! CPU GEMM throughput (`x·Wᵀ`, f32) at 2048³ and SmolLM2-135M's linear shapes at 512 tokens.
//! Criterion reports time; throughput is set in elements = FLOPs, so "Melem/s" reads as MFLOP/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::Tensor;
use kiln_core::rng::Rng;

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu_gemm_f32");
    g.sample_size(10);
    let mut rng = Rng::new(0);
    for (m, k, n) in [(2048, 2048, 2048), (512, 576, 576), (512, 576, 1536), (512, 1536, 576), (512, 576, 49152)] {
        let x = Tensor::from_vec((0..m * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [m, k]).unwrap();
        let w = Tensor::from_vec((0..n * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [n, k]).unwrap();
        g.throughput(Throughput::Elements(2 * (m * k * n) as u64));
        g.bench_function(format!("{m}x{k}x{n}"), |b| b.iter(|| x.backend().matmul(&x, &w, false, true).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
