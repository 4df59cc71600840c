//! The profiler's dynamic half (`kiln prof run`): the emulation runs a kernel's CTAs with every
//! load and store hooked (kernels/emu/prof.cpp rebuilds the warp-level requests and scores them)
//! and returns, per launch, the counts a GPU's memory system would see. The method is in
//! prof.cpp's header comment; in brief: coalescing is bytes requested over 32-byte sectors
//! touched, shared-memory cost is wavefronts (passes of the 32 banks) per request, and DRAM
//! traffic follows a stated L2 model (each distinct sector read once per wave of CTAs that run at
//! the same time; each distinct sector written once).
//!
//! Sampling: a launch of more CTAs than `max_ctas` runs only the first `max_ctas` in launch order
//! (x fastest, as a GPU's block scheduler starts them) and every count is scaled by
//! total / run. That is exact for kernels whose CTAs do equal work (GEMM and attention tiles away
//! from the ragged edges) and is reported on every row where it happened.

/// The counters of one profiled launch, as the emulation fills them (kernels/emu/prof.h's
/// `KemuProfile`, field by field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RawProfile {
    pub max_ctas: u64,
    pub wave: u64,
    pub ctas_total: u64,
    pub ctas_run: u64,
    pub threads_per_cta: u64,
    pub gld_req: u64,
    pub gld_bytes: u64,
    pub gld_sectors: u64,
    pub gst_req: u64,
    pub gst_bytes: u64,
    pub gst_sectors: u64,
    pub gatom_req: u64,
    pub gatom_sectors: u64,
    pub gld_width: [u64; 5],
    pub cpasync_req: u64,
    pub cpasync_bytes: u64,
    pub cpasync_sectors: u64,
    pub lds_req: u64,
    pub lds_wavefronts: u64,
    pub sts_req: u64,
    pub sts_wavefronts: u64,
    pub ldsm_req: u64,
    pub ldsm_wavefronts: u64,
    pub const_req: u64,
    pub mma_warp: u64,
    /// wgmma per warpgroup, in m64n8k16 units (an m64n128k16 counts 16, an m64n16k16 two).
    pub wgmma_group: u64,
    pub wgmma_smem_bytes: u64,
    pub barriers: u64,
    pub dram_read_sectors: [u64; WAVES],
    pub unique_read_sectors: u64,
    pub unique_write_sectors: u64,
    pub dram_wave_ctas: [u64; WAVES],
    pub dram_partial: u64,
}

/// Resident CTAs per SM the L2 model tracks (kernels/emu/prof.h's `KEMU_WAVES`).
pub const WAVES: usize = 8;

/// What to profile: how many CTAs of a launch to run at most, and the L2 model's wave.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProfileOpts {
    /// 0: every CTA.
    pub max_ctas: u64,
    /// SMs of the modeled GPU: a wave is this many × the resident CTAs per SM (0: the whole
    /// launch is one wave).
    pub wave: u64,
}

impl Default for ProfileOpts {
    fn default() -> Self {
        // H100 SXM's 132 SMs; up to two waves of CTAs at one CTA per SM.
        ProfileOpts { max_ctas: 264, wave: 132 }
    }
}

/// One profiled launch.
#[derive(Clone, Debug, PartialEq)]
pub struct LaunchProfile {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dyn_smem: usize,
    pub raw: RawProfile,
}

/// Flops of one mma.sync m16n8k16 and of one wgmma m64n8k16 (the `wgmma_group` unit).
pub const MMA_FLOPS: f64 = 2.0 * 16.0 * 8.0 * 16.0;
pub const WGMMA_FLOPS: f64 = 2.0 * 64.0 * 8.0 * 16.0;

