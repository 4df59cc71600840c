//! The op parity table (`kiln_core::selftest`) on wgpu — in CI on lavapipe (Mesa's CPU Vulkan
//! driver, "llvmpipe"): every case the backend supports must match the f64 CPU reference; cases
//! whose kernels have not landed are listed as skipped with the reason. With no adapter the test
//! fails under CI (the tier must not be skipped) and says why elsewhere.
//!
//! The GEMM variant, the precision and the subgroup reductions are fields of a backend
//! instance, so each configuration is its own test and they run in parallel on one device.

use kiln_core::backend::{MatmulOps, MemoryOps, Op, Support};
use kiln_core::selftest;
use kiln_wgpu::{GemmVariant, Precision, WgpuBackend};

/// The default backend, or `None` (after saying why) where no adapter opens outside CI.
fn wgpu() -> Option<&'static WgpuBackend> {
    match WgpuBackend::open() {
        Ok(b) => {
            // Every buffer starts as NaN bytes, new or pooled: a kernel that skips an element
            // (a missed tail tile) fails instead of inheriting an earlier op's answer.
            kiln_wgpu::runtime::device().expect("the device behind an open backend").set_poison(true);
            Some(b)
        }
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP wgpu parity: {e}");
            None
        }
        Err(e) => panic!("{e}: CI must run the wgpu tier (install mesa-vulkan-drivers libvulkan1)"),
    }
}

/// The whole table on one configuration of the backend.
fn parity(v: GemmVariant, prec: Precision, sg: bool) {
    let Some(be) = wgpu() else { return };
    if let Some(a) = kiln_wgpu::probe().adapters.first() {
        eprintln!("wgpu adapter: {} ({}, {})", a.name, a.backend, a.device_type);
    }
    let dev = kiln_wgpu::runtime::device().unwrap();
    eprintln!("subgroups: {}, shader_f16: {}", dev.subgroups, dev.shader_f16);
    // lavapipe has SHADER_F16: CI must check the f16 GEMMs, not pass by falling back to f32.
    assert!(dev.shader_f16 || std::env::var_os("CI").is_none(), "CI's adapter must have SHADER_F16");
    let be = be.with_gemm(v).with_precision(prec).with_subgroups(sg);
    assert_eq!((be.gemm(), be.precision(), be.subgroups()), (v, prec, sg));
    // Each configuration on inputs of its own: a kernel that leaves an output unwritten cannot
    // inherit another configuration's answer to the same inputs.
    let seeds = selftest::seeds_for(&format!("wgpu {v:?} {prec:?} subgroups {sg}"));
    let t0 = std::time::Instant::now();
    let rep = selftest::run_seeded(be, &seeds, &mut |_, _| {});
    for (n, why) in &rep.skipped {
        eprintln!("SKIP {n}: {why}");
    }
    eprintln!(
        "parity wgpu (GEMM {v:?}, {prec:?}, subgroups {}): {} cases passed, {} skipped, {} failed in {:.1} s",
        sg && dev.subgroups,
        rep.passed.len(),
        rep.skipped.len(),
        rep.failed.len(),
        t0.elapsed().as_secs_f64()
    );
    // Every row (or every row KILN_SELFTEST_OP names) passed or was skipped with a listed reason.
    let filter = selftest::Filter::from_env().unwrap();
    let expected = selftest::count(&seeds, &filter, &|_| true);
    if filter == selftest::Filter::all() {
        assert_eq!(expected, 2 * selftest::TABLE_CASES);
        assert!(rep.passed.iter().any(|c| c.contains(" geglu ")), "the GeGLU cases run on wgpu");
    }
    if let Err(e) = rep.verify(expected, kiln_wgpu::PARITY_SKIPS) {
        panic!("GEMM {v} {prec}, subgroups {sg}:\n{e}");
    }
}

/// Ops wgpu does not run in f32, each with its reason in `supports` (none today): a new `Op`
/// without a WGSL kernel fails here until it gets one or is listed.
const NOT_ON_WGPU: &[Op] = &[];

#[test]
fn every_op_runs_in_f32_or_is_listed() {
    let Some(be) = wgpu() else { return };
    for op in Op::ALL {
        match kiln_core::Backend::supports(be, op, kiln_core::DType::F32) {
            Support::Yes => assert!(!NOT_ON_WGPU.contains(&op), "{op} runs on wgpu: take it off NOT_ON_WGPU"),
            Support::No(why) => assert!(NOT_ON_WGPU.contains(&op), "{op} has no WGSL kernel: {why}"),
        }
    }
    // And every op has parity rows that run here (the not-here list is the same, with reasons).
    let not_here: Vec<(Op, &str)> = NOT_ON_WGPU.iter().map(|&op| (op, "no WGSL kernel")).collect();
    kiln_core::selftest::coverage(be, &not_here).unwrap();
}

