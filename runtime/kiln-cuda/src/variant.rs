//! The GEMM variants of `kernels/matmul.cu` as values: the one list the backend, the CLI, the
//! benchmarks and the tests iterate, with each variant's names, kernels and requirements.
//!
//! A backend instance runs one variant ([`KernelBackend::gemm`]); another variant on the same
//! device is [`KernelBackend::with_gemm`]. Adding a variant: its kernels in `kernels/matmul.cu`,
//! a value here, its launch shape in `backend/matmul.rs`.
//!
//! [`KernelBackend::gemm`]: crate::backend::KernelBackend::gemm
//! [`KernelBackend::with_gemm`]: crate::backend::KernelBackend::with_gemm

use std::fmt;
use std::str::FromStr;

use kiln_core::DType;

/// One GEMM variant. `V3` … `V6` use tensor cores where B is 16-bit or block-quantized
/// (decoded to bf16) and run `V2`'s kernel for f32 B (tensor cores would round it). `V5` (wgmma)
/// needs a Hopper device with an sm_90a module; elsewhere the backend runs `V4` and says so once.
/// `V6` (the multistage cp.async GEMM) takes 16-bit operands: the backend packs f32 A (and
/// LoRA's factors) to B's type first and decodes a block-quantized weight to bf16 before the
/// product; operands whose strides or alignment 16-byte copies cannot serve run `V4` (said
/// once), a quantized one with `V4`'s decoding kernel. `V7` (TMA loads, an mbarrier ring and
/// warp-specialized wgmma) takes v6's packed operands in the forward (NK) layout on Hopper and
/// runs `V6` for the other layouts and elsewhere; the backend opens a Hopper GPU with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GemmVariant {
    V1,
    V2,
    V3,
    V4,
    V5,
    /// The default: the fastest on the profiler's model of every card it covers (RESULTS.md).
    #[default]
    V6,
    V7,
}

/// `(name, full name, kernels for B f32, bf16, f16, block-quantized)` of each variant, in
/// [`GemmVariant::ALL`] order. The kernel names are the entry points of `kernels/matmul.cu`.
const TABLE: [(&str, &str, [&str; 4]); 7] = [
    ("v1", "v1_naive", ["gemm_v1_naive_f32", "gemm_v1_naive_bf16", "gemm_v1_naive_f16", "gemm_v1_naive_q"]),
    ("v2", "v2_tiled", ["gemm_v2_tiled_f32", "gemm_v2_tiled_bf16", "gemm_v2_tiled_f16", "gemm_v2_tiled_q"]),
    ("v3", "v3_mma", ["gemm_v2_tiled_f32", "gemm_v3_mma_bf16", "gemm_v3_mma_f16", "gemm_v3_mma_q"]),
    (
        "v4",
        "v4_mma_pipelined",
        ["gemm_v2_tiled_f32", "gemm_v4_mma_pipelined_bf16", "gemm_v4_mma_pipelined_f16", "gemm_v4_mma_pipelined_q"],
    ),
    ("v5", "v5_wgmma", ["gemm_v2_tiled_f32", "gemm_v5_wgmma_bf16", "gemm_v5_wgmma_f16", "gemm_v5_wgmma_q"]),
    (
        "v6",
        "v6_mma_multistage",
        ["gemm_v2_tiled_f32", "gemm_v6_mma_multistage_bf16", "gemm_v6_mma_multistage_f16", "gemm_v4_mma_pipelined_q"],
    ),
    (
        "v7",
        "v7_tma_wgmma",
        ["gemm_v2_tiled_f32", "gemm_v7_tma_wgmma_bf16", "gemm_v7_tma_wgmma_f16", "gemm_v4_mma_pipelined_q"],
    ),
];

impl GemmVariant {
    /// Every variant, in order.
    pub const ALL: [GemmVariant; 7] = [
        GemmVariant::V1,
        GemmVariant::V2,
        GemmVariant::V3,
        GemmVariant::V4,
        GemmVariant::V5,
        GemmVariant::V6,
        GemmVariant::V7,
    ];

    /// The variant a device opens with when `KILN_CUDA_GEMM` is unset: v7 where wgmma runs on a
    /// GPU (Hopper), v6 elsewhere (the emulation included, whose tests name v7 themselves).
    pub fn default_for(hopper_gpu: bool) -> GemmVariant {
        if hopper_gpu { GemmVariant::V7 } else { GemmVariant::V6 }
    }

