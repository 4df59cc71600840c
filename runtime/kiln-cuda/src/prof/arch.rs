//! Per-architecture limits that decide occupancy, and the resources ptxas reports per kernel.
//!
//! Limits from the CUDA C++ Programming Guide (12.9), "Technical Specifications per Compute
//! Capability": 65 536 32-bit registers per SM allocated per warp in units of 256; shared
//! memory per SM and per block (opt-in maximum); 1 KiB of shared memory reserved per block
//! from compute capability 8.0 on.

/// One architecture's occupancy limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ArchLimits {
    /// ptxas's target name (`sm_90a`).
    pub arch: &'static str,
    pub max_warps_per_sm: u32,
    pub max_blocks_per_sm: u32,
    pub regs_per_sm: u32,
    /// Registers are allocated per warp in units of this many.
    pub reg_unit: u32,
    pub max_regs_per_thread: u32,
    /// Shared memory per SM at the largest carve-out, bytes.
    pub smem_per_sm: u32,
    /// Shared memory the runtime reserves per block, bytes.
    pub smem_reserved_per_block: u32,
}

/// The table: sm_80 (A100), sm_86 (RTX 30), sm_89 (RTX 40), sm_90a (H100/H200), sm_120
/// (RTX 50).
pub const ARCHS: [ArchLimits; 5] = [
    ArchLimits { arch: "sm_80", max_warps_per_sm: 64, max_blocks_per_sm: 32, ..BASE_AMPERE },
    ArchLimits { arch: "sm_86", max_warps_per_sm: 48, max_blocks_per_sm: 16, smem_per_sm: 100 * 1024, ..BASE_AMPERE },
    ArchLimits { arch: "sm_89", max_warps_per_sm: 48, max_blocks_per_sm: 24, smem_per_sm: 100 * 1024, ..BASE_AMPERE },
    ArchLimits { arch: "sm_90a", max_warps_per_sm: 64, max_blocks_per_sm: 32, smem_per_sm: 228 * 1024, ..BASE_AMPERE },
    ArchLimits { arch: "sm_120", max_warps_per_sm: 48, max_blocks_per_sm: 32, smem_per_sm: 100 * 1024, ..BASE_AMPERE },
];

const BASE_AMPERE: ArchLimits = ArchLimits {
    arch: "",
    max_warps_per_sm: 64,
    max_blocks_per_sm: 32,
    regs_per_sm: 65536,
    reg_unit: 256,
    max_regs_per_thread: 255,
    smem_per_sm: 164 * 1024,
    smem_reserved_per_block: 1024,
};

/// The limits of `arch` (`sm_90`, `sm_90a` and `compute_90a` name the same table row).
pub fn limits(arch: &str) -> Option<ArchLimits> {
    let a = arch.replace("compute_", "sm_");
    let a = if a == "sm_90" { "sm_90a".to_string() } else { a };
    ARCHS.iter().copied().find(|l| l.arch == a)
}

/// What ptxas -v reports for one entry point.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub registers: u32,
    pub barriers: u32,
    /// Static shared memory, bytes.
    pub smem: u32,
    pub stack: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

/// `ptxas -v` log → resources per entry point, in the order ptxas compiled them.
pub fn parse_ptxas(log: &str) -> Vec<(String, Resources)> {
    let mut out: Vec<(String, Resources)> = Vec::new();
    // The number written just before `word` in `line` (`Used 40 registers`).
    let before = |line: &str, word: &str| -> Option<u32> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            out.push((rest.split('\'').next().unwrap_or("").to_string(), Resources::default()));
            continue;
        }
        let Some((_, r)) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            r.stack = before(line, "bytes stack frame").unwrap_or(0);
            r.spill_stores = before(line, "bytes spill stores").unwrap_or(0);
            r.spill_loads = before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            r.registers = before(line, "registers").unwrap_or(0);
            r.barriers = before(line, "barriers").unwrap_or(0);
            r.smem = before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// Theoretical occupancy of a kernel: resident blocks and warps per SM, and what limits them.
