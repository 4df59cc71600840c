//! The CUDA kernels on the CPU (kiln's emulation harness, `cuda-emu`): the op parity table under
//! every GEMM variant (side by side: each variant is a backend instance of its own), the race
//! checker on the production kernels, and the deliberately broken kernels of
//! `kernels/emu/broken.cu`, each of which the harness must catch.

use bytemuck::{Pod, Zeroable};
use kiln_core::selftest::{self, Case, Filter};
use kiln_cuda::GemmVariant;
use kiln_cuda::backend::{emu, emu_racecheck};
use kiln_cuda::emu::{EmuExec, kernel_names};
use kiln_cuda::exec::{Exec, Launch};

/// `TestParams` of kernels/emu/broken.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TestParams {
    a: u64,
    b: u64,
    c: u64,
    m: i32,
    n: i32,
    k: i32,
    pad: i32,
}

/// The rows `KILN_SELFTEST_OP` names (every row when it is unset), and how many of the cases
/// `keep` accepts a pass over `seeds` has: the exact count its report must give.
fn expected(seeds: &[u64], keep: &dyn Fn(&Case) -> bool) -> usize {
    selftest::count(seeds, &Filter::from_env().expect("KILN_SELFTEST_OP names ops"), keep)
}

/// The seeds of a variant pass: each draws inputs of its own (a kernel that leaves an output
/// unwritten cannot inherit another pass's answer to the same inputs).
fn seeds(pass: &str) -> [u64; 2] {
    selftest::seeds_for(&format!("cuda-emu {pass}"))
}

#[test]
fn parity_table_under_every_gemm_variant() {
    let be = emu();
    // Every variant at once, each on its own instance of the one emulated device.
    let reports: Vec<_> = std::thread::scope(|s| {
        let runs: Vec<_> = GemmVariant::ALL
            .map(|v| {
                s.spawn(move || {
                    let t0 = std::time::Instant::now();
                    let rep = selftest::run_seeded(be.with_gemm(v), &seeds(v.full_name()), &mut |_, _| {});
                    (v, rep, t0.elapsed().as_secs_f64())
                })
            })
            .into_iter()
            .collect();
        runs.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
    });
    for (v, rep, secs) in &reports {
        eprintln!(
            "parity cuda-emu (GEMM {v}): {} passed, {} skipped, {} failed, {secs:.1} s",
            rep.passed.len(),
            rep.skipped.len(),
            rep.failed.len()
        );
        for (n, why) in &rep.skipped {
            eprintln!("SKIP {n}: {why}");
        }
    }
    for (v, rep, _) in &reports {
        // The whole table (or the rows KILN_SELFTEST_OP names), every case passed or skipped
        // with a listed reason.
        let n = expected(&seeds(v.full_name()), &|_| true);
        if Filter::from_env() == Ok(Filter::all()) {
            assert_eq!(n, 2 * selftest::TABLE_CASES);
        }
        if let Err(e) = rep.verify(n, kiln_cuda::PARITY_SKIPS) {
            panic!("GEMM {v}:\n{e}");
        }
    }
    eight_bit_adamw_from_zero_state_is_adamw(be);
    // Every production kernel ran (a variant that silently fell back to another would not).
    let ran = be.exec.launched();
    let mut missing = Vec::new();
    for (file, src) in kiln_cuda::kernels::SOURCES {
        for name in kiln_cuda::kernels::entry_points(src) {
            if !ran.contains(&name) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    // (Only the whole table reaches every kernel: KILN_SELFTEST_OP narrows it.)
    if Filter::from_env() == Ok(Filter::all()) {
        assert!(missing.is_empty(), "kernels the parity table never launched: {missing:#?}");
    }
}

/// Ops the CUDA backend does not run, each with its reason (none today): a new `Op` without a
/// CUDA kernel, or without parity rows that reach this backend, fails here until it gets one or
/// is listed.
const NOT_ON_CUDA: &[(kiln_core::backend::Op, &str)] = &[];

#[test]
fn every_op_has_parity_rows_that_run_on_cuda() {
    selftest::coverage(emu(), NOT_ON_CUDA).unwrap();
}

#[test]
fn production_kernels_are_race_free() {
    // The race-checking device: v3 runs the tensor-core kernels for 16-bit weights and the tiled
    // ones for f32 and quantized bases (the naive kernels share no memory between threads); v4's
    // pipelined kernel, v5's wgmma one and v6's cp.async ring (with its packing and decoding)
    // are checked on the linear cases. Each pass on inputs of its own, one seed: a row's shapes,
    // and so its kernels' control flow and shared-memory traffic, are the same under every seed
    // (the second seed of the parity passes is about values, which the race checker ignores).
    let be = emu_racecheck();
    let t0 = std::time::Instant::now();
    let s3 = [seeds("race check v3_mma")[0]];
    let rep = selftest::run_seeded(be.with_gemm(GemmVariant::V3), &s3, &mut |_, _| {});
    eprintln!(
        "race check over the parity table: {} cases passed, {} skipped, {:.1} s",
        rep.passed.len(),
        rep.skipped.len(),
        t0.elapsed().as_secs_f64()
    );
    let mut all: Vec<String> = Vec::new();
    if let Err(e) = rep.verify(expected(&s3, &|_| true), kiln_cuda::PARITY_SKIPS) {
        all.push(format!("v3_mma:\n{e}"));
    }
    let filter = Filter::from_env().expect("KILN_SELFTEST_OP names ops");
    let linear = |c: &Case| c.op == kiln_core::backend::Op::Linear;
    for v in [GemmVariant::V4, GemmVariant::V5, GemmVariant::V6, GemmVariant::V7] {
        let sv = [seeds(&format!("race check {v}"))[0]];
        let t0 = std::time::Instant::now();
        let rep = selftest::run_pass(be.with_gemm(v), &sv, &filter, &linear, &mut |_, _| {});
        let n = expected(&sv, &linear);
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("race check, GEMM {v}: {} of {n} linear cases passed, {secs:.1} s", rep.passed.len());
        if let Err(e) = rep.verify(n, kiln_cuda::PARITY_SKIPS) {
            all.push(format!("{v}:\n{e}"));
        }
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn every_kernel_source_entry_is_built() {
    let built = kernel_names();
    for (file, src) in kiln_cuda::kernels::SOURCES {
        for name in kiln_cuda::kernels::entry_points(src) {
            assert!(built.contains(&name), "{file}: {name} missing from the emulation build {built:?}");
        }
    }
}

fn run(
    kernel: &str,
    cfg: Launch,
    a: &[f32],
    b: &[f32],
    out_len: usize,
    mnk: (i32, i32, i32),
    rc: bool,
) -> Result<Vec<f32>, String> {
    let ex = EmuExec::default();
    let (ha, hb) = (ex.upload(bytemuck::cast_slice(a)).unwrap(), ex.upload(bytemuck::cast_slice(b)).unwrap());
    let hc = ex.alloc_zeroed(out_len * 4).unwrap();
    let p = TestParams { a: ha.ptr, b: hb.ptr, c: hc.ptr, m: mnk.0, n: mnk.1, k: mnk.2, pad: 0 };
    ex.launch_checked(kernel, cfg, bytemuck::bytes_of(&p), rc).map_err(|e| e.to_string())?;
    Ok(bytemuck::pod_collect_to_vec(&ex.download(&hc, 0, out_len * 4).unwrap()))
}

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = kiln_core::rng::Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

fn matmul_ref(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|q| a[i * k + q] as f64 * b[q * n + j] as f64).sum::<f64>() as f32;
        }
    }
    c
}

fn close(got: &[f32], want: &[f32], tol: f32) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| g.is_finite() && (g - w).abs() <= tol * (1.0 + w.abs()))
}

