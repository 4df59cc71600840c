//! The wgpu backend's kernel choices as values: the GEMM variant and the GEMMs' precision.
//! Each is a field of a backend instance (`WgpuBackend::with_gemm`,
//! `WgpuBackend::with_precision`), never process-wide state, so runs of different
//! variants share a process (and a device) without taking turns.

use std::fmt;
use std::str::FromStr;

use kiln_core::Error;

/// The f32 GEMM kernels of `shaders/matmul.wgsl` (`KILN_WGPU_GEMM=v2|v3`, default v3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmVariant {
    /// `v2_smem_tiled`: a 16×16 tile of C per workgroup, one output per thread.
    V2,
    /// `v3_register_blocked`: a 64×64 tile per workgroup, 4×4 outputs per thread.
    V3,
}

impl GemmVariant {
    /// Every variant, in order.
    pub const ALL: [GemmVariant; 2] = [GemmVariant::V2, GemmVariant::V3];

    /// The short name (`KILN_WGPU_GEMM`): "v2", "v3".
    pub fn name(self) -> &'static str {
        match self {
            GemmVariant::V2 => "v2",
            GemmVariant::V3 => "v3",
        }
    }

    /// The full name, as benchmark results report it: "v2_smem_tiled", "v3_register_blocked".
    pub fn full_name(self) -> &'static str {
        match self {
            GemmVariant::V2 => "v2_smem_tiled",
            GemmVariant::V3 => "v3_register_blocked",
        }
    }

    /// The WGSL entry point of the f32 kernel.
    pub fn entry(self) -> &'static str {
        match self {
            GemmVariant::V2 => "gemm",
            GemmVariant::V3 => "gemm_v3",
        }
    }
}

impl fmt::Display for GemmVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GemmVariant {
    type Err = Error;
    /// A variant by its short or full name; the error lists them all.
    fn from_str(s: &str) -> Result<Self, Error> {
        GemmVariant::ALL.into_iter().find(|v| v.name() == s || v.full_name() == s).ok_or_else(|| {
            let names: Vec<String> =
                GemmVariant::ALL.iter().map(|v| format!("{} ({})", v.name(), v.full_name())).collect();
            Error::Msg(format!("unknown wgpu GEMM variant {s:?}: one of {}", names.join(", ")))
        })
    }
}

/// The arithmetic of the GEMMs (every linear layer and matmul): `KILN_WGPU_PRECISION=f32|f16`
/// or `--precision`, default f32 (f16 is opt-in, as mixed precision is in PyTorch: it trades
/// accuracy for speed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// f32 multiply-adds (exact f32 products).
    F32,
    /// f16 multiply-adds in 4-term dots, accumulated in f32, operands scaled by powers of two
    /// (`shaders/matmul_v3h.wgsl`); adapters without SHADER_F16 run f32 instead.
    F16,
}

impl Precision {
    /// Every precision, in order.
    pub const ALL: [Precision; 2] = [Precision::F32, Precision::F16];

    /// "f32", "f16".
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Precision::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Precision::ALL.iter().map(|p| p.name()).collect();
            Error::Msg(format!("unknown wgpu precision {s:?}: one of {}", names.join(", ")))
        })
    }
}

/// A deliberate GEMM bug, switched on only by tests that show the parity table catches it
/// (`WgpuBackend::with_fault`); no backend a user can open carries one.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmFault {
    /// The grid counts whole tiles of columns (`n / tile` instead of `⌈n / tile⌉`), in every
    /// GEMM kernel: when `n` is not a multiple of the tile width and spans more than one tile,
    /// the last, partial column of tiles is never launched and its outputs are never written.
    /// (A grid of no tiles would still launch one, so a product narrower than a tile is whole.)
    DropLastTile,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_errors_list_every_variant() {
        for v in GemmVariant::ALL {
            assert_eq!(v.name().parse::<GemmVariant>().ok(), Some(v));
            assert_eq!(v.full_name().parse::<GemmVariant>().ok(), Some(v));
            assert_eq!(v.to_string(), v.name());
        }
        let e = "v9".parse::<GemmVariant>().unwrap_err().to_string();
        assert!(GemmVariant::ALL.iter().all(|v| e.contains(v.name())), "{e}");
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>().ok(), Some(p));
        }
        assert!("bf16".parse::<Precision>().unwrap_err().to_string().contains("f16"));
    }
}