/// Each GEMM variant, and the kernels with and without subgroups where the adapter has them.
#[test]
fn parity_v2_f32_without_subgroups() {
    parity(GemmVariant::V2, Precision::F32, false);
}

#[test]
fn parity_v3_f16() {
    parity(GemmVariant::V3, Precision::F16, true);
}

#[test]
fn parity_v3_f32() {
    parity(GemmVariant::V3, Precision::F32, true);
}

/// Tensors a backend instance makes carry it: ops on them run its GEMM, whichever instance the
/// caller started from, and another instance's tensors are not disturbed.
#[test]
fn tensors_keep_their_backends_kernels() {
    use kiln_core::Tensor;
    let Some(be) = wgpu() else { return };
    let (v2, v3) = (be.with_gemm(GemmVariant::V2), be.with_gemm(GemmVariant::V3));
    assert!(!std::ptr::eq(v2, v3) && std::ptr::eq(v2, v3.with_gemm(GemmVariant::V2)), "one instance per choice");
    let x = Tensor::from_vec((0..12).map(|i| i as f32).collect::<Vec<_>>(), [3, 4]).unwrap();
    let on2 = v2.upload(&x).unwrap();
    assert_eq!(kiln_wgpu::gemm_kernel(on2.backend()), Some("v2_smem_tiled"));
    let y = on2.backend().scale(&on2, 2.0).unwrap();
    assert_eq!(kiln_wgpu::gemm_kernel(y.backend()), Some("v2_smem_tiled"), "results stay on the instance");
    let on3 = v3.upload(&x).unwrap();
    assert_eq!(kiln_wgpu::gemm_kernel(on3.backend()), Some("v3_register_blocked"));
    let f16 = kiln_wgpu::with_precision(on3.backend(), Precision::F16).unwrap();
    assert_eq!(
        kiln_wgpu::WgpuBackend::of(f16).map(|b| (b.gemm(), b.precision())),
        Some((GemmVariant::V3, Precision::F16))
    );
    assert!(
        kiln_wgpu::with_precision(&kiln_core::CpuBackend, Precision::F16).is_none(),
        "the CPU is not a wgpu backend"
    );
}

#[test]
fn sixteen_bit_weights_stay_sixteen_bit_on_the_device() {
    use kiln_core::{DType, Tensor};
    let Some(be) = wgpu() else { return };
    for dt in [DType::F16, DType::BF16] {
        let v: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let t = Tensor::from_vec(v, [37]).unwrap().to_dtype(dt).unwrap();
        let d = be.upload(&t).unwrap();
        assert_eq!(d.dtype(), dt, "kept in its type on the device");
        let back = d.to_cpu().unwrap();
        assert_eq!(back.dtype(), dt);
        assert_eq!(back.to_vec_f64().unwrap(), t.to_vec_f64().unwrap(), "{}: round trip", dt.name());
        let wide = be.cast(&d, DType::F32).unwrap();
        assert_eq!(wide.to_vec_f64().unwrap(), t.to_vec_f64().unwrap(), "{}: widened exactly", dt.name());
    }
}