/// Dynamic shared memory is 16-byte aligned and no more, as a GPU guarantees: a kernel that
/// assumes a 128-byte (TMA/swizzle) alignment without asking for it misbehaves here first.
#[test]
fn dynamic_shared_memory_is_only_16_byte_aligned() {
    let cfg = Launch { grid: [1, 1, 1], block: [32, 1, 1], smem: 4096 };
    let got = run("probe_dyn_smem_alignment", cfg, &[0.0], &[0.0], 2, (0, 0, 0), false).unwrap();
    assert_eq!(got, vec![16.0, 0.0], "base address mod 128 and mod 16");
}

/// Above 48 KiB of dynamic shared memory a launch needs the function attribute first, on the GPU
/// and here: a kernel launched without it fails in the emulation, not only on a GPU.
#[test]
fn dynamic_shared_memory_above_48_kib_needs_the_grant() {
    let ex = EmuExec::default();
    let out = ex.alloc_zeroed(8).unwrap();
    let p = TestParams { a: 0, b: 0, c: out.ptr, m: 0, n: 0, k: 0, pad: 0 };
    let cfg = Launch { grid: [1, 1, 1], block: [32, 1, 1], smem: 64 << 10 };
    let e = ex.launch_without_grant("probe_dyn_smem_alignment", cfg, bytemuck::bytes_of(&p)).unwrap_err().to_string();
    assert!(e.contains("48 KiB") && e.contains("MAX_DYNAMIC_SHARED_SIZE_BYTES"), "{e}");
    ex.launch_checked("probe_dyn_smem_alignment", cfg, bytemuck::bytes_of(&p), false).expect("granted on the way");
    let e = ex.grant_dyn_smem("probe_dyn_smem_alignment", 300 << 10).unwrap_err().to_string();
    assert!(e.contains("more than the"), "{e}");
    ex.launch_without_grant("probe_dyn_smem_alignment", Launch { smem: 48 << 10, ..cfg }, bytemuck::bytes_of(&p))
        .expect("48 KiB needs no grant");
}

#[test]
fn a_missing_barrier_is_reported_as_a_race_and_fails_parity() {
    let (m, n) = (45, 37);
    let a = rand(m * n, 3);
    let want: Vec<f32> = (0..n * m).map(|e| a[(e % m) * n + e / m]).collect();
    let cfg = Launch { grid: [2, 2, 1], block: [32, 8, 1], smem: 0 };
    let ok = run("ok_transpose", cfg, &a, &[0.0], n * m, (m as i32, n as i32, 0), true).expect("the correct twin");
    assert_eq!(ok, want, "the correct transpose");
    let e = run("broken_transpose_no_barrier", cfg, &a, &[0.0], n * m, (m as i32, n as i32, 0), true).unwrap_err();
    assert!(e.contains("race on address") && e.contains("with no barrier between"), "{e}");
    eprintln!("race report: {}", e.lines().take(2).collect::<Vec<_>>().join(" | "));
    // Without the race checker the same bug shows as wrong values.
    let bad = run("broken_transpose_no_barrier", cfg, &a, &[0.0], n * m, (m as i32, n as i32, 0), false).unwrap();
    assert_ne!(bad, want);
}

#[test]
fn an_off_by_one_tile_index_fails_parity() {
    let (m, n, k) = (19, 23, 40);
    let (a, b) = (rand(m * k, 4), rand(k * n, 5));
    let want = matmul_ref(&a, &b, m, n, k);
    let cfg = Launch { grid: [2, 2, 1], block: [16, 16, 1], smem: 0 };
    let mnk = (m as i32, n as i32, k as i32);
    assert!(close(&run("ok_tiled_matmul", cfg, &a, &b, m * n, mnk, true).unwrap(), &want, 1e-5));
    let bad = run("broken_tiled_matmul_off_by_one", cfg, &a, &b, m * n, mnk, true).unwrap();
    assert!(!close(&bad, &want, 1e-2));
}

#[test]
fn mma_fragments_follow_the_ptx_layout_and_a_swap_is_caught() {
    // bf16-exact inputs (small integers), so every correct path is exact.
    let a: Vec<f32> = (0..256).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
    let b: Vec<f32> = (0..128).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    let want = matmul_ref(&a, &b, 16, 8, 16);
    let cfg = Launch { grid: [1, 1, 1], block: [32, 1, 1], smem: 0 };
    for k in ["ok_mma_16816", "ok_mma_16816_shuffles", "ok_mma_ldmatrix"] {
        assert_eq!(run(k, cfg, &a, &b, 128, (16, 8, 16), true).unwrap(), want, "{k}");
    }
    let bad = run("broken_mma_swapped_fragment", cfg, &a, &b, 128, (16, 8, 16), false).unwrap();
    assert_ne!(bad, want);
}

