//! The profiler's dynamic half on the emulation: the calibration kernels of
//! `kernels/emu/calibrate.cu` give their known answers (coalescing, sectors, bank conflicts,
//! sampling, the L2 wave model), the tensor-core kernels' counts follow from their shapes, and
//! the whole op parity table runs profiled, so every production kernel has a profile.

use bytemuck::{Pod, Zeroable};
use kiln_cuda::emu::EmuExec;
use kiln_cuda::exec::{Exec, Launch};
use kiln_cuda::prof::dynamic::{LaunchProfile, ProfileOpts, RawProfile};

/// `CalibParams` of kernels/emu/calibrate.cu.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CalibParams {
    a: u64,
    c: u64,
    n: i32,
    pad: i32,
}

/// Profiles `kernel` over `n` floats (input `n + 1` floats: the offset copy reads one past).
fn calib(ex: &EmuExec, kernel: &str, n: usize, cfg: Launch, opts: ProfileOpts) -> (RawProfile, Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..=n).map(|i| i as f32).collect();
    let ha = ex.upload(bytemuck::cast_slice(&a)).unwrap();
    let hc = ex.alloc_zeroed(n * 4).unwrap();
    let p = CalibParams { a: ha.ptr, c: hc.ptr, n: n as i32, pad: 0 };
    let raw = ex.launch_profiled(kernel, cfg, bytemuck::bytes_of(&p), opts).unwrap();
    (raw, a, bytemuck::pod_collect_to_vec(&ex.download(&hc, 0, n * 4).unwrap()))
}

fn prof(kernel: &str, cfg: Launch, raw: RawProfile) -> LaunchProfile {
    LaunchProfile { kernel: kernel.into(), grid: cfg.grid, block: cfg.block, dyn_smem: cfg.smem, raw }
}

const ALL: ProfileOpts = ProfileOpts { max_ctas: 0, wave: 0 };

#[test]
fn coalesced_strided_and_misaligned_copies_give_their_known_sector_counts() {
    let ex = EmuExec::default();
    let n = 8192;
    let cfg = Launch::linear(n / 256, 256);
    // Each warp's 32 × 4 bytes lie in 4 whole sectors.
    let (r, a, c) = calib(&ex, "calib_copy_f32", n, cfg, ALL);
    assert_eq!(c, a[..n], "the profiled run still computes");
    let warps = (n / 32) as u64;
    assert_eq!((r.gld_req, r.gld_bytes, r.gld_sectors), (warps, 4 * n as u64, warps * 4), "{r:?}");
    assert_eq!((r.gst_req, r.gst_bytes, r.gst_sectors), (warps, 4 * n as u64, warps * 4), "{r:?}");
    assert_eq!(r.gld_width, [0, 0, warps, 0, 0]);
    let p = prof("calib_copy_f32", cfg, r);
    assert_eq!(p.load_efficiency(), Some(1.0));
    assert_eq!(p.store_efficiency(), Some(1.0));
    assert_eq!(p.dram_bytes(1), 8.0 * n as f64, "each byte read once and written once");
    assert_eq!((r.ctas_run, r.ctas_total, r.barriers), (32, 32, 0));

    // One float past the boundary: 128 bytes over 5 sectors.
    let (r, a, c) = calib(&ex, "calib_copy_f32_offset", n, cfg, ALL);
    assert_eq!(c, a[1..]);
    assert_eq!(r.gld_sectors, warps * 5, "{r:?}");
    assert_eq!(prof("x", cfg, r).load_efficiency(), Some(0.8));

    // 16-byte lanes: 512 bytes, 16 sectors per request, a quarter of the requests.
    let cfg4 = Launch::linear(n / 4 / 256, 256);
    let (r, a, c) = calib(&ex, "calib_copy_v4", n, cfg4, ALL);
    assert_eq!(c, a[..n]);
    assert_eq!((r.gld_req, r.gld_sectors), (warps / 4, warps * 4), "{r:?}");
    assert_eq!(r.gld_width, [0, 0, 0, 0, warps / 4]);
    assert_eq!(prof("x", cfg4, r).load_efficiency(), Some(1.0));

    // A stride of 32 floats: every lane alone in its sector, 1/8 of the bytes used.
    let g = n / 32;
    let cfgs = Launch::linear(g / 32, 32);
    let (r, a, c) = calib(&ex, "calib_gather_stride32", n, cfgs, ALL);
    assert_eq!(c[..g].to_vec(), (0..g).map(|i| a[32 * i]).collect::<Vec<_>>());
    assert_eq!((r.gld_req, r.gld_sectors), (g as u64 / 32, g as u64), "{r:?}");
    assert_eq!(prof("x", cfgs, r).load_efficiency(), Some(0.125));
    eprintln!("calibration: copy 1.0, offset copy 0.8, 16-byte copy 1.0, stride-32 gather 0.125 of each sector used");
}

