//! The roofline model (version [`MODEL_VERSION`]): a kernel launch's time on a card from its
//! dynamic profile (emulation: tensor-core instructions, DRAM bytes under the L2 model, shared-
//! memory wavefronts) and, where ptxas and nvdisasm ran, its static profile (SASS instructions
//! per main-loop iteration, registers and shared memory for the occupancy):
//!
//! time = max(tensor, issue, DRAM, shared memory) + launch, where
//! - tensor = mma.sync flops / the card's mma.sync rate + wgmma flops / its wgmma rate, times the
//!   load imbalance ⌈CTAs / SMs⌉ / (CTAs / SMs) (the busiest SM's share against the mean);
//! - issue = warp instructions / (SMs × 4 schedulers × clock × u), u = min(1, resident warps per
//!   scheduler / 2) (with fewer than two warps a scheduler waits on its own dependences; resident
//!   CTAs per SM: the occupancy's, at most ⌈CTAs / SMs⌉), times the same imbalance. Warp instructions = warps × (straight-line + loop × trips); the trip
//!   count is the launch's tensor-core instructions per warp over the loop's (the loop's global
//!   loads where it has no MMA): the loop bound of each family (K / BK for GEMMs, key tiles for
//!   attention, the grid stride for element-wise kernels) read off the run instead of restated;
//! - DRAM = bytes under the L2 model at the occupancy's resident CTAs per SM / bandwidth;
//! - shared memory = wavefronts (wgmma's operand bytes at 128 a wavefront) / (SMs × 1 per clock),
//!   times the same imbalance;
//! - launch = [`LAUNCH_S`].
//!
//! Changing the card table or any rule above changes [`MODEL_VERSION`] and re-states the baseline
//! recorded in bench/RESULTS.md, so kernel work is measured against a fixed ruler.

use super::KernelStatic;
use super::dynamic::LaunchProfile;

pub const MODEL_VERSION: u32 = 1;

/// A null kernel's launch-to-completion, about 3 µs on recent GPUs and drivers (NVIDIA
/// Developer Forums, "Too much time for kernel launch latency", t/233645).
pub const LAUNCH_S: f64 = 3e-6;
/// Shared memory serves one 128-byte wavefront per SM per clock (Ampere, Ada, Hopper: 32 banks
/// of 4 bytes; Luo et al., arXiv:2402.13499, for Hopper).
pub const SMEM_WAVEFRONTS_PER_CLOCK: f64 = 1.0;
/// Warp schedulers per SM, each issuing one warp instruction per clock.
pub const SCHEDULERS: f64 = 4.0;

/// One card's public figures. Tensor rates are dense, 16-bit inputs with f32 accumulation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Card {
    /// `--card` name.
    pub key: &'static str,
    pub name: &'static str,
    /// ptxas target of the static profile.
    pub arch: &'static str,
    pub sms: u32,
    /// The clock the tensor figure assumes, MHz.
    pub clock_mhz: f64,
    /// The fastest tensor-core instruction (wgmma on Hopper), TFLOP/s.
    pub tensor_tflops: f64,
    /// `mma.sync` (what v1–v4 and attention use), TFLOP/s.
    pub mma_sync_tflops: f64,
    pub fp32_tflops: f64,
    pub dram_gbs: f64,
    pub l2_mb: f64,
    pub sources: &'static str,
}