#[test]
fn wgmma_follows_the_ptx_descriptor_layout_and_its_misuse_is_caught() {
    // bf16-exact inputs: the correct tile is exact.
    let a: Vec<f32> = (0..64 * 16).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
    let b: Vec<f32> = (0..16 * 128).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    let want = matmul_ref(&a, &b, 64, 128, 16);
    let cfg = Launch { grid: [1, 1, 1], block: [128, 1, 1], smem: 2048 + 4096 };
    let mnk = (64, 128, 16);
    assert_eq!(run("ok_wgmma_tile", cfg, &a, &b, 64 * 128, mnk, true).unwrap(), want);
    // LBO and SBO swapped: A is read with the wrong strides (with room for them, wrong values;
    // without, a read past the shared memory the launch gave).
    let roomy = Launch { smem: 16 << 10, ..cfg };
    assert_ne!(run("broken_wgmma_lbo_sbo_swapped", roomy, &a, &b, 64 * 128, mnk, false).unwrap(), want);
    let e = run("broken_wgmma_lbo_sbo_swapped", cfg, &a, &b, 64 * 128, mnk, false).unwrap_err();
    assert!(e.contains("outside the block's dynamic shared memory"), "{e}");
    // Reading the accumulators before wgmma.wait_group: the product is not there yet.
    assert_ne!(run("broken_wgmma_read_before_wait", cfg, &a, &b, 64 * 128, mnk, false).unwrap(), want);
    // Writing an operand while the wgmma is in flight.
    let e = run("broken_wgmma_store_in_flight", cfg, &a, &b, 64 * 128, mnk, false).unwrap_err();
    assert!(e.contains("in flight"), "{e}");
    // Staging the operands without fence.proxy.async: the race checker reports it (without
    // it the emulation, like a lucky GPU, computes the right values).
    let e = run("broken_wgmma_no_proxy_fence", cfg, &a, &b, 64 * 128, mnk, true).unwrap_err();
    assert!(e.contains("no fence.proxy.async"), "{e}");
    assert_eq!(run("broken_wgmma_no_proxy_fence", cfg, &a, &b, 64 * 128, mnk, false).unwrap(), want);
    // Leaving the kernel with a wgmma never waited for.
    let e = run("broken_wgmma_never_waited", cfg, &a, &b, 64 * 128, mnk, false).unwrap_err();
    assert!(e.contains("never waited"), "{e}");
    // A block that is not whole warpgroups.
    let e = run("ok_wgmma_tile", Launch { block: [96, 1, 1], ..cfg }, &a, &b, 64 * 128, mnk, false).unwrap_err();
    assert!(e.contains("warpgroup"), "{e}");
    // Too little dynamic shared memory for the operands the descriptors name.
    let e = run("ok_wgmma_tile", Launch { smem: 4096, ..cfg }, &a, &b, 64 * 128, mnk, false).unwrap_err();
    assert!(e.contains("shared memory"), "{e}");
}

#[test]
fn a_shuffle_naming_exited_lanes_is_reported() {
    let a = rand(40, 6);
    let cfg = Launch { grid: [1, 1, 1], block: [64, 1, 1], smem: 0 };
    let e = run("broken_shfl_exited_lane", cfg, &a, &[0.0], 2, (0, 40, 0), false).unwrap_err();
    assert!(e.contains("exited") || e.contains("deadlock"), "{e}");
    eprintln!("exited-lane report: {e}");
}

#[test]
fn launch_errors_read_like_the_gpu() {
    let ex = EmuExec::default();
    let p = TestParams::zeroed();
    let big = Launch { grid: [1, 1, 1], block: [2048, 1, 1], smem: 0 };
    let e = ex.launch("ok_transpose", big, bytemuck::bytes_of(&p)).unwrap_err().to_string();
    assert!(e.contains("CUDA_ERROR_INVALID_VALUE") && e.contains("1024"), "{e}");
    let smem = Launch { grid: [1, 1, 1], block: [32, 1, 1], smem: 300 * 1024 };
    let e = ex.launch("ok_transpose", smem, bytemuck::bytes_of(&p)).unwrap_err().to_string();
    assert!(e.contains("shared memory"), "{e}");
    let e = ex.launch("no_such_kernel", smem, bytemuck::bytes_of(&p)).unwrap_err().to_string();
    assert!(e.contains("CUDA_ERROR_NOT_FOUND"), "{e}");
    let e = ex.launch("ok_transpose", Launch::linear(1, 32), &[0u8; 3]).unwrap_err().to_string();
    assert!(e.contains("parameters"), "{e}");
}

#[test]
fn blocks_of_1024_threads_run() {
    let n = 1024 * 3 + 17;
    let a = rand(n, 7);
    let ex = EmuExec::default();
    let ha = ex.upload(bytemuck::cast_slice(&a)).unwrap();
    let out = ex.alloc(8 * 4).unwrap();
    let p = kiln_cuda::kernels::EwParams { a: ha.ptr, b: 0, out: out.ptr, n: n as i64, s: 0.0, pad: 0 };
    // sum_squares keeps 8 warp partials: it declares __launch_bounds__(256), which the launch
    // enforces as the GPU does.
    let e = ex.launch("sum_squares_f32", Launch::linear(4, 1024), bytemuck::bytes_of(&p)).unwrap_err();
    assert!(e.to_string().contains("__launch_bounds__(256)"), "{e}");
    let t0 = std::time::Instant::now();
    let hb = ex.alloc(4 * 17).unwrap();
    let rp = kiln_cuda::kernels::ReduceParams { a: ha.ptr, out: hb.ptr, rows: (n / 17) as i64, cols: 17 };
    ex.launch("col_sum_f32", Launch::linear(1, 1024), bytemuck::bytes_of(&rp)).unwrap();
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&ex.download(&hb, 0, 4 * 17).unwrap());
    for (j, g) in got.iter().enumerate() {
        let want: f32 = (0..n / 17).map(|i| a[i * 17 + j]).sum();
        assert!((g - want).abs() < 1e-4, "column {j}");
    }
    eprintln!("1024-thread block: {:?}", t0.elapsed());
}