/// The f16 GEMM rounds to f16 (it differs from f32 by more than f32 rounding), and its
/// power-of-two operand scaling keeps gradient-sized (1e-9) and large (1e6) values that f16
/// alone would flush to zero or overflow; a NaN input reaches the output.
#[test]
fn f16_gemm_scales_its_operands() {
    use kiln_core::Tensor;
    let Some(be) = wgpu() else { return };
    let dev = kiln_wgpu::runtime::device().unwrap();
    if !dev.shader_f16 {
        assert!(std::env::var_os("CI").is_none(), "CI's adapter must have SHADER_F16");
        eprintln!("SKIP f16 GEMM: the adapter has no SHADER_F16");
        return;
    }
    let (m, k, n) = (37, 131, 29);
    let mut rng = kiln_core::rng::Rng::new(7);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    let reference = |sa: f64, sb: f64| -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|l| a[i * k + l] as f64 * sa * b[l * n + j] as f64 * sb).sum();
            }
        }
        c
    };
    let run_on = |be: &WgpuBackend, sa: f32, sb: f32| -> Vec<f64> {
        let ta = Tensor::from_vec(a.iter().map(|v| v * sa).collect::<Vec<_>>(), [m, k]).unwrap();
        let tb = Tensor::from_vec(b.iter().map(|v| v * sb).collect::<Vec<_>>(), [k, n]).unwrap();
        let c = be.matmul(&be.upload(&ta).unwrap(), &be.upload(&tb).unwrap(), false, false).unwrap();
        c.to_vec_f64().unwrap()
    };
    // Worst error relative to the output's largest magnitude.
    let err = |got: &[f64], want: &[f64]| -> f64 {
        let scale = want.iter().fold(0.0f64, |x, y| x.max(y.abs()));
        got.iter()
            .zip(want)
            .map(|(g, w)| if g.is_finite() { (g - w).abs() / scale } else { f64::INFINITY })
            .fold(0.0, f64::max)
    };
    let (f32_be, be) = (be.with_precision(Precision::F32), be.with_precision(Precision::F16));
    let run = |sa: f32, sb: f32| run_on(be, sa, sb);
    let e32 = err(&run_on(f32_be, 1.0, 1.0), &reference(1.0, 1.0));
    let e16 = err(&run(1.0, 1.0), &reference(1.0, 1.0));
    eprintln!("f16 GEMM: max error {e16:.2e} of the output scale (f32 GEMM: {e32:.2e})");
    assert!(e32 < 1e-6, "f32 GEMM error {e32:e}");
    assert!(e16 > 4.0 * e32 && e16 > 1e-6, "the f16 GEMM must round to f16 (error {e16:e} vs f32's {e32:e})");
    assert!(e16 < 3e-3, "f16 GEMM error {e16:e}");
    for (sa, sb) in [(1e-9f32, 1e-7f32), (1e6, 1e3), (3e-30, 1e20)] {
        let e = err(&run(sa, sb), &reference(sa as f64, sb as f64));
        eprintln!("f16 GEMM, operands ×{sa:e} and ×{sb:e}: max error {e:.2e}");
        assert!(e < 3e-3, "scaled by {sa:e}, {sb:e}: error {e:e}");
    }
    let mut an = a.clone();
    an[5 * k + 3] = f32::NAN;
    let ta = be.upload(&Tensor::from_vec(an, [m, k]).unwrap()).unwrap();
    let tb = be.upload(&Tensor::from_vec(b.clone(), [k, n]).unwrap()).unwrap();
    let c = be.matmul(&ta, &tb, false, false).unwrap().to_vec_f64().unwrap();
    assert!(c[5 * n..6 * n].iter().all(|v| v.is_nan()), "a NaN in row 5 of A makes row 5 of C NaN");
    assert!(c[..5 * n].iter().all(|v| v.is_finite()), "the other rows stay finite");
}

/// Tensors larger than a storage binding: with kiln's binding size lowered to 32 KiB, every
/// table case but attention's (up to 280 KB tensors: GEMM operands, packed weights and
/// tables, logits rows, 70 001-element vectors) runs split across bindings and still matches
/// the CPU, in f32 and with the f16 GEMMs; attention, which does not split, says so.
#[test]
fn large_tensors_split_across_bindings() {
    let Some(be) = wgpu() else { return };
    let dev = kiln_wgpu::runtime::device().unwrap();
    // The lowered limit holds for this test's thread only: the other tests keep the adapter's.
    dev.with_max_binding(32 * 1024, || {
        let not_attention = |c: &selftest::Case| !c.name.starts_with("attention");
        for prec in Precision::ALL {
            let be = be.with_gemm(GemmVariant::V3).with_precision(prec);
            // Inputs of its own (not those of the parity configurations).
            let seeds = selftest::seeds_for(&format!("wgpu split at 32 KiB {prec:?}"));
            let all = selftest::Filter::all();
            let rep = selftest::run_pass(be, &seeds, &all, &not_attention, &mut |_, _| {});
            let expected = selftest::count(&seeds, &all, &not_attention);
            assert!(expected > 100 && expected < 2 * selftest::TABLE_CASES, "{expected} cases split");
            eprintln!(
                "split at 32 KiB ({prec:?} GEMMs): {} of {expected} cases passed, {} skipped",
                rep.passed.len(),
                rep.skipped.len()
            );
            if let Err(e) = rep.verify(expected, kiln_wgpu::PARITY_SKIPS) {
                panic!("{prec:?}:\n{e}");
            }
        }
        let be = be.with_precision(Precision::F32);
        let attn = kiln_core::selftest::run_where(be, &|c| c.name.contains("t70 hq9"), &mut |_, _| {});
        assert!(!attn.failed.is_empty(), "a 161 KB attention input must not fit 32 KiB");
        for (case, e) in &attn.failed {
            assert!(e.contains("storage binding limit") && e.contains("does not split"), "{case}: {e}");
        }
    });
    assert_eq!(dev.max_binding(), dev.limits.max_storage_buffer_binding_size, "the adapter's limit is back");
}

