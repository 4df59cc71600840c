//! CPU dequantization throughput per block type, in bytes of f32 output per second
//! (criterion's "B/s"), single-threaded over 4 Mi values.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiln_core::quant::{GgmlType, dequantize, quantize};
use kiln_core::rng::Rng;

fn dequant(c: &mut Criterion) {
    let n = 4 << 20;
    let mut rng = Rng::new(0);
    let x: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let mut out = vec![0f32; n];
    let mut g = c.benchmark_group("dequantize_cpu");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((n * 4) as u64));
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::NF4,
        GgmlType::NF4DQ,
        GgmlType::F16,
        GgmlType::BF16,
    ] {
        let q = quantize(ty, &x).unwrap();
        g.bench_function(ty.name(), |b| b.iter(|| dequantize(ty, &q, &mut out).unwrap()));
    }
    g.finish();
}

criterion_group!(benches, dequant);
criterion_main!(benches);
