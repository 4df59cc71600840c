//! Linear layers over narrow frozen weights (f16, bf16, block-quantized), which the CPU widens a
//! tile of rows at a time: forward and input gradient must equal the same layer over the
//! weight dequantized up front, at shapes that split into several tiles with a ragged last one,
//! for decode-sized (m ≤ 16, tiles in parallel) and training-sized inputs (tiles in turn).
//! Tolerance: relative ≤ 1e-5 per element against the largest output (summation order is the
//! only difference); NaN fails.

use kiln_core::backend::{LinearNeeds, LoraRef};
use kiln_core::quant::GgmlType;
use kiln_core::rng::Rng;
use kiln_core::{DType, Tensor};

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
    let scale = w.iter().fold(0.0f64, |a, &b| a.max(b.abs())).max(1e-30);
    for (i, (x, y)) in g.iter().zip(&w).enumerate() {
        assert!(x.is_finite() && (x - y).abs() <= 1e-5 * scale, "{what}: element {i}: {x} vs {y}");
    }
}

fn narrow(w: &[f32], shape: [usize; 2], ty: GgmlType) -> Tensor {
    let f = Tensor::from_vec(w.to_vec(), shape).unwrap();
    let dt = match ty {
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        t => DType::Quant(t),
    };
    f.to_dtype(dt).unwrap()
}

#[test]
fn narrow_weights_match_widened_weights() {
    let mut rng = Rng::new(11);
    let types = [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::NF4,
        GgmlType::NF4DQ,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    // (k, n): decode tiles of 32 rows at k = 2048 (n = 70: 32, 32, 6), training tiles of 512 rows at k = 2048 (n = 1100) and 32768 at k = 32 (n = 40000).
    for (k, n) in [(2048usize, 70usize), (2048, 1100), (96, 1500), (32, 40000), (64, 7)] {
        for m in [1usize, 5, 37] {
            for ty in types {
                if !k.is_multiple_of(ty.block().0) {
                    continue; // NF4's 64-value and K-quants' 256-value blocks do not tile rows of 32 or 96
                }
                let what = format!("{} m={m} k={k} n={n}", ty.name());
                let wq = narrow(&randn(&mut rng, n * k), [n, k], ty);
                let wf = Tensor::from_vec(wq.to_vec_f32().unwrap(), [n, k]).unwrap();
                let x = Tensor::from_vec(randn(&mut rng, m * k), [m, k]).unwrap();
                let r = 3;
                let a = Tensor::from_vec(randn(&mut rng, r * k), [r, k]).unwrap();
                let b = Tensor::from_vec(randn(&mut rng, n * r), [n, r]).unwrap();
                let lora = || Some(LoraRef { a: &a, b: &b, scale: 0.5 });
                let be = x.backend();
                let (yq, uq) = be.linear_fwd(&x, &wq, None, lora()).unwrap();
                let (yf, uf) = be.linear_fwd(&x, &wf, None, lora()).unwrap();
                close(&format!("{what} forward"), &yq, &yf);
                let dy = Tensor::from_vec(randn(&mut rng, m * n), [m, n]).unwrap();
                let needs = LinearNeeds { x: true, w: false, bias: false, lora: true };
                let (uq, uf) = (uq.unwrap(), uf.unwrap());
                let gq = be.linear_bwd(&dy, &x, &wq, lora().zip(Some(&uq)), needs).unwrap();
                let gf = be.linear_bwd(&dy, &x, &wf, lora().zip(Some(&uf)), needs).unwrap();
                close(&format!("{what} dx"), gq.dx.as_ref().unwrap(), gf.dx.as_ref().unwrap());
                close(&format!("{what} dA"), gq.da.as_ref().unwrap(), gf.da.as_ref().unwrap());
            }
        }
    }
}

#[test]
fn ragged_quant_rows_are_an_error() {
    // 40 values per row is not a whole number of 32-value blocks (160 values are 5 whole blocks
    // overall): refused — at construction or by the linear layer — never misread.
    let x = Tensor::from_vec(vec![1f32; 40], [1, 40]).unwrap();
    let res = Tensor::from_quant_bytes(vec![0u8; 34 * 5], GgmlType::Q8_0, [4, 40])
        .and_then(|w| x.backend().linear_fwd(&x, &w, None, None));
    assert!(res.is_err(), "rows that split a block must be refused");
}