#[test]
fn a_column_read_of_an_unpadded_tile_conflicts_32_ways_and_the_padded_one_not_at_all() {
    let ex = EmuExec::default();
    let tiles = 3;
    let cfg = Launch { grid: [tiles, 1, 1], block: [32, 32, 1], smem: 0 };
    let n = 1024 * tiles as usize;
    let want = |a: &[f32]| -> Vec<f32> {
        (0..n).map(|i| (i / 1024, i % 1024)).map(|(t, e)| a[t * 1024 + (e % 32) * 32 + e / 32]).collect()
    };
    let warps = 32 * tiles as u64;
    let (r, a, c) = calib(&ex, "calib_transpose_unpadded", n, cfg, ALL);
    assert_eq!(c, want(&a));
    assert_eq!((r.sts_req, r.sts_wavefronts), (warps, warps), "row writes: one wavefront each");
    assert_eq!((r.lds_req, r.lds_wavefronts), (warps, 32 * warps), "column reads: 32-way conflicts");
    assert_eq!(r.barriers, tiles as u64);
    let (r, a, c) = calib(&ex, "calib_transpose_padded", n, cfg, ALL);
    assert_eq!(c, want(&a));
    assert_eq!((r.lds_req, r.lds_wavefronts), (warps, warps), "padded: conflict-free");
    assert_eq!(prof("x", cfg, r).shared_load_wavefronts_per_request(), Some(1.0));
}

#[test]
fn ldmatrix_and_16_byte_shared_loads_cost_what_their_bank_layout_says() {
    let ex = EmuExec::default();
    let cfg = Launch { grid: [1, 1, 1], block: [32, 1, 1], smem: 0 };
    for (kernel, req, wavefronts) in [
        ("calib_ldmatrix_packed", 1, 4),
        ("calib_ldmatrix_pitch128", 1, 32),
        ("calib_lds128_packed", 1, 4),
        ("calib_lds128_stride32", 1, 8),
    ] {
        let (r, ..) = calib(&ex, kernel, 128, cfg, ALL);
        let got =
            if kernel.contains("ldmatrix") { (r.ldsm_req, r.ldsm_wavefronts) } else { (r.lds_req, r.lds_wavefronts) };
        assert_eq!(got, (req, wavefronts), "{kernel}: {r:?}");
    }
}

#[test]
fn sampling_runs_the_first_ctas_and_scales_and_the_wave_model_counts_each_sector_once_per_wave() {
    let ex = EmuExec::default();
    let n = 8192;
    let cfg = Launch::linear(n / 256, 256);
    let (r, ..) = calib(&ex, "calib_copy_f32", n, cfg, ProfileOpts { max_ctas: 4, wave: 0 });
    assert_eq!((r.ctas_run, r.ctas_total), (4, 32));
    let p = prof("calib_copy_f32", cfg, r);
    assert!(p.sampled());
    assert_eq!(p.total(r.gld_req), (n / 32) as f64, "scaled to the whole launch");
    assert_eq!(p.dram_bytes(1), 8.0 * n as f64);
    // The transposes' CTAs read disjoint tiles: the wave size changes nothing. The stride-32
    // gather's neighbouring CTAs share no sector either; a broadcast read would.
    let cfgt = Launch { grid: [4, 1, 1], block: [32, 32, 1], smem: 0 };
    let (one, ..) = calib(&ex, "calib_transpose_padded", 4096, cfgt, ProfileOpts { max_ctas: 0, wave: 1 });
    let (all, ..) = calib(&ex, "calib_transpose_padded", 4096, cfgt, ALL);
    assert_eq!(one.dram_read_sectors, all.dram_read_sectors);
    assert_eq!(all.dram_read_sectors, [all.unique_read_sectors; 8]);
}

