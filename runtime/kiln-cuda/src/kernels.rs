//! The CUDA C sources (`kernels/*.cu`, embedded) and the parameter structs of their kernels.
//! Each struct mirrors the one declared in its `.cu` (field for field; pointers are `u64`); the
//! emulation checks the size at every launch and NVRTC builds use the same definitions.

use bytemuck::{Pod, Zeroable};

/// The project header every kernel includes.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

/// `(file, source)` of every kernel file.
pub const SOURCES: [(&str, &str); 3] = [
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("embedding.cu", include_str!("../../../kernels/embedding.cu")),
    ("gemm.cu", include_str!("../../../kernels/gemm.cu")),
];

/// A kernel file with `#include "common.cuh"` replaced by the header's text, so NVRTC needs no
/// file system access to kiln's sources.
pub fn expanded(source: &str) -> String {
    source.replace("#include \"common.cuh\"", COMMON)
}

/// `kernels/elementwise.cu` `EwParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EwParams {
    pub a: u64,
    pub b: u64,
    pub out: u64,
    pub n: i64,
    pub s: f32,
    pub pad: i32,
}

/// `kernels/elementwise.cu` `ReduceParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ReduceParams {
    pub a: u64,
    pub out: u64,
    pub rows: i64,
    pub cols: i64,
}

/// `kernels/embedding.cu` `EmbParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EmbParams {
    pub src: u64,
    pub ids: u64,
    pub out: u64,
    pub err: u64,
    pub rows: i64,
    pub h: i32,
    pub vocab: i32,
}

/// `kernels/gemm.cu` `GemmParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GemmParams {
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub bias: u64,
    pub lora_u: u64,
    pub lora_l: u64,
    pub sam: i64,
    pub sak: i64,
    pub sbk: i64,
    pub sbn: i64,
    pub sl_n: i64,
    pub sl_r: i64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub ldc: i32,
    pub rank: i32,
    pub alpha: f32,
    pub lora_scale: f32,
    pub pad: i32,
}

/// Every kernel entry point, by file (what `kiln selftest` and the NVRTC tier list).
pub fn entry_points(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in source.lines() {
        let l = line.trim_start();
        for mac in ["KILN_KERNEL(", "KILN_KERNEL_LB("] {
            if let Some(rest) = l.strip_prefix(mac)
                && let Some(name) = rest.split(',').next()
                && !name.contains("##")
            {
                names.push(name.trim().to_string());
            }
        }
        // Kernels stamped out by a macro (`KILN_CAST(float, bf16)` → `cast_float_bf16`).
        if let Some(rest) = l.strip_prefix("KILN_CAST(") {
            let args: Vec<&str> = rest.trim_end_matches(')').split(',').map(str::trim).collect();
            if args.len() == 2 {
                names.push(format!("cast_{}_{}", args[0], args[1]));
            }
        }
    }
    names
}