#[derive(Clone, Debug, PartialEq)]
pub struct Occupancy {
    pub threads: u32,
    pub blocks_per_sm: u32,
    pub warps_per_sm: u32,
    /// Resident warps over the SM's maximum.
    pub fraction: f64,
    /// `registers`, `shared memory`, `warps` or `blocks`.
    pub limiter: &'static str,
}

/// Occupancy of a block of `threads` using `r`'s registers and `smem + dyn_smem` bytes.
pub fn occupancy(l: &ArchLimits, r: &Resources, threads: u32, dyn_smem: u32) -> Occupancy {
    let warps = threads.div_ceil(32).max(1);
    let regs_per_warp = (r.registers.max(1) * 32).div_ceil(l.reg_unit) * l.reg_unit;
    let by_regs = (l.regs_per_sm / regs_per_warp) / warps;
    let smem = r.smem + dyn_smem;
    let by_smem = if smem == 0 { u32::MAX } else { l.smem_per_sm / (smem + l.smem_reserved_per_block) };
    let by_warps = l.max_warps_per_sm / warps;
    let limits =
        [(by_regs, "registers"), (by_smem, "shared memory"), (by_warps, "warps"), (l.max_blocks_per_sm, "blocks")];
    let (blocks, limiter) = limits.into_iter().min_by_key(|x| x.0).unwrap_or((0, "warps"));
    Occupancy {
        threads,
        blocks_per_sm: blocks,
        warps_per_sm: blocks * warps,
        fraction: (blocks * warps) as f64 / l.max_warps_per_sm as f64,
        limiter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptxas_log() {
        let log = "ptxas info    : 44 bytes gmem
ptxas info    : Compiling entry function 'gemv_q' for 'sm_90a'
ptxas info    : Function properties for gemv_q
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers
ptxas info    : Compiling entry function 'gemm_v3' for 'sm_90a'
ptxas info    : Function properties for gemm_v3
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 18432 bytes smem, 400 bytes cmem[0]
";
        let r = parse_ptxas(log);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], ("gemv_q".into(), Resources { registers: 32, ..Resources::default() }));
        let want = Resources { registers: 168, barriers: 1, smem: 18432, stack: 16, spill_stores: 8, spill_loads: 4 };
        assert_eq!(r[1], ("gemm_v3".into(), want));
    }

    /// Worked by hand from the Programming Guide's rules (the occupancy calculator gives the same).
    #[test]
    fn occupancy_by_each_limit() {
        let a100 = limits("sm_80").unwrap();
        // 32 registers × 256 threads: 8 warps of 1024 registers; 64 warps fit by registers and
        // by the warp limit: 8 blocks, 100 %.
        let o = occupancy(&a100, &Resources { registers: 32, ..Resources::default() }, 256, 0);
        assert_eq!((o.blocks_per_sm, o.warps_per_sm, o.fraction), (8, 64, 1.0));
        // 168 registers → 5376 per warp (a multiple of 256): 12 warps by registers, 3 blocks of 4.
        let o = occupancy(&a100, &Resources { registers: 168, ..Resources::default() }, 128, 0);
        assert_eq!((o.blocks_per_sm, o.warps_per_sm, o.limiter), (3, 12, "registers"));
        // 48 KiB + 1 KiB reserved per block in 164 KiB: 3 blocks.
        let o = occupancy(&a100, &Resources { registers: 32, smem: 48 * 1024, ..Resources::default() }, 128, 0);
        assert_eq!((o.blocks_per_sm, o.limiter), (3, "shared memory"));
        // 32-thread blocks: the 32-block limit, half the warps.
        let o = occupancy(&a100, &Resources { registers: 16, ..Resources::default() }, 32, 0);
        assert_eq!((o.blocks_per_sm, o.fraction, o.limiter), (32, 0.5, "blocks"));
        assert_eq!(limits("compute_90a").unwrap().arch, "sm_90a");
        assert!(limits("sm_75").is_none());
    }
}
