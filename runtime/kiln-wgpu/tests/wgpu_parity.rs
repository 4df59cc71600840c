//! The op parity table (`kiln_core::selftest`) on wgpu — in CI on lavapipe (Mesa's CPU Vulkan
//! driver, "llvmpipe"): every case the backend supports must match the f64 CPU reference; cases
//! whose kernels have not landed are listed as skipped with the reason. With no adapter the test
//! fails under CI (the tier must not be skipped) and says why elsewhere.

#[test]
fn wgpu_parity_table() {
    let be = match kiln_wgpu::open() {
        Ok(b) => b,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIP wgpu parity: {e}");
            return;
        }
        Err(e) => panic!("{e}: CI must run the wgpu tier (install mesa-vulkan-drivers libvulkan1)"),
    };
    if let Some(a) = kiln_wgpu::probe().adapters.first() {
        eprintln!("wgpu adapter: {} ({}, {})", a.name, a.backend, a.device_type);
    }
    // Each GEMM variant, and the kernels with and without subgroups where the adapter has them,
    // run the whole table (the defaults last, so they stay chosen).
    use kiln_wgpu::backend::matmul::{Variant, set_variant};
    let dev = kiln_wgpu::runtime::device().unwrap();
    eprintln!("subgroups: {}", dev.subgroups);
    for (v, sg) in [(Variant::V2, false), (Variant::V3, true)] {
        set_variant(v);
        dev.subgroups_on.store(sg, std::sync::atomic::Ordering::Relaxed);
        let rep = kiln_core::selftest::run(be, &mut |_, _| {});
        for (n, why) in &rep.skipped {
            eprintln!("SKIP {n}: {why}");
        }
        assert!(rep.failed.is_empty(), "GEMM {v:?}, subgroups {sg}: {:#?}", rep.failed);
        eprintln!(
            "parity wgpu (GEMM {v:?}, subgroups {}): {} cases passed, {} skipped",
            sg && dev.subgroups,
            rep.passed.len(),
            rep.skipped.len()
        );
        assert!(!rep.passed.is_empty());
    }
}

#[test]
fn sixteen_bit_weights_stay_sixteen_bit_on_the_device() {
    use kiln_core::{DType, Tensor};
    let Ok(be) = kiln_wgpu::open() else {
        assert!(std::env::var_os("CI").is_none(), "CI must run the wgpu tier");
        return;
    };
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