/// The card table. Sources: NVIDIA's whitepapers (H100 Tensor Core GPU Architecture, Table 2;
/// A100 Tensor Core GPU Architecture; Ampere GA102, appendix A; Ada GPU Architecture, appendix)
/// and datasheets (H200; A100 80 GB), as quoted in the sources named per row. GeForce cards run
/// f32-accumulate MMA at half their f16-accumulate rate; Hopper's `mma.sync` reaches about ⅔ of
/// the wgmma peak (FlashAttention-3 blog, footnote 1, citing Luo et al., arXiv:2402.13499,
/// measured on H800): 989 × ⅔ ≈ 660, a measured fraction, not a datasheet figure.
pub const CARDS: [Card; 6] = [
    Card {
        key: "h100",
        name: "H100 SXM5 80 GB",
        arch: "sm_90a",
        sms: 132,
        clock_mhz: 1830.0,
        tensor_tflops: 989.4,
        mma_sync_tflops: 660.0,
        fp32_tflops: 66.9,
        dram_gbs: 3350.0,
        l2_mb: 50.0,
        sources: "H100 whitepaper Table 2 (989.4 dense BF16, 66.9 FP32, 132 SMs); FlashAttention-3 (arXiv:2407.08608) \
                  App. C.1: 989 TF/s assumes 1830 MHz; HBM3 3.35 TB/s, 50 MB L2 (datasheet)",
    },
    Card {
        key: "h200",
        name: "H200 SXM 141 GB",
        arch: "sm_90a",
        sms: 132,
        clock_mhz: 1830.0,
        tensor_tflops: 989.0,
        mma_sync_tflops: 660.0,
        fp32_tflops: 67.0,
        dram_gbs: 4800.0,
        l2_mb: 50.0,
        sources: "H200 datasheet (1979 sparse BF16 → 989 dense, 67 FP32, HBM3e 4.8 TB/s); the GH100 die of the H100 \
                  (132 SMs, 50 MB L2)",
    },
    Card {
        key: "a100",
        name: "A100 SXM4 80 GB",
        arch: "sm_80",
        sms: 108,
        clock_mhz: 1410.0,
        tensor_tflops: 312.0,
        mma_sync_tflops: 312.0,
        fp32_tflops: 19.5,
        dram_gbs: 2039.0,
        l2_mb: 40.0,
        sources: "A100 whitepaper and 80 GB datasheet (312 BF16, 19.5 FP32, HBM2e 2039 GB/s, 108 SMs at 1410 MHz, 40 MB L2)",
    },
    Card {
        key: "rtx4090",
        name: "GeForce RTX 4090",
        arch: "sm_89",
        sms: 128,
        clock_mhz: 2520.0,
        tensor_tflops: 165.2,
        mma_sync_tflops: 165.2,
        fp32_tflops: 82.6,
        dram_gbs: 1008.0,
        l2_mb: 72.0,
        sources: "Ada whitepaper appendix (165.2 FP16/BF16 with FP32 accumulate, 330.3 with FP16, 82.6 FP32, 128 SMs at \
                  2520 MHz, GDDR6X 1008 GB/s, 72 MB L2)",
    },
    Card {
        key: "rtx3090",
        name: "GeForce RTX 3090",
        arch: "sm_86",
        sms: 82,
        clock_mhz: 1695.0,
        tensor_tflops: 71.2,
        mma_sync_tflops: 71.2,
        fp32_tflops: 35.6,
        dram_gbs: 936.0,
        l2_mb: 6.0,
        sources: "GA102 whitepaper appendix A (142 dense FP16-accumulate → 71.2 with FP32 accumulate, 35.6 FP32, 82 SMs at \
                  1695 MHz, GDDR6X 936 GB/s, 6 MB L2)",
    },
    Card {
        key: "rtx4060ti",
        name: "GeForce RTX 4060 Ti",
        arch: "sm_89",
        sms: 34,
        clock_mhz: 2535.0,
        tensor_tflops: 44.1,
        mma_sync_tflops: 44.1,
        fp32_tflops: 22.06,
        dram_gbs: 288.0,
        l2_mb: 32.0,
        sources: "34 SMs at 2535 MHz (NVIDIA specifications), Ada's 512 f32-accumulate flops per SM per clock → 44.1 \
                  (derived), 22.06 FP32, GDDR6 128-bit 18 Gbps = 288 GB/s, 32 MB L2",
    },
];

/// The card named `key` (case-insensitive), or an error that lists the table.
pub fn card(key: &str) -> Result<&'static Card, String> {
    let k = key.to_ascii_lowercase().replace([' ', '-', '_'], "");
    CARDS.iter().find(|c| c.key == k).ok_or_else(|| {
        let known: Vec<&str> = CARDS.iter().map(|c| c.key).collect();
        format!("--card {key}: not in the card table ({})", known.join(", "))
    })
}

/// One launch's modeled time and what bounds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub tensor_s: f64,
    /// `None` without a static profile (no ptxas/nvdisasm).
    pub issue_s: Option<f64>,
    pub dram_s: f64,
    pub smem_s: f64,
    pub time_s: f64,
    /// "tensor", "issue", "DRAM", "shared memory" or "launch".
    pub bound: &'static str,
    pub ctas_per_sm: u32,
    /// CTAs over the CTAs one wave holds.
    pub waves: f64,
    pub flops: f64,
    pub dram_bytes: f64,
    /// The sample held less than one wave at this occupancy: DRAM bytes are an upper bound.
    pub dram_upper_bound: bool,
    /// Warp instructions of the launch (from the static profile).
    pub instructions: Option<f64>,
}

impl Prediction {
    /// Tensor-core flops per second over the card's peak (the fastest instruction's).
    pub fn tensor_fraction(&self, c: &Card) -> f64 {
        self.flops / self.time_s / (c.tensor_tflops * 1e12)
    }
    pub fn dram_fraction(&self, c: &Card) -> f64 {
        self.dram_bytes / self.time_s / (c.dram_gbs * 1e9)
    }
}