/// Casts to bf16/f16 round to nearest even bit for bit as the CPU does (ties, overflow to
/// infinity, f16 subnormals, NaN), and block-quantized tensors decode bit-exactly.
#[test]
fn casts_are_bit_exact() {
    use kiln_core::{DType, Tensor};
    let Some(be) = wgpu() else { return };
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        65504.0,
        65519.99,
        65520.0,
        -70000.0,
        6.1e-5,
        6.0e-5,
        3.0e-8,
        2.9802322e-8,
        2.98e-8,
        5.96e-8,
        1e-10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        f32::from_bits(0x3f228007),
    ];
    let mut rng = kiln_core::rng::Rng::new(11);
    // Random bit patterns across the exponent range, and values near f16's subnormal range.
    v.extend((0..3000).map(|_| f32::from_bits((rng.next_u64() >> 32) as u32)).filter(|x| !x.is_nan()));
    v.extend((0..1000).map(|i| (rng.normal() as f32) * 1e-5 * (i as f32 / 100.0)));
    let t = Tensor::from_vec(v.clone(), [v.len()]).unwrap();
    let d = be.upload(&t).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let want = t.to_dtype(dt).unwrap();
        let got = be.cast(&d, dt).unwrap();
        assert_eq!(got.dtype(), dt, "a 16-bit tensor on the device");
        let got = got.to_cpu().unwrap();
        let (g, w) = (got.raw_bytes().unwrap(), want.raw_bytes().unwrap());
        let bad: Vec<usize> = (0..v.len()).filter(|&i| g[2 * i..2 * i + 2] != w[2 * i..2 * i + 2]).collect();
        assert!(
            bad.is_empty(),
            "{}: {} of {} differ, e.g. {:?}",
            dt.name(),
            bad.len(),
            v.len(),
            &bad[..bad.len().min(5)].iter().map(|&i| v[i]).collect::<Vec<_>>()
        );
    }
    // NaN stays NaN.
    let nan = be.upload(&Tensor::from_vec(vec![f32::NAN, 1.0, f32::NAN], [3]).unwrap()).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let back = be.cast(&nan, dt).unwrap().to_cpu().unwrap().to_vec_f64().unwrap();
        assert!(back[0].is_nan() && back[1] == 1.0 && back[2].is_nan(), "{}: {back:?}", dt.name());
    }
    use kiln_core::quant::GgmlType as G;
    for ty in [G::Q8_0, G::Q4_0, G::Q4_1, G::Q5_0, G::Q4K, G::Q5K, G::Q6K, G::NF4, G::NF4DQ] {
        let x: Vec<f32> = (0..7 * 256).map(|_| rng.normal() as f32).collect();
        let q = kiln_core::quant::quantize(ty, &x).unwrap();
        let qt = Tensor::from_quant_bytes(q, ty, [7, 256]).unwrap();
        let want = qt.to_dtype(DType::F32).unwrap().to_vec_f32().unwrap();
        let got = be.cast(&be.upload(&qt).unwrap(), DType::F32).unwrap().to_vec_f32().unwrap();
        assert!(want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()), "{} decodes bit-exactly", ty.name());
    }
}

#[test]
fn pooled_buffers_come_back_poisoned() {
    if wgpu().is_none() {
        return;
    }
    let dev = kiln_wgpu::runtime::device().unwrap();
    // A buffer holding zeros goes back to the pool; the next one of its size class is the same
    // buffer, and must come out as NaN bytes, not as the zeros an earlier op left.
    drop(dev.write(&[0u8; 4096]).unwrap());
    let b = dev.alloc(4096).unwrap();
    let bytes = dev.read(b.raw(), 0, 4096).unwrap();
    assert!(bytes.iter().all(|&x| x == 0xFF), "a pooled buffer kept its old contents");
}