/// The one test of this binary on the process's emulated device (profiling is a device setting).
#[test]
fn every_production_kernel_runs_profiled_and_the_gemm_counts_follow_its_shape() {
    use kiln_core::backend::{MatmulOps, MemoryOps};
    use kiln_core::selftest::{self, Case, Filter};
    use kiln_core::{DType, Tensor};
    use kiln_cuda::GemmVariant;

    let be = kiln_cuda::backend::emu();
    assert!(be.exec.set_profile(Some(ALL)));
    // The default GEMM's tensor-core kernel at a ragged shape: its mma.sync count is the padded
    // problem's, every load lands in sectors, and a one-CTA wave re-reads what CTAs share.
    let (m, k, n) = (100, 72, 136);
    let x = Tensor::from_vec((0..m * k).map(|i| (i % 7) as f32 * 0.1).collect(), [m, k]).unwrap();
    let w = Tensor::from_vec((0..n * k).map(|i| (i % 5) as f32 * 0.1).collect(), [n, k]).unwrap();
    let v3 = be.with_gemm(GemmVariant::V3);
    let (xd, wd) = (v3.upload(&x).unwrap(), v3.upload(&w.to_dtype(DType::BF16).unwrap()).unwrap());
    v3.linear_fwd(&xd, &wd, None, None).unwrap();
    let s = be.exec.take_profile();
    let mma: Vec<&LaunchProfile> = s.launches.iter().filter(|l| l.raw.mma_warp > 0).collect();
    assert_eq!(mma.len(), 1, "one tensor-core launch: {:?}", s.launches.iter().map(|l| &l.kernel).collect::<Vec<_>>());
    let g = mma[0];
    let flops = g.mma_flops();
    let exact = 2.0 * (m * k * n) as f64;
    assert!(flops >= exact && flops <= exact * 2.5, "{}: {flops} tensor-core flops for {exact}", g.kernel);
    assert!(g.load_efficiency().is_some_and(|e| e > 0.0 && e <= 1.0));
    assert!(g.raw.barriers > 0 && g.raw.lds_req + g.raw.ldsm_req > 0, "{:?}", g.raw);
    assert!(s.uploads >= 2, "the uploads were counted: {s:?}");
    assert!(g.grid[0] > 1 && g.grid[1] > 1, "a grid with CTAs sharing rows and columns: {:?}", g.grid);
    let shared_l2 = g.raw.dram_read_sectors[0];
    assert_eq!(shared_l2, g.raw.unique_read_sectors, "one wave: every sector once");
    be.exec.set_profile(Some(ProfileOpts { max_ctas: 0, wave: 1 }));
    v3.linear_fwd(&xd, &wd, None, None).unwrap();
    let again = be.exec.take_profile();
    let g1 = again.launches.iter().find(|l| l.raw.mma_warp > 0).unwrap();
    let w = g1.raw.dram_read_sectors;
    assert!(w[0] > shared_l2, "waves of one CTA re-read the shared tiles: {w:?}");
    assert!(w.iter().all(|&x| x >= shared_l2 && x <= w[0]), "between one wave and one CTA a wave: {w:?}");
    assert_eq!(w[5], shared_l2, "a wave of 6 CTAs holds the whole grid: {w:?}");
    eprintln!(
        "{} {m}x{k}x{n}: grid {:?}, tensor-core flops {:.3}× the product's, load efficiency {:.3}, DRAM reads {} sectors in one wave, {} one CTA at a time",
        g.kernel,
        g.grid,
        flops / exact,
        g.load_efficiency().unwrap_or(0.0),
        shared_l2,
        g1.raw.dram_read_sectors[0]
    );

    // The parity table under v3, its linear cases under every other variant, and its attention
    // cases under v1 (the f32 attention kernels run where the variant has no tensor cores).
    be.exec.set_profile(Some(ProfileOpts::default()));
    let t0 = std::time::Instant::now();
    let filter = Filter::from_env().expect("KILN_SELFTEST_OP names ops");
    selftest::run_pass(v3, &selftest::seeds_for("profile v3"), &filter, &|_| true, &mut |_, _| {});
    use kiln_core::backend::Op;
    for v in GemmVariant::ALL {
        if v != GemmVariant::V3 {
            let keep = |c: &Case| c.op == Op::Linear || (v == GemmVariant::V1 && c.op == Op::Attention);
            let seeds = selftest::seeds_for(&format!("profile {v}"));
            selftest::run_pass(be.with_gemm(v), &seeds, &filter, &keep, &mut |_, _| {});
        }
    }
    // v7's dx through the transposed weight needs both of W's dimensions multiples of 8, which
    // the table's ragged shapes avoid: one such backward pass.
    {
        use kiln_core::backend::{LinearNeeds, MatmulOps};
        let t = |dims: Vec<usize>| kiln_core::Tensor::from_vec(vec![0.5f32; dims.iter().product()], dims).unwrap();
        let (x, w, dy) = (t(vec![24, 40]), t(vec![48, 40]).to_dtype(kiln_core::DType::BF16).unwrap(), t(vec![24, 48]));
        let needs = LinearNeeds { x: true, ..Default::default() };
        let dx = be.with_gemm(GemmVariant::V7).linear_bwd(&dy, &x, &w, None, needs).unwrap().dx.unwrap();
        assert!(dx.to_vec_f64().unwrap().iter().all(|v| *v == 12.0), "dx = dy·W: 48 × 0.25");
    }
    let s = be.exec.take_profile();
    be.exec.set_profile(None);
    let mut missing = Vec::new();
    for (file, src) in kiln_cuda::kernels::SOURCES {
        for name in kiln_cuda::kernels::entry_points(src) {
            if !s.launches.iter().any(|l| l.kernel == name && l.raw.ctas_run > 0) {
                missing.push(format!("{file}: {name}"));
            }
        }
    }
    for l in &s.launches {
        assert!(l.load_efficiency().is_none_or(|e| e > 0.0 && e <= 1.0), "{}: {:?}", l.kernel, l.raw);
        assert!(l.store_efficiency().is_none_or(|e| e > 0.0 && e <= 1.0), "{}: {:?}", l.kernel, l.raw);
        for wf in [l.shared_load_wavefronts_per_request(), l.shared_store_wavefronts_per_request()] {
            assert!(wf.is_none_or(|w| (1.0..=32.0).contains(&w)), "{}: {:?}", l.kernel, l.raw);
        }
    }
    eprintln!("{} profiled launches in {:.1} s", s.launches.len(), t0.elapsed().as_secs_f64());
    if std::env::var_os("KILN_SELFTEST_OP").is_none() {
        assert!(missing.is_empty(), "production kernels no profiled launch reached: {missing:?}");
    }
}