#[test]
fn fibers_switch_fast_enough_for_1024_thread_blocks() {
    // One fiber per GPU thread: each barrier costs one switch per thread. This measures it (the
    // figure in bench/RESULTS.md) and checks every thread passed every barrier.
    let (threads, barriers) = (1024usize, 200i32);
    let cfg = Launch { grid: [1, 1, 1], block: [threads as u32, 1, 1], smem: 0 };
    let t0 = std::time::Instant::now();
    let got = run("ok_barrier_loop", cfg, &[0.0], &[0.0], threads, (0, 0, barriers), false).unwrap();
    let dt = t0.elapsed().as_secs_f64();
    assert!(got.iter().all(|&v| v == barriers as f32));
    let switches = (threads * (barriers as usize + 1)) as f64;
    eprintln!("fiber switches: {switches} in {:.1} ms = {:.2} µs each", dt * 1e3, dt / switches * 1e6);
}

#[test]
fn dequantization_is_bit_exact_with_the_cpu_for_every_block_type() {
    use kiln_core::backend::MemoryOps;
    use kiln_core::quant::GgmlType as G;
    let be = emu();
    for (i, ty) in
        [G::Q8_0, G::Q4_0, G::Q4_1, G::Q5_0, G::Q4K, G::Q5K, G::Q6K, G::NF4, G::NF4DQ].into_iter().enumerate()
    {
        // Ragged row counts; rows of 256 values (the K-quant super-block).
        let (rows, k) = (3 + 2 * i, 256);
        let x = rand(rows * k, 40 + i as u64);
        let q = kiln_core::quant::quantize(ty, &x).unwrap();
        let t = kiln_core::Tensor::from_quant_bytes(q, ty, [rows, k]).unwrap();
        let want = t.to_dtype(kiln_core::DType::F32).unwrap().to_vec_f32().unwrap();
        let dev = be.upload(&t).unwrap();
        assert_eq!(
            dev.to_cpu().unwrap().raw_bytes().unwrap(),
            t.raw_bytes().unwrap(),
            "{}: bytes round trip",
            ty.name()
        );
        let got = be.cast(&dev, kiln_core::DType::F32).unwrap().to_vec_f32().unwrap();
        let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{}: dequantized values differ from the CPU's", ty.name());
        // Straight to the tensor cores' types: the same values rounded to nearest even.
        for dt in [kiln_core::DType::BF16, kiln_core::DType::F16] {
            let got = be.cast(&dev, dt).unwrap().to_cpu().unwrap();
            assert_eq!(got.dtype(), dt);
            let want16 = kiln_core::Tensor::from_vec(want.clone(), [rows, k]).unwrap().to_dtype(dt).unwrap();
            assert_eq!(got.to_vec_f64().unwrap(), want16.to_vec_f64().unwrap(), "{} to {}", ty.name(), dt.name());
        }
    }
}

#[test]
fn cp_async_wrappers_copy_through_shared_memory() {
    let a = rand(256, 9);
    let cfg = Launch { grid: [1, 1, 1], block: [32, 1, 1], smem: 0 };
    let got = run("ok_cp_async_copy", cfg, &a, &[0.0], 256, (0, 0, 0), true).unwrap();
    let want: Vec<f32> = (0..256).map(|e| a[(e / 128) * 128 + (e % 128 + 1) % 128] * 2.0).collect();
    assert_eq!(got, want);
}

/// cp.async is asynchronous in the emulation as on a GPU: the bytes land at the wait that covers
/// their group. A read before the wait, a wait that leaves the group in flight, and a thread that
/// never waits are caught (NaN poison, or a trap); the predicated form copies or zero-fills.
#[test]
fn cp_async_reads_before_their_wait_are_caught() {
    let a = rand(256, 10);
    let cfg = Launch { grid: [1, 1, 1], block: [32, 1, 1], smem: 0 };
    for kernel in ["broken_cp_async_read_before_wait", "broken_cp_async_wait_leaves_the_group"] {
        let got = run(kernel, cfg, &a, &[0.0], 256, (0, 0, 0), false).unwrap();
        assert!(got.iter().any(|v| v.is_nan()), "{kernel}: the unwaited tile was read as data");
    }
    let e = run("broken_cp_async_never_waited", cfg, &a, &[0.0], 256, (0, 0, 0), false).unwrap_err();
    assert!(e.contains("never waited"), "{e}");
    let got = run("ok_cp_async_zfill", cfg, &a, &[0.0], 256, (0, 0, 0), true).unwrap();
    let want: Vec<f32> = (0..256).map(|e| if e < 128 || (e % 128 / 4) % 2 == 0 { a[e] } else { 0.0 }).collect();
    assert_eq!(got, want);
}

#[test]
fn casts_round_to_nearest_even_like_the_cpu() {
    use kiln_core::backend::MemoryOps;
    use kiln_core::{DType, Tensor};
    let be = emu();
    // Random values plus the awkward ones: ties, subnormals of f16, overflow to infinity.
    let mut v = rand(4099, 11);
    v.extend([1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, 6.0e-8, 3.0e-5, 65520.0, -1.0e6, 0.0, -0.0]);
    let x = Tensor::from_vec(v.clone(), [v.len()]).unwrap();
    let dev = be.upload(&x).unwrap();
    for dt in [DType::BF16, DType::F16] {
        let got = be.cast(&dev, dt).unwrap().to_cpu().unwrap();
        let want = x.to_dtype(dt).unwrap();
        let (g, w) = (got.to_vec_f64().unwrap(), want.to_vec_f64().unwrap());
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            assert!(a.to_bits() == b.to_bits(), "{} element {i} ({}): {a} vs {b}", dt.name(), v[i]);
        }
    }
}