impl LaunchProfile {
    /// Whole-launch figures from the CTAs that ran (1 when all ran).
    pub fn scale(&self) -> f64 {
        if self.raw.ctas_run == 0 { 0.0 } else { self.raw.ctas_total as f64 / self.raw.ctas_run as f64 }
    }
    pub fn sampled(&self) -> bool {
        self.raw.ctas_run < self.raw.ctas_total
    }
    /// A counter scaled to the whole launch.
    pub fn total(&self, count: u64) -> f64 {
        count as f64 * self.scale()
    }
    /// Global loads: bytes requested over bytes of the sectors touched (1.0: fully coalesced).
    pub fn load_efficiency(&self) -> Option<f64> {
        let r = &self.raw;
        let (b, s) = (r.gld_bytes + r.cpasync_bytes, r.gld_sectors + r.cpasync_sectors);
        (s > 0).then(|| b as f64 / (32.0 * s as f64))
    }
    pub fn store_efficiency(&self) -> Option<f64> {
        let r = &self.raw;
        (r.gst_sectors > 0).then(|| r.gst_bytes as f64 / (32.0 * r.gst_sectors as f64))
    }
    /// Shared-memory wavefronts per request, loads (with ldmatrix) and stores; the ideal is 1 for
    /// ≤ 4-byte accesses, 2 for 8-byte, 4 for 16-byte and ldmatrix.x4.
    pub fn shared_load_wavefronts_per_request(&self) -> Option<f64> {
        let r = &self.raw;
        let q = r.lds_req + r.ldsm_req;
        (q > 0).then(|| (r.lds_wavefronts + r.ldsm_wavefronts) as f64 / q as f64)
    }
    pub fn shared_store_wavefronts_per_request(&self) -> Option<f64> {
        let r = &self.raw;
        (r.sts_req > 0).then(|| r.sts_wavefronts as f64 / r.sts_req as f64)
    }
    /// Every shared-memory wavefront of the launch (the shared-memory pipe's work), wgmma's
    /// operand reads included at 128 bytes a wavefront.
    pub fn shared_wavefronts(&self) -> f64 {
        let r = &self.raw;
        self.total(r.lds_wavefronts + r.sts_wavefronts + r.ldsm_wavefronts) + self.total(r.wgmma_smem_bytes) / 128.0
    }
    /// Tensor-core flops of the launch.
    pub fn mma_flops(&self) -> f64 {
        self.total(self.raw.mma_warp) * MMA_FLOPS
    }
    pub fn wgmma_flops(&self) -> f64 {
        self.total(self.raw.wgmma_group) * WGMMA_FLOPS
    }
    /// DRAM bytes under the L2 model at `ctas_per_sm` resident CTAs per SM (clamped to
    /// 1 ..= [`WAVES`]): reads once per wave (the whole waves that ran, per CTA, times the
    /// launch's CTAs), writes once.
    pub fn dram_bytes(&self, ctas_per_sm: u32) -> f64 {
        let i = Self::wave_index(ctas_per_sm);
        let r = &self.raw;
        let reads = if r.dram_wave_ctas[i] == 0 {
            0.0
        } else {
            r.dram_read_sectors[i] as f64 * r.ctas_total as f64 / r.dram_wave_ctas[i] as f64
        };
        32.0 * (reads + self.total(r.unique_write_sectors))
    }
    /// Whether the sample held less than one wave at `ctas_per_sm`: the DRAM figure then assumes
    /// no reuse beyond the sample (an upper bound).
    pub fn dram_upper_bound(&self, ctas_per_sm: u32) -> bool {
        self.raw.dram_partial >> Self::wave_index(ctas_per_sm) & 1 == 1
    }
    fn wave_index(ctas_per_sm: u32) -> usize {
        (ctas_per_sm.clamp(1, WAVES as u32) - 1) as usize
    }
    /// Warps of the launch (all CTAs).
    pub fn warps(&self) -> f64 {
        self.raw.ctas_total as f64 * self.raw.threads_per_cta.div_ceil(32) as f64
    }
}

/// Everything one profiled run did: its launches and the host↔device traffic between them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Session {
    pub launches: Vec<LaunchProfile>,
    /// Host-to-device copies and device-to-host copies (each download waits for the device).
    pub uploads: u64,
    pub downloads: u64,
}