/// The fused LM head + cross-entropy (`ops::linear_cross_entropy`), forward and backward over
/// three chunks, reads nothing back from the device: the profiler's counters see no download
/// (a host sync) and two uploads (the targets, once; the backward's seed), and the loss and the
/// gradients of h and W are the CPU's. On the race-checking device (no other test here profiles
/// it), so the new kernels' shared-memory traffic is checked too.
#[test]
fn the_fused_lm_head_loss_reads_nothing_back_and_matches_the_cpu() {
    use kiln_core::backend::MemoryOps;
    use kiln_core::{Tape, Tensor, Var, ops};

    let be = kiln_cuda::backend::emu_racecheck();
    let (n, d, v) = (300, 72, 1000);
    let val = |i: usize, s: f32| ((i.wrapping_mul(2_654_435_761) >> 7) % 1000) as f32 / 1000.0 * s - s / 2.0;
    let h = Tensor::from_vec((0..n * d).map(|i| val(i, 2.0)).collect(), [n, d]).unwrap();
    let w = Tensor::from_vec((0..v * d).map(|i| val(i + 7, 0.6)).collect(), [v, d]).unwrap();
    let targets = Tensor::from_vec(
        (0..n).map(|i| if i % 7 == 3 { -100 } else { (i * 37 % v) as i32 }).collect::<Vec<i32>>(),
        [n],
    )
    .unwrap();
    let run = |dev: bool| {
        let put = |t: &Tensor| if dev { be.upload(t).unwrap() } else { t.clone() };
        let (hv, wv) = (Var::leaf(put(&h), true), Var::leaf(put(&w), true));
        if dev {
            assert!(be.exec.set_profile(Some(ALL)));
        }
        let tape = Tape::new();
        let out = ops::linear_cross_entropy(&tape, &hv, &wv, &targets, 128).unwrap();
        let g = tape.backward(&out.loss).unwrap();
        let session = dev.then(|| be.exec.take_profile());
        be.exec.set_profile(None);
        let read = |v: &Var| g.get(v).unwrap().to_vec_f64().unwrap();
        (out.loss.value().item().unwrap(), read(&hv), read(&wv), session)
    };
    let (loss, dh, dw, s) = run(true);
    let (cpu_loss, cpu_dh, cpu_dw, _) = run(false);
    let s = s.unwrap();
    let names: Vec<&str> = s.launches.iter().map(|l| l.kernel.as_str()).collect();
    eprintln!("fused head: {} launches, {} uploads, {} downloads: {names:?}", names.len(), s.uploads, s.downloads);
    assert_eq!(s.downloads, 0, "the fused loss read the device back: {names:?}");
    assert_eq!(s.uploads, 2, "uploads besides the targets and the seed: {names:?}");
    for (k, times) in [("ce_chunk_f32", 3), ("loss_sum_f32", 3), ("copy_bytes", 3), ("scale_by_f32", 2)] {
        assert_eq!(names.iter().filter(|&&x| x == k).count(), times, "{k} launches: {names:?}");
    }
    assert!((loss - cpu_loss).abs() <= 1e-5 * cpu_loss.abs(), "loss {loss} vs the CPU's {cpu_loss}");
    for (name, a, b) in [("dh", &dh, &cpu_dh), ("dW", &dw, &cpu_dw)] {
        let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
        let err = a.iter().zip(b.iter()).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        eprintln!("fused head {name}: max error {:.1e} of the gradient's scale", err / scale);
        assert!(err <= 1e-4 * scale && a.iter().all(|x| x.is_finite()), "{name}: error {err:e} at scale {scale:e}");
    }
}