/// Attention v2 (tensor cores, forward and backward) against the f32 v1 and the f64 CPU at head
/// dims 64, 96 and 128, several tiles with ragged tails, GQA and packed segments: bf16-sized
/// differences (it does round to bf16: not silently v1), never more.
#[test]
fn attention_on_tensor_cores_matches_v1_to_16_bit_precision() {
    use kiln_core::backend::AttnArgs;
    use kiln_core::{Backend, Tensor};
    let be = emu();
    let mut rng = kiln_core::rng::Rng::new(5);
    for (t, hq, hkv, d) in [(150, 4, 2, 64), (77, 3, 1, 96), (130, 2, 2, 128)] {
        let mut randn = |dims: &[usize]| {
            let n = dims.iter().product();
            Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), dims.to_vec()).unwrap()
        };
        let x = [randn(&[1, t, hq, d]), randn(&[1, t, hkv, d]), randn(&[1, t, hkv, d]), randn(&[1, t, hq, d])];
        let seg = Tensor::from_vec((0..t).map(|i| (i * 2 / t) as i32).collect::<Vec<_>>(), [1, t]).unwrap();
        // o, lse, dq, dk, dv.
        let run = |be: &dyn Backend, x: &[Tensor]| -> Vec<Vec<f64>> {
            let scale = 1.0 / (d as f64).sqrt();
            let a = AttnArgs {
                q: &x[0],
                k: &x[1],
                v: &x[2],
                seg: Some(&seg),
                shared_prefix: false,
                scale,
                window: None,
                softcap: None,
            };
            let (o, lse) = be.attention_fwd(&a).unwrap();
            let (dq, dk, dv) = be.attention_bwd(&a, &o, &lse, &x[3]).unwrap();
            [o, lse, dq, dk, dv].iter().map(|t| t.to_vec_f64().unwrap()).collect()
        };
        let v2 = run(be.with_gemm(GemmVariant::V3), &x);
        let v1 = run(be.with_gemm(GemmVariant::V1), &x);
        let x64: Vec<Tensor> = x.iter().map(|t| t.to_dtype(kiln_core::DType::F64).unwrap()).collect();
        let cpu = run(&kiln_core::CpuBackend, &x64);
        // Worst difference relative to the output's largest magnitude.
        let worst = |a: &[f64], b: &[f64]| {
            let s = b.iter().fold(0.0f64, |m, y| m.max(y.abs()));
            a.iter().zip(b).map(|(x, y)| (x - y).abs() / s).fold(0.0, f64::max)
        };
        let names = ["o", "lse", "dq", "dk", "dv"];
        let e2: Vec<f64> = (0..5).map(|i| worst(&v2[i], &cpu[i])).collect();
        let e1: Vec<f64> = (0..5).map(|i| worst(&v1[i], &cpu[i])).collect();
        let fmt = |e: &[f64]| e.iter().map(|x| format!("{x:.1e}")).collect::<Vec<_>>().join(" ");
        eprintln!(
            "attention d{d} t{t}, {names:?} of each output's scale: v3 (bf16 tensor cores) {}; v1 (f32) {}",
            fmt(&e2),
            fmt(&e1)
        );
        for i in 0..5 {
            assert!(e1[i] < 1e-5, "v1 {} is f32-exact: {:e}", names[i], e1[i]);
            assert!(e2[i] > 1e-6, "v3 {} must round to bf16 (got {:e}: did v1 run?)", names[i], e2[i]);
            assert!(e2[i] < 2e-2, "v3 {} beyond bf16 precision: {:e}", names[i], e2[i]);
        }
    }
    // v3 on 16-bit Q, K, V (and O, dO) as the mixed-precision path carries them: several query
    // and key tiles, ragged ends, GQA, a head dim padded to 16 (80) and one past the 16-byte loads
    // (D = 36: plain loads), a window that leaves clean tiles between masked ones, packed
    // segments, a window with soft-capping, and decoding with a cache (Tk > T: forward only).
    for (dt, t, tk, hq, hkv, d, window, softcap, packed) in [
        (kiln_core::DType::BF16, 300, 300, 4, 2, 80, Some(150), None, false),
        (kiln_core::DType::F16, 200, 200, 2, 1, 128, Some(70), Some(3.0), false),
        (kiln_core::DType::BF16, 130, 130, 3, 3, 36, None, None, true),
        (kiln_core::DType::F16, 9, 261, 4, 1, 64, None, None, false),
    ] {
        let mut randn = |dims: &[usize]| {
            let n = dims.iter().product();
            let x = Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), dims.to_vec()).unwrap();
            x.to_dtype(dt).unwrap()
        };
        let x = [randn(&[2, t, hq, d]), randn(&[2, tk, hkv, d]), randn(&[2, tk, hkv, d]), randn(&[2, t, hq, d])];
        let seg = Tensor::from_vec((0..2 * t).map(|i| ((i % t) * 3 / t) as i32).collect::<Vec<_>>(), [2, t]).unwrap();
        let run = |be: &dyn Backend, x: &[Tensor]| -> Vec<Vec<f64>> {
            let a = AttnArgs {
                scale: 1.0 / (d as f64).sqrt(),
                window,
                softcap,
                seg: packed.then_some(&seg),
                ..AttnArgs::causal(&x[0], &x[1], &x[2])
            };
            let (o, lse) = be.attention_fwd(&a).unwrap();
            let mut out = vec![o.clone(), lse.clone()];
            if t == tk {
                let (dq, dk, dv) = be.attention_bwd(&a, &o, &lse, &x[3]).unwrap();
                out.extend([dq, dk, dv]);
            }
            out.iter().map(|t| t.to_vec_f64().unwrap()).collect()
        };
        let got = run(be.with_gemm(GemmVariant::V6), &x);
        let x64: Vec<Tensor> = x.iter().map(|t| t.to_dtype(kiln_core::DType::F64).unwrap()).collect();
        let cpu = run(&kiln_core::CpuBackend, &x64);
        let worst = |a: &[f64], b: &[f64]| {
            let s = b.iter().fold(0.0f64, |m, y| m.max(y.abs()));
            a.iter().zip(b).map(|(x, y)| if x.is_nan() { f64::INFINITY } else { (x - y).abs() / s }).fold(0.0, f64::max)
        };
        let e: Vec<f64> = got.iter().zip(&cpu).map(|(g, c)| worst(g, c)).collect();
        let names = ["o", "lse", "dq", "dk", "dv"];
        let fmt = |e: &[f64]| e.iter().map(|x| format!("{x:.1e}")).collect::<Vec<_>>().join(" ");
        eprintln!(
            "attention v3 {} t{t} tk{tk} hq{hq} hkv{hkv} d{d} window {window:?} cap {softcap:?} packed {packed}, {:?}: {}",
            dt.name(),
            &names[..e.len()],
            fmt(&e)
        );
        // Outputs rounded to the 16-bit type (2^-9 of them), P and dS to the same.
        let bound = if dt == kiln_core::DType::F16 { 3e-3 } else { 2e-2 };
        assert!(e.iter().all(|&x| x < bound), "v3 {}: {e:?} (bound {bound:e})", dt.name());
    }
}