    fn row(self) -> &'static (&'static str, &'static str, [&'static str; 4]) {
        &TABLE[self as usize]
    }

    /// "v1" … "v6" (what `KILN_CUDA_GEMM` takes).
    pub fn name(self) -> &'static str {
        self.row().0
    }

    /// The name in the kernels' entry points: "v1_naive", "v2_tiled", "v3_mma",
    /// "v4_mma_pipelined", "v5_wgmma", "v6_mma_multistage".
    pub fn full_name(self) -> &'static str {
        self.row().1
    }

    /// The kernel this variant launches for a B operand of type `b` (bf16, f16, block-quantized;
    /// anything else is f32 on the device). For f32 B the tensor-core variants run `V2`'s kernel.
    pub fn kernel(self, b: DType) -> &'static str {
        let k = &self.row().2;
        match b {
            DType::BF16 => k[1],
            DType::F16 => k[2],
            DType::Quant(_) => k[3],
            _ => k[0],
        }
    }

    /// The variant whose kernel runs for B of type `b`: itself, `V2` for a tensor-core
    /// variant given f32 B, or `V4` for `V6` given block-quantized B.
    pub fn runs_for(self, b: DType) -> GemmVariant {
        match b {
            DType::Quant(_) if matches!(self, GemmVariant::V6 | GemmVariant::V7) => GemmVariant::V4,
            DType::BF16 | DType::F16 | DType::Quant(_) => self,
            _ if self.tensor_cores() => GemmVariant::V2,
            _ => self,
        }
    }

    /// Whether the variant runs 16-bit products on tensor cores (and attention with them: the
    /// tensor-core attention goes with v3–v5, v1 and v2 keep it in f32).
    pub fn tensor_cores(self) -> bool {
        matches!(self, GemmVariant::V3 | GemmVariant::V4 | GemmVariant::V5 | GemmVariant::V6 | GemmVariant::V7)
    }

    /// Whether the variant needs Hopper's `wgmma` (an sm_90a module on a compute capability 9.0
    /// device, or the emulation).
    pub fn needs_wgmma(self) -> bool {
        matches!(self, GemmVariant::V5 | GemmVariant::V7)
    }

    /// The architectures the variant's own kernels run on, in words. (Every kernel compiles for
    /// every target of [`crate::nvrtc`]; the tensor-core variants take a shuffle path for bf16 on
    /// sm_75, which has no bf16 tensor cores, and v6's copies are synchronous there.)
    pub fn archs(self) -> &'static str {
        match self {
            GemmVariant::V5 | GemmVariant::V7 => "sm_90a (Hopper)",
            GemmVariant::V6 => "sm_75 and newer (asynchronous copies from sm_80)",
            _ => "sm_75 and newer",
        }
    }

    /// Whether a device of compute capability `cc` runs this variant itself (not a fallback).
    pub fn runs_on(self, cc: (i32, i32)) -> bool {
        if self.needs_wgmma() { cc == (9, 0) } else { cc >= (7, 5) }
    }
}

impl fmt::Display for GemmVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.full_name())
    }
}

/// A name that is no GEMM variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownGemmVariant(pub String);

impl fmt::Display for UnknownGemmVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = GemmVariant::ALL.iter().map(|v| format!("{} ({})", v.name(), v.full_name())).collect();
        write!(f, "unknown GEMM variant {:?}: one of {}", self.0, all.join(", "))
    }
}

impl std::error::Error for UnknownGemmVariant {}

impl FromStr for GemmVariant {
    type Err = UnknownGemmVariant;
    /// The short name ("v3") or the full one ("v3_mma"), in any case.
    fn from_str(s: &str) -> Result<GemmVariant, UnknownGemmVariant> {
        let t = s.trim().to_ascii_lowercase();
        GemmVariant::ALL
            .into_iter()
            .find(|v| v.name() == t || v.full_name() == t)
            .ok_or_else(|| UnknownGemmVariant(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_kernels_carry_the_full_name() {
        let (_, src) = crate::kernels::SOURCES.iter().find(|(f, _)| *f == "matmul.cu").expect("the GEMM source");
        let entries = crate::kernels::entry_points(src);
        for (i, v) in GemmVariant::ALL.into_iter().enumerate() {
            assert_eq!(v as usize, i);
            assert_eq!(v.name().parse::<GemmVariant>(), Ok(v));
            assert_eq!(v.full_name().to_uppercase().parse::<GemmVariant>(), Ok(v));
            assert_eq!(v.to_string(), v.full_name());
            assert!(v.full_name().starts_with(v.name()));
            for b in [DType::F32, DType::BF16, DType::F16] {
                assert_eq!(v.kernel(b), format!("gemm_{}_{}", v.runs_for(b).full_name(), b.name()));
            }
            let q = DType::Quant(kiln_core::quant::GgmlType::Q4K);
            for b in [DType::F32, DType::BF16, DType::F16, q] {
                assert!(entries.iter().any(|e| e == v.kernel(b)), "{v}: {} is no kernel", v.kernel(b));
            }
        }
        let e = "v9".parse::<GemmVariant>().unwrap_err().to_string();
        assert!(GemmVariant::ALL.iter().all(|v| e.contains(v.full_name())), "{e}");
        assert_eq!(GemmVariant::default(), GemmVariant::V6);
    }
}