/// Resident CTAs per SM of the launch on `c` from the static profile (1 without one).
pub fn ctas_per_sm(c: &Card, l: &LaunchProfile, st: Option<&KernelStatic>) -> u32 {
    let Some(st) = st else { return 1 };
    let Some(limits) = super::arch::limits(c.arch) else { return 1 };
    let threads = l.block.iter().product::<u32>();
    super::arch::occupancy(&limits, &st.resources, threads, l.dyn_smem as u32).blocks_per_sm.max(1)
}

/// Trips of the static main loop per warp, read off the run: the tensor-core instructions each
/// warp issued over the loop's MMA-equivalents (the loop's global loads where it has no MMA);
/// `None` for straight-line code.
pub fn trips(l: &LaunchProfile, st: &KernelStatic) -> Option<f64> {
    let (_, lp) = st.main_loop.as_ref()?;
    let warps = l.warps().max(1.0);
    let per_warp = |n: u64| l.total(n) / warps;
    // A wgmma is counted once per warpgroup in m64n8k16 units (m64n128k16 is 16) and appears in
    // each of its 4 warps' SASS as one HGMMA of 4 MMA-equivalents a unit.
    let mma = per_warp(l.raw.mma_warp) + 4.0 * 4.0 * per_warp(l.raw.wgmma_group);
    Some(if lp.mma_equiv > 0.0 {
        mma / lp.mma_equiv
    } else {
        let ldg = (lp.ldg32 + lp.ldg64 + lp.ldg128 + lp.ldgsts + lp.utmaldg) as f64;
        if ldg > 0.0 { per_warp(l.raw.gld_req + l.raw.cpasync_req) / ldg } else { 1.0 }
    })
}

/// Warp instructions of the launch: the straight-line part once and the main loop [`trips`]
/// times per warp.
pub fn instructions(l: &LaunchProfile, st: &KernelStatic) -> f64 {
    let whole = st.whole.total as f64;
    match (&st.main_loop, trips(l, st)) {
        (Some((_, lp)), Some(t)) => l.warps() * (whole - lp.total as f64 + lp.total as f64 * t.max(1.0)),
        _ => l.warps() * whole,
    }
}

/// The model's time for one launch on `c`.
pub fn predict(c: &Card, l: &LaunchProfile, st: Option<&KernelStatic>) -> Prediction {
    let clock = c.clock_mhz * 1e6;
    let per_sm = ctas_per_sm(c, l, st);
    let ctas = l.raw.ctas_total as f64;
    let waves = ctas / (c.sms * per_sm) as f64;
    // CTAs spread over the SMs: the busiest SM holds ⌈CTAs / SMs⌉ of them, and its tensor cores
    // and schedulers serve them whether they are resident together or one after another.
    let per_sm_load = ctas / c.sms as f64;
    let quant = if ctas > 0.0 { per_sm_load.ceil() / per_sm_load } else { 1.0 };
    let resident = (per_sm as f64).min(per_sm_load.ceil()).max(1.0);
    let (mma, wgmma) = (l.mma_flops(), l.wgmma_flops());
    let tensor_s = (mma / (c.mma_sync_tflops * 1e12) + wgmma / (c.tensor_tflops * 1e12)) * quant;
    let instructions = st.map(|s| instructions(l, s));
    let issue_s = instructions.map(|n| {
        let warps_per_scheduler = resident * l.block.iter().product::<u32>().div_ceil(32) as f64 / SCHEDULERS;
        let u = (warps_per_scheduler / 2.0).min(1.0);
        n / (c.sms as f64 * SCHEDULERS * clock * u) * quant
    });
    let dram_bytes = l.dram_bytes(per_sm);
    let dram_s = dram_bytes / (c.dram_gbs * 1e9);
    let smem_s = l.shared_wavefronts() / (c.sms as f64 * SMEM_WAVEFRONTS_PER_CLOCK * clock) * quant;
    let parts = [("tensor", tensor_s), ("issue", issue_s.unwrap_or(0.0)), ("DRAM", dram_s), ("shared memory", smem_s)];
    let (bound, body) = parts.into_iter().fold(("launch", 0.0), |b, p| if p.1 > b.1 { p } else { b });
    Prediction {
        tensor_s,
        issue_s,
        dram_s,
        smem_s,
        time_s: body + LAUNCH_S,
        bound,
        ctas_per_sm: per_sm,
        waves,
        flops: mma + wgmma,
        dram_bytes,
        dram_upper_bound: l.dram_upper_bound(per_sm),
        instructions,
    }
}