/// The 8-bit AdamW kernel from a zero state (codes and scales 0: moments exactly 0) updates the
/// parameter exactly as the f32 AdamW of the CPU does, and leaves each block's new maxima as its
/// scales. (Its bit-exactness with the host's 8-bit path over several steps is
/// tests/cuda_train.rs `eight_bit_adamw_on_the_device_matches_the_host_path`.)
fn eight_bit_adamw_from_zero_state_is_adamw(be: &'static kiln_cuda::backend::KernelBackend) {
    use kiln_core::backend::{Adam8State, AdamWStep, MemoryOps, OptimOps};
    use kiln_core::{Backend, CpuBackend, DType, Tensor};
    let n = 600;
    let mut rng = kiln_core::rng::Rng::new(4);
    let mut randn = |n: usize| Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), [n]).unwrap();
    let (p0, g) = (randn(n), randn(n));
    let hp = AdamWStep { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, step: 1 };
    let zeros = |k: usize, d: DType| be.zeros(&kiln_core::Shape::from(vec![k]), d).unwrap();
    let mut st = Adam8State {
        m_codes: zeros(n.div_ceil(4), DType::I32),
        m_scales: zeros(n.div_ceil(256), DType::F32),
        v_codes: zeros(n.div_ceil(4), DType::I32),
        v_scales: zeros(n.div_ceil(256), DType::F32),
        n,
    };
    let mut p = be.upload(&p0).unwrap();
    be.adamw8_step(&mut p, &be.upload(&g).unwrap(), &mut st, hp, 1.0).unwrap();
    let cpu = CpuBackend;
    let (mut pc, mut m, mut v) =
        (p0.clone(), Tensor::from_vec(vec![0f32; n], [n]).unwrap(), Tensor::from_vec(vec![0f32; n], [n]).unwrap());
    cpu.adamw_step(kiln_core::backend::AdamWItem { param: &mut pc, grad: &g, m: &mut m, v: &mut v }, hp).unwrap();
    let (got, want) = (p.to_vec_f32().unwrap(), pc.to_vec_f32().unwrap());
    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "8-bit AdamW from zero state ≠ AdamW");
    let (mv, vv) = (m.to_vec_f32().unwrap(), v.to_vec_f32().unwrap());
    let ms = st.m_scales.to_vec_f32().unwrap();
    let vs = st.v_scales.to_vec_f32().unwrap();
    for b in 0..n.div_ceil(256) {
        let r = b * 256..((b + 1) * 256).min(n);
        let am = mv[r.clone()].iter().fold(0f32, |a, x| a.max(x.abs()));
        let av = vv[r].iter().fold(0f32, |a, x| a.max(x.max(0.0).sqrt()));
        assert_eq!((ms[b].to_bits(), vs[b].to_bits()), (am.to_bits(), av.to_bits()), "block {b} scales");
    }
}

/// GEMM v6 (16-bit operands packed, the cp.async ring, swizzled tiles) on the race-checking
/// device at shapes the parity table leaves out: K tails of 8 past whole tiles, M and N past
/// the 128-wide tiles, LoRA ranks 1 to 128 (padded to 32 for the second phase; the rank-r
/// pre-passes on v6 with split-K), both B layouts (NK in the forward, KN in dx), bf16 and f16
/// weights. The plain product against v4, which rounds the same operands to the same type and
/// accumulates in f32 (only the summation order may differ); with LoRA against the f64 CPU
/// (16-bit rounding of the operands apart). The race checker must stay silent.
/// x [m, k], W [n, k], bias [n], LoRA A [r, k] and B [n, r], dy [m, n]: standard normal f32.
fn linear_inputs(rng: &mut kiln_core::rng::Rng, m: usize, k: usize, n: usize, r: usize) -> [kiln_core::Tensor; 6] {
    [vec![m, k], vec![n, k], vec![n], vec![r, k], vec![n, r], vec![m, n]].map(|dims| {
        let len = dims.iter().product();
        kiln_core::Tensor::from_vec((0..len).map(|_| rng.normal() as f32).collect::<Vec<_>>(), dims).unwrap()
    })
}

/// The worst difference relative to `want`'s largest magnitude (NaN: infinite).
fn worst_of_scale(got: &[f64], want: &[f64]) -> f64 {
    let s = want.iter().fold(0.0f64, |m, y| m.max(y.abs()));
    got.iter().zip(want).map(|(x, y)| if x.is_nan() { f64::INFINITY } else { (x - y).abs() / s }).fold(0.0, f64::max)
}

