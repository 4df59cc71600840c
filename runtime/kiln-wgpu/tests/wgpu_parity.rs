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

/// A deliberately broken GEMM (issue 24's "Verify"): the grid counts whole tiles of columns, so
/// a product whose column count is ragged and spans more than one tile never launches its last,
/// partial column of tiles. On the matmul family's rows with poisoned buffers, under each f32
/// GEMM variant (16- and 64-wide tiles), every row the fault reaches fails on
/// the NaN the missed tile leaves (or, where the tile belongs to a product accumulated into an
/// output already written, on the term it lacks), and every other row passes; the same
/// instances without the fault pass those rows; a product of whole tiles is right even with
/// the fault.
#[test]
fn a_missed_tail_tile_fails_the_matmul_rows() {
    use kiln_core::Tensor;
    use kiln_core::selftest::{Case, run_where};
    use kiln_wgpu::GemmFault;
    let Some(be) = wgpu() else { return };
    // The matmul family's rows that run here (the 16-bit-activation rows are allow-listed skips).
    let matmul_rows = |c: &Case| c.op.family() == "matmul" && !c.name.ends_with(" activations");
    let (m, k, n) = (64, 128, 128);
    let mut rng = kiln_core::rng::Rng::new(5);
    let a = Tensor::from_vec((0..m * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [m, k]).unwrap();
    let b = Tensor::from_vec((0..k * n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [k, n]).unwrap();
    let want = kiln_core::CpuBackend.matmul(&a, &b, false, false).unwrap().to_vec_f64().unwrap();
    // The f32 GEMMs: the f16 GEMM launches the same grid as v3 (`groups64`), and its rows'
    // tolerance is the f16 rounding's, which is not what this test is about.
    let prec = Precision::F32;
    for v in GemmVariant::ALL {
        let clean = be.with_gemm(v).with_precision(prec).with_fault(None);
        let broken = clean.with_fault(Some(GemmFault::DropLastTile));
        assert!(!std::ptr::eq(clean, broken) && std::ptr::eq(broken.with_fault(None), clean), "one instance each");
        let t0 = std::time::Instant::now();
        // Each case's outcome, and whether the fault dropped a tile in it (only this test runs
        // a faulty instance, so the count moves only here).
        let mut seen: Vec<(String, bool, Option<String>)> = Vec::new();
        let mut dropped = WgpuBackend::dropped_tiles();
        let rep = run_where(broken, &matmul_rows, &mut |name, msg| {
            let now = WgpuBackend::dropped_tiles();
            seen.push((name.to_string(), now > dropped, msg.map(str::to_string)));
            dropped = now;
        });
        let reached = seen.iter().filter(|s| s.1).count();
        eprintln!(
            "GEMM {v} {prec} dropping its last tile: reached {reached} of {} rows; {} failed, {} passed in {:.1}s",
            seen.len(),
            rep.failed.len(),
            rep.passed.len(),
            t0.elapsed().as_secs_f64()
        );
        let rows = kiln_core::selftest::count(&kiln_core::selftest::DEFAULT_SEEDS, &Default::default(), &matmul_rows);
        assert_eq!(seen.len(), rows, "every matmul row ran");
        assert!(rep.verify(rows, kiln_wgpu::PARITY_SKIPS).is_err());
        assert!(rep.skipped.is_empty(), "{:#?}", rep.skipped);
        assert!(reached >= 10, "{v} {prec}: the fault reached only {reached} rows");
        for (case, hit, msg) in &seen {
            match msg {
                Some(e) => assert!(*hit, "{case} failed where the fault did not reach: {e}"),
                None => assert!(!hit, "{case}: a tile was dropped, yet it passed"),
            }
        }
        assert_eq!(rep.failed.len(), reached);
        // Where the missed tile belongs to a product written into a fresh buffer, its outputs
        // are the poison's NaN; where it belongs to one accumulated into an output already
        // right (a LoRA term added to x·Wᵀ), they lack the term and fail the bound instead.
        let (nan, off): (Vec<_>, Vec<_>) = rep.failed.iter().partition(|(_, e)| e.contains("non-finite output"));
        eprintln!("  {} rows caught by the poison, {} by the bound:", nan.len(), off.len());
        for (_, e) in &off {
            eprintln!("    {e}");
            assert!(e.contains(": element "), "{e}");
        }
        assert!(nan.len() >= off.len(), "{v} {prec}: the poison shows through in most rows");
        // Whole tiles: nothing is dropped, the product is right.
        let before = WgpuBackend::dropped_tiles();
        let c = broken.matmul(&broken.upload(&a).unwrap(), &broken.upload(&b).unwrap(), false, false).unwrap();
        assert_eq!(WgpuBackend::dropped_tiles(), before, "no tile of a {m}×{k}·{k}×{n} product is partial");
        let got = c.to_vec_f64().unwrap();
        // Worst error relative to the output's largest magnitude.
        let scale = want.iter().fold(0.0f64, |x, y| x.max(y.abs()));
        let worst = got.iter().zip(&want).map(|(g, w)| (g - w).abs() / scale).fold(0.0, f64::max);
        assert!(worst < 1e-6, "{v}: a {m}×{k}·{k}×{n} product of whole tiles is off by {worst:e}");
        // The rows the fault failed pass on the same instance without it (the parity tests run
        // every row there).
        let failed: Vec<String> = rep.failed.iter().map(|(n, _)| n.clone()).collect();
        let was_failed = |c: &Case| failed.iter().any(|n| n.strip_prefix("wgpu ") == Some(c.name.as_str()));
        let rep = run_where(clean, &was_failed, &mut |_, _| {});
        if let Err(e) = rep.verify(failed.len(), kiln_wgpu::PARITY_SKIPS) {
            panic!("{v} {prec} without the fault, the rows it failed: {e}");
        }
    }
}

/// Why the buffers are poisoned: without it, the GEMM that drops its last tile of columns hands
/// back the right answer when its output buffer comes from the pool holding the same product
/// from a correct kernel (pooled buffers are reused last-in first-out), and the missed tile
/// passes unseen; with poisoning on, the same sequence leaves NaN in those columns. Poisoning is
/// process-wide and the other tests here rely on it, so the test runs itself again in a child
/// process of this test binary (`STALE_CHILD` set), where nothing else runs.
#[test]
fn stale_buffers_hide_a_missed_tile_without_poison() {
    if std::env::var_os(STALE_CHILD).is_some() {
        return stale_buffers_child();
    }
    if wgpu().is_none() {
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["stale_buffers_hide_a_missed_tile_without_poison", "--exact", "--nocapture"])
        .env(STALE_CHILD, "1")
        .output()
        .expect("the test binary runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{}", text.lines().filter(|l| l.starts_with("stale")).collect::<Vec<_>>().join("\n"));
    assert!(out.status.success() && text.contains("stale: with poison"), "the child run failed:\n{text}");
}

/// Set for the child run of [`stale_buffers_hide_a_missed_tile_without_poison`].
const STALE_CHILD: &str = "KILN_TEST_STALE_CHILD";

/// The child run: the process's device, with poisoning off until it is turned on here.
fn stale_buffers_child() {
    use kiln_core::Tensor;
    use kiln_wgpu::GemmFault;
    let be = WgpuBackend::open().expect("the parent opened this adapter");
    let clean = be.with_gemm(GemmVariant::V3).with_precision(Precision::F32).with_fault(None);
    let broken = clean.with_fault(Some(GemmFault::DropLastTile));
    // 40×100 outputs: two 64-wide tiles of columns, the second partial (dropped by the fault).
    // The operands stay uploaded, so only the output buffer goes through the pool.
    let (m, k, n) = (40, 2, 100);
    let mut rng = kiln_core::rng::Rng::new(9);
    let a = Tensor::from_vec((0..m * k).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [m, k]).unwrap();
    let b = Tensor::from_vec((0..k * n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [k, n]).unwrap();
    let (da, db) = (clean.upload(&a).unwrap(), clean.upload(&b).unwrap());
    // The right product, its buffer back in the pool, then the broken one of the same size.
    let twice = |poison: bool| -> (Vec<f32>, Vec<f32>) {
        kiln_wgpu::runtime::device().unwrap().set_poison(poison);
        let right = clean.matmul(&da, &db, false, false).unwrap();
        let want = right.to_vec_f32().unwrap();
        drop(right);
        let dropped = WgpuBackend::dropped_tiles();
        let got = broken.matmul(&da, &db, false, false).unwrap().to_vec_f32().unwrap();
        assert_eq!(WgpuBackend::dropped_tiles(), dropped + 1, "the fault drops the last tile");
        (want, got)
    };
    let cols = |v: &[f32], r: std::ops::Range<usize>| -> Vec<f32> {
        v.chunks(n).flat_map(|row| row[r.clone()].to_vec()).collect()
    };
    let (want, got) = twice(false);
    assert!(want.iter().all(|x| x.is_finite()));
    assert_eq!(got, want, "without poison the dropped tile shows the previous, right answer");
    eprintln!("stale: without poison the broken GEMM returns the right {m}×{n} product, its last tile stale");
    let (want, got) = twice(true);
    assert!(cols(&got, 64..n).iter().all(|x| x.is_nan()), "with poison the dropped tile is NaN");
    assert_eq!(cols(&got, 0..64), cols(&want, 0..64), "the tiles launched are right");
    eprintln!("stale: with poison its last tile is NaN");
}
