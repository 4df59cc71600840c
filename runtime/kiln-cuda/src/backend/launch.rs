//! Launch shapes and small helpers every op file of the backend shares (kept here, below the
//! op files, so no op file imports another).

use kiln_core::DType;

use super::Held;
use crate::exec::Launch;

/// Threads per block of the grid-stride elementwise kernels.
pub(super) const THREADS: u32 = 256;

/// Enough blocks of 256 threads for `n` elements, at most 4096 (grid-stride kernels take any grid).
pub(super) fn grid(n: usize) -> Launch {
    Launch::linear(n.div_ceil(THREADS as usize).min(4096), THREADS)
}

/// Enough blocks of `threads` for `n` items of a grid-stride kernel, at most 8192.
pub(super) fn grid_of(n: usize, threads: u32) -> Launch {
    Launch::linear(n.div_ceil(threads as usize).clamp(1, 8192), threads)
}

/// The address of an optional operand (0: absent).
pub(super) fn ptr(h: &Option<Held<'_>>) -> u64 {
    h.as_ref().map_or(0, Held::ptr)
}

/// The C++ type name the kernels use for a float type (`cast_float_bf16`, `embedding_fwd_bf16`).
pub(super) fn type_name(d: DType) -> Option<&'static str> {
    match d {
        DType::F32 | DType::F64 => Some("float"),
        DType::BF16 => Some("bf16"),
        DType::F16 => Some("f16"),
        _ => None,
    }
}