#[test]
fn gemm_v6_matches_v4_and_the_cpu_with_tails_ranks_and_both_layouts() {
    use kiln_core::backend::{LinearNeeds, LoraRef};
    use kiln_core::{Backend, CpuBackend, DType, Tensor};
    let (v6, v4) = (emu_racecheck().with_gemm(GemmVariant::V6), emu().with_gemm(GemmVariant::V4));
    let mut rng = kiln_core::rng::Rng::new(17);
    let cases = [(37, 200, 72, 1, DType::BF16), (150, 72, 136, 16, DType::BF16), (129, 40, 264, 64, DType::F16)];
    for (m, k, n, r, wd) in cases.into_iter().chain([(65, 136, 48, 128, DType::BF16), (300, 2056, 24, 16, DType::BF16)])
    {
        let [x, w, bias, la, lb, dy] = linear_inputs(&mut rng, m, k, n, r);
        let w = w.to_dtype(wd).unwrap();
        // y, dx (plain); y, dx, dA, dB (with LoRA).
        let plain = |be: &dyn Backend| {
            let (y, _) = be.linear_fwd(&x, &w, Some(&bias), None).unwrap();
            let g = be.linear_bwd(&dy, &x, &w, None, LinearNeeds { x: true, ..Default::default() }).unwrap();
            [y, g.dx.unwrap()].map(|t| t.to_vec_f64().unwrap())
        };
        let lora = |be: &dyn Backend, x: &Tensor, w: &Tensor, la: &Tensor, lb: &Tensor, dy: &Tensor| {
            let l = || LoraRef { a: la, b: lb, scale: 0.7 };
            let (y, u) = be.linear_fwd(x, w, Some(&bias), Some(l())).unwrap();
            let needs = LinearNeeds { x: true, w: false, bias: false, lora: true };
            let g = be.linear_bwd(dy, x, w, Some((l(), &u.unwrap())), needs).unwrap();
            [y, g.dx.unwrap(), g.da.unwrap(), g.db.unwrap()].map(|t| t.to_vec_f64().unwrap())
        };
        let (got, near) = (plain(v6), plain(v4));
        for (i, name) in ["y", "dx"].into_iter().enumerate() {
            let e = worst_of_scale(&got[i], &near[i]);
            eprintln!("v6 {m}x{k}x{n} {}: plain {name} vs v4 {e:.1e}", wd.name());
            assert!(e < 2e-5, "{m}x{k}x{n} {}: {name} differs from v4 by {e:e} of its scale", wd.name());
        }
        let got = lora(v6, &x, &w, &la, &lb, &dy);
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let cpu = lora(&CpuBackend, &f64s(&x), &f64s(&w), &f64s(&la), &f64s(&lb), &f64s(&dy));
        for (i, name) in ["y", "dx", "dA", "dB"].into_iter().enumerate() {
            let e = worst_of_scale(&got[i], &cpu[i]);
            eprintln!("v6 {m}x{k}x{n} r{r} {}: {name} vs the f64 CPU {e:.1e}", wd.name());
            assert!(e < 2e-2, "{m}x{k}x{n} r{r} {}: {name} differs from the CPU by {e:e}", wd.name());
        }
    }
    // v6 ran itself (no fallback to v4 on this device), both layouts and types.
    let ran = v6.exec.launched();
    for t in ["bf16", "f16"] {
        for k in
            [format!("gemm_v6_mma_multistage_{t}"), format!("gemm_v6_mma_multistage_kn_{t}"), format!("gemm_pack_{t}")]
        {
            assert!(ran.contains(&k), "{k} never launched: {ran:?}");
        }
    }
    assert!(ran.iter().any(|k| k == "gemm_splitk_sum"), "the split-K pre-pass never ran: {ran:?}");
}

/// `TmaTestParams` of kernels/emu/broken.cu.
#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TmaTestParams {
    a: kiln_cuda::kernels::TensorMap,
    b: kiln_cuda::kernels::TensorMap,
    c: u64,
    pad: [i32; 14],
}

/// Runs a TMA test kernel of kernels/emu/broken.cu over bf16 `a` [rows, 64] (boxes of 64 × 64)
/// and `b` [128, 64] (one box), returning `out_len` floats of c.
fn run_tma(kernel: &str, a: &[f32], b: &[f32], out_len: usize, rc: bool) -> Result<Vec<f32>, String> {
    use kiln_cuda::exec::{TensorMap2d, emulated_tensor_map};
    use kiln_cuda::kernels::TensorMap;
    let ex = EmuExec::default();
    let bf = |v: &[f32]| -> Vec<u16> { v.iter().map(|x| half::bf16::from_f32(*x).to_bits()).collect() };
    let (ha, hb) = (ex.upload(bytemuck::cast_slice(&bf(a))).unwrap(), ex.upload(bytemuck::cast_slice(&bf(b))).unwrap());
    let hc = ex.alloc_zeroed(out_len * 4).unwrap();
    let map = |base: u64, rows: usize, box_rows: u32| {
        let t = TensorMap2d {
            base,
            dims: [64, rows as u64],
            row_bytes: 128,
            boxes: [64, box_rows],
            swizzle128: true,
            f16: false,
        };
        TensorMap(emulated_tensor_map(&t).unwrap())
    };
    let p = TmaTestParams { a: map(ha.ptr, a.len() / 64, 64), b: map(hb.ptr, 128, 128), c: hc.ptr, pad: [0; 14] };
    let cfg = Launch { grid: [1, 1, 1], block: [128, 1, 1], smem: (64 + 128) * 128 + 1024 + 64 };
    ex.launch_checked(kernel, cfg, bytemuck::bytes_of(&p), rc).map_err(|e| e.to_string())?;
    Ok(bytemuck::pod_collect_to_vec(&ex.download(&hc, 0, out_len * 4).unwrap()))
}

#[test]
fn tma_and_mbarriers_follow_the_ptx_rules_and_their_misuse_is_caught() {
    // bf16-exact values; A has 70 rows, so the box of 64 is whole and a box at row 64 would
    // run past the edge (zero-filled; the v7 GEMM's tests cover edges).
    let a: Vec<f32> = (0..70 * 64).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
    let b: Vec<f32> = (0..128 * 64).map(|i| ((i * 5 % 11) as f32) - 5.0).collect();
    // The box lands where the 128-byte swizzle puts it and reads back exactly.
    for rc in [false, true] {
        assert_eq!(run_tma("ok_tma_tile", &a, &b, 64 * 64, rc).unwrap(), a[..64 * 64].to_vec(), "race check {rc}");
    }
    // A read before the wait on the barrier sees the poisoned box (and the race checker says so).
    let got = run_tma("broken_tma_read_before_wait", &a, &b, 64 * 64, false).unwrap();
    assert!(got.iter().any(|v| v.is_nan()), "the unlanded box was read as data");
    let e = run_tma("broken_tma_read_before_wait", &a, &b, 64 * 64, true).unwrap_err();
    assert!(e.contains("TMA load is still filling"), "{e}");
    // A wait on the wrong phase returns at once on the GPU: the emulation stops there.
    let e = run_tma("broken_mbarrier_wrong_phase", &a, &b, 64 * 64, false).unwrap_err();
    assert!(e.contains("wrong phase"), "{e}");
    // A transaction count that never completes leaves every waiter blocked: a deadlock report
    // naming the barrier's missing bytes.
    let e = run_tma("broken_mbarrier_tx_never_completes", &a, &b, 64 * 64, false).unwrap_err();
    assert!(e.contains("deadlock") && e.contains("128 transaction bytes"), "{e}");
    // wgmma straight from the swizzled boxes: C = A·Bᵀ exactly; descriptors that ignore the
    // swizzle the loads wrote are refused.
    let bt: Vec<f32> = (0..64 * 128).map(|i| b[(i % 128) * 64 + i / 128]).collect();
    let want = matmul_ref(&a[..64 * 64], &bt, 64, 128, 64);
    assert_eq!(run_tma("ok_tma_wgmma_swizzled", &a, &b, 64 * 128, true).unwrap(), want);
    let e = run_tma("broken_tma_wgmma_wrong_swizzle", &a, &b, 64 * 128, false).unwrap_err();
    assert!(e.contains("swizzle mode 0") && e.contains("wrote with mode 1"), "{e}");
    // The emulation encodes only the maps the driver would (cuTensorMapEncodeTiled's rules).
    use kiln_cuda::exec::{TensorMap2d, emulated_tensor_map};
    let ok = TensorMap2d { base: 4096, dims: [64, 70], row_bytes: 128, boxes: [64, 64], swizzle128: true, f16: false };
    assert!(emulated_tensor_map(&ok).is_ok());
    for (bad, why) in [
        (TensorMap2d { base: 4104, ..ok }, "16-byte aligned"),
        (TensorMap2d { row_bytes: 120, ..ok }, "multiple of 16"),
        (TensorMap2d { dims: [64, 0], ..ok }, "dimension"),
        (TensorMap2d { boxes: [64, 257], ..ok }, "box extent"),
        (TensorMap2d { boxes: [128, 64], ..ok }, "wider than 128 bytes"),
    ] {
        let e = emulated_tensor_map(&bad).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn gemm_v7_matches_v6_and_the_cpu_with_tails_and_ranks() {
    use kiln_core::backend::{LoraRef, MatmulOps};
    use kiln_core::{Backend, CpuBackend, DType, Tensor};
    let (v7, v6) = (emu().with_gemm(GemmVariant::V7), emu().with_gemm(GemmVariant::V6));
    let mut rng = kiln_core::rng::Rng::new(29);
    // M and N tails of every kind (N below, across and past the 256-wide tile), K tails of 8,
    // K under one tile, ranks padded to 64 and 128.
    let cases = [(37, 200, 72, 1, DType::BF16), (150, 72, 300, 16, DType::BF16), (129, 40, 264, 64, DType::F16)];
    for (m, k, n, r, wd) in cases.into_iter().chain([(65, 136, 48, 72, DType::BF16)]) {
        let [x, w, bias, la, lb, dy] = linear_inputs(&mut rng, m, k, n, r);
        let w = w.to_dtype(wd).unwrap();
        // y and dx (dx = dy·W: v7 over a transposed copy of W).
        let run = |be: &dyn Backend, x: &Tensor, w: &Tensor, dy: &Tensor, lora: Option<(&Tensor, &Tensor)>| {
            let l = || lora.map(|(a, b)| LoraRef { a, b, scale: 0.7 });
            let (y, u) = be.linear_fwd(x, w, Some(&bias), l()).unwrap();
            let needs = kiln_core::backend::LinearNeeds { x: true, ..Default::default() };
            let g = be.linear_bwd(dy, x, w, l().zip(u.as_ref()), needs).unwrap();
            // U = x·Aᵀ as the forward left it for the backward (ranks ≤ 16: v7 computed it itself).
            let u = u.unwrap_or_else(|| y.clone());
            [y, g.dx.unwrap(), u].map(|t| t.to_vec_f64().unwrap())
        };
        // The same 16-bit operands and f32 accumulation as v6, in another order.
        let (got, near) = (run(v7, &x, &w, &dy, None), run(v6, &x, &w, &dy, None));
        for (i, name) in ["y", "dx"].into_iter().enumerate() {
            let e = worst_of_scale(&got[i], &near[i]);
            eprintln!("v7 {m}x{k}x{n} {}: {name} vs v6 {e:.1e}", wd.name());
            assert!(e < 2e-5, "{m}x{k}x{n} {}: {name} differs from v6 by {e:e} of its scale", wd.name());
        }
        let f64s = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let got = run(v7, &x, &w, &dy, Some((&la, &lb)));
        let cpu = run(&CpuBackend, &f64s(&x), &f64s(&w), &f64s(&dy), Some((&f64s(&la), &f64s(&lb))));
        for (i, name) in ["y", "dx", "U"].into_iter().enumerate() {
            let e = worst_of_scale(&got[i], &cpu[i]);
            eprintln!("v7 {m}x{k}x{n} r{r} {}: LoRA {name} vs the f64 CPU {e:.1e}", wd.name());
            assert!(e < 2e-2, "{m}x{k}x{n} r{r} {}: LoRA {name} differs from the CPU by {e:e}", wd.name());
        }
    }
    let ran = v7.exec.launched();
    for k in ["gemm_v7_tma_wgmma_bf16", "gemm_v7_tma_wgmma_f16", "gemm_transpose16", "gemm_pack_pair_bf16"] {
        assert!(ran.iter().any(|r| r == k), "{k} never launched: {ran:?}");
    }
    // The race checker over one tile of v7, LoRA fused (rank 3) and by pre-pass (rank 17).
    let rc = emu_racecheck().with_gemm(GemmVariant::V7);
    let (x, w) = (
        Tensor::from_vec(vec![0.5f32; 9 * 72], vec![9, 72]).unwrap(),
        Tensor::from_vec(vec![0.25f32; 20 * 72], vec![20, 72]).unwrap(),
    );
    let w = w.to_dtype(DType::BF16).unwrap();
    for r in [3usize, 17] {
        let (la, lb) = (
            Tensor::from_vec(vec![1.0f32; r * 72], vec![r, 72]).unwrap(),
            Tensor::from_vec(vec![1.0f32; 20 * r], vec![20, r]).unwrap(),
        );
        let (y, u) = rc.linear_fwd(&x, &w, None, Some(LoraRef { a: &la, b: &lb, scale: 0.5 })).unwrap();
        // 72·0.125 + 0.5·r·(72·0.5) = 9 + 18·r.
        let (y, u) = (y.to_vec_f64().unwrap(), u.unwrap().to_vec_f64().unwrap());
        assert!(y.iter().all(|v| *v == 9.0 + 18.0 * r as f64), "rank {r}: {:?}", &y[..4]);
        assert!(u.len() == 9 * r && u.iter().all(|v| *v == 36.0), "rank {r}: U {:?}", &u[..4]);
    }
}
