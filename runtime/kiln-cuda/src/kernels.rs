//! The CUDA C sources (`kernels/*.cu`, embedded) and the parameter structs of their kernels.
//! Each struct mirrors the one declared in its `.cu` (field for field; pointers are `u64`); the
//! emulation checks the size at every launch and NVRTC builds use the same definitions.

use bytemuck::{Pod, Zeroable};

/// The project header every kernel includes.
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");
/// Its Hopper part (wgmma, TMA, mbarriers), which it includes.
pub const SM90: &str = include_str!("../../../kernels/sm90.cuh");

/// `(file, source)` of every kernel file: one per op family (`kernels/README.md`).
pub const SOURCES: [(&str, &str); 11] = [
    ("attention.cu", include_str!("../../../kernels/attention.cu")),
    ("elementwise.cu", include_str!("../../../kernels/elementwise.cu")),
    ("embedding.cu", include_str!("../../../kernels/embedding.cu")),
    ("glu.cu", include_str!("../../../kernels/glu.cu")),
    ("loss.cu", include_str!("../../../kernels/loss.cu")),
    ("matmul.cu", include_str!("../../../kernels/matmul.cu")),
    ("matmul_pack.cu", include_str!("../../../kernels/matmul_pack.cu")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
    ("optim.cu", include_str!("../../../kernels/optim.cu")),
    ("quant.cu", include_str!("../../../kernels/quant.cu")),
    ("rope.cu", include_str!("../../../kernels/rope.cu")),
];

/// A kernel file with `#include "common.cuh"` replaced by the header's text (and its own
/// `#include "sm90.cuh"` by that one's), so NVRTC needs no file system access to kiln's sources.
pub fn expanded(source: &str) -> String {
    source.replace("#include \"common.cuh\"", &COMMON.replace("#include \"sm90.cuh\"", SM90))
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
    /// `embedding_fwd_q`: the table's block type, values and bytes per block.
    pub qtype: i32,
    pub qblock: i32,
    pub qbytes: i32,
    pub pad: i32,
}

/// `kernels/matmul.cu` `GemmParams`.
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
    pub qtype: i32,
    pub qblock: i32,
    pub qbytes: i32,
}

/// `kernels/matmul.cu` `Gemm16Params` (the v6 GEMM on 16-bit operands).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Gemm16Params {
    pub a: u64,
    pub b: u64,
    pub u: u64,
    pub l: u64,
    pub c: u64,
    pub bias: u64,
    pub lda: i64,
    pub ldb: i64,
    pub ldl: i64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub ldc: i32,
    pub ru: i32,
    pub alpha: f32,
    pub kst: i32,
    /// C in the operands' 16-bit type (the mixed-precision path), not f32.
    pub c16: i32,
}

/// `kernels/common.cuh` `TensorMap`: a TMA tensor map's 128 bytes, as the device reads them
/// ([`crate::exec::Exec::tensor_map_2d`] encodes one).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct TensorMap(pub [u64; 16]);

/// `kernels/matmul.cu` `Gemm90Params` (the v7 GEMM: TMA and wgmma on sm_90a).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Gemm90Params {
    pub ta: TensorMap,
    pub tb: TensorMap,
    pub tu: TensorMap,
    pub tl: TensorMap,
    pub c: u64,
    pub bias: u64,
    /// The fused LoRA's U = x·Aᵀ [m, rank] (f32) for the backward, or 0.
    pub u_out: u64,
    pub m: i32,
    pub n: i32,
    pub k: i32,
    pub ldc: i32,
    /// The pre-pass LoRA's padded rank (a multiple of 64), or 0.
    pub ru: i32,
    pub alpha: f32,
    /// C in the operands' 16-bit type (the mixed-precision path), not f32.
    pub c16: i32,
    /// The fused LoRA's rank (≤ 16; the `_lora_` kernels: `tu` maps LoRA's A, `tl` its B, packed
    /// with the rank padded to 16) and scale.
    pub rank: i32,
    pub scale: f32,
    pub pad: i32,
}

/// `kernels/matmul_pack.cu` `TransposeParams` (the 16-bit transpose of v7's dx weight).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct TransposeParams {
    pub input: u64,
    pub out: u64,
    pub ld_in: i64,
    pub ld_out: i64,
    pub rows: i32,
    pub cols: i32,
}

/// `kernels/matmul_pack.cu` `SplitSumParams` (the split-K sum of the v6 GEMM's slabs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SplitSumParams {
    pub ws: u64,
    pub out: u64,
    pub len: i64,
    pub splits: i32,
    /// > 0: the slabs are [len / cols, cols] and `out` is written as their transpose.
    pub cols: i32,
}

/// `kernels/matmul_pack.cu` `PackParams` (f32 or 16-bit → 16-bit operands of v6 and v7).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PackParams {
    pub x: u64,
    pub out: u64,
    pub s_row: i64,
    pub s_col: i64,
    pub rows: i32,
    pub cols: i32,
    pub out_rows: i32,
    pub ld: i32,
    pub scale: f32,
    pub pad: i32,
}

/// `kernels/matmul_pack.cu` `PackPairParams` (two packings in one launch, `blockIdx.z` the job).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PackPairParams {
    pub job: [PackParams; 2],
}

/// `kernels/quant.cu` `DequantParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct DequantParams {
    pub w: u64,
    pub out: u64,
    pub n: i64,
    pub ty: i32,
    pub block: i32,
    pub bytes: i32,
    /// Blocks per tile (a multiple of 16 bytes, about 4 KB).
    pub tile: i32,
}

/// The id `kiln_decode` (kernels/common.cuh) switches on for a block type, with its
/// `(values, bytes)` per block; `None` for types without a kernel.
pub fn quant_kernel_id(t: kiln_core::quant::GgmlType) -> Option<(i32, i32, i32)> {
    use kiln_core::quant::GgmlType as G;
    let id = match t {
        G::Q8_0 => 8,
        G::Q4_0 => 2,
        G::Q4_1 => 3,
        G::Q5_0 => 6,
        G::Q4K => 12,
        G::Q5K => 13,
        G::Q6K => 14,
        G::NF4 => 1000,
        G::NF4DQ => 1001,
        _ => return None,
    };
    let (block, bytes) = t.block();
    Some((id, block as i32, bytes as i32))
}

/// `kernels/norm.cu` `NormParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct NormParams {
    pub x: u64,
    pub w: u64,
    pub dy: u64,
    pub rstd: u64,
    pub y: u64,
    pub rstd_out: u64,
    pub rows: i64,
    pub h: i32,
    pub eps: f32,
}

/// `kernels/rope.cu` `RopeParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RopeParams {
    pub x: u64,
    pub pos: u64,
    pub inv_freq: u64,
    pub y: u64,
    pub bt: i64,
    pub h: i32,
    pub d: i32,
    pub sign: f32,
    pub rh: i32,
    pub mscale: f32,
    pub _pad: i32,
}

/// `kernels/glu.cu` `GluParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GluParams {
    pub g: u64,
    pub u: u64,
    pub dy: u64,
    pub out0: u64,
    pub out1: u64,
    pub n: i64,
}

/// `kernels/loss.cu` `CeParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct CeParams {
    pub x: u64,
    pub t: u64,
    pub lse: u64,
    pub g: u64,
    pub out0: u64,
    pub out1: u64,
    pub m: i64,
    pub v: i32,
    /// ce_chunk: the gradient's scale; loss_sum: the sum's.
    pub s: f32,
}

/// `kernels/optim.cu` `MultiTensor`: one row of the tensor table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MultiTensor {
    pub g: u64,
    pub p: u64,
    pub m: u64,
    pub v: u64,
    pub n: i64,
}

/// `kernels/optim.cu` `AdamCoeffs`: one AdamW step's coefficients.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AdamCoeffs {
    pub b1: f32,
    pub c1: f32,
    pub b2: f32,
    pub c2: f32,
    pub decay: f32,
    pub step: f32,
    pub bc2s: f32,
    pub eps: f32,
    pub gscale: f32,
    pub pad: i32,
}

impl AdamCoeffs {
    /// The coefficients of step `hp` (computed in f64, `AdamWStep::factors`), gradients scaled
    /// by `grad_scale` (clipping; 1: none).
    pub fn new(hp: &kiln_core::backend::AdamWStep, grad_scale: f64) -> AdamCoeffs {
        let f = hp.factors();
        AdamCoeffs {
            b1: f.b1,
            c1: f.c1,
            b2: f.b2,
            c2: f.c2,
            decay: f.decay,
            step: f.step,
            bc2s: f.bc2s,
            eps: f.eps,
            gscale: grad_scale as f32,
            pad: 0,
        }
    }
}

/// `kernels/optim.cu` `MultiParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MultiParams {
    pub table: u64,
    pub chunks: u64,
    pub out: u64,
    pub nchunks: i32,
    pub chunk: i32,
    pub c: AdamCoeffs,
}

/// `kernels/optim.cu` `Adam8Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Adam8Params {
    pub g: u64,
    pub p: u64,
    pub mc: u64,
    pub ms: u64,
    pub vc: u64,
    pub vs: u64,
    pub n: i64,
    pub c: AdamCoeffs,
}

/// `kernels/attention.cu` `AttnParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct AttnParams {
    pub q: u64,
    pub k: u64,
    pub v: u64,
    pub seg: u64,
    pub o: u64,
    pub lse: u64,
    pub d_o: u64,
    pub delta: u64,
    pub out0: u64,
    pub out1: u64,
    pub out2: u64,
    pub b: i32,
    pub t: i32,
    pub tk: i32,
    pub hq: i32,
    pub hkv: i32,
    pub d: i32,
    pub has_seg: i32,
    pub shared_prefix: i32,
    pub scale: f32,
    /// Sliding window in keys; 0: none.
    pub window: i32,
    /// Logit soft-cap; 0: none.
    pub softcap: f32,
    /// v3: Q, K and V rows 16-byte aligned and D a multiple of 8 (cp.async loads).
    pub vec: i32,
}

/// Every kernel entry point, by file (what `kiln selftest` and the NVRTC tier list).
pub fn entry_points(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in source.lines() {
        let l = line.trim_start();
        for mac in ["KILN_KERNEL(", "KILN_KERNEL_LB(", "KILN_KERNEL_OCC(", "KILN_KERNEL_GC("] {
            if let Some(rest) = l.strip_prefix(mac)
                && let Some(name) = rest.split(',').next()
                && !name.contains("##")
            {
                names.push(name.trim().to_string());
            }
        }
        // One kernel per activation type stamped out by a `KILN_<FAMILY>3(stem, …)` macro
        // (`KILN_EW3(add, add_body)` → `add_f32`, `add_bf16`, `add_f16`).
        if let Some((mac, rest)) = l.split_once('(')
            && mac.starts_with("KILN_")
            && mac.ends_with('3')
            && let Some(stem) = rest.split([',', ')']).next()
        {
            names.extend(["f32", "bf16", "f16"].map(|t| format!("{}_{t}", stem.trim())));
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

#[cfg(test)]
mod tests {
    use super::SOURCES;
    use crate::GemmVariant;

    const README: &str = include_str!("../../../kernels/README.md");

    /// `SOURCES` is every `kernels/*.cu` (the emulation builds what is on disk, NVRTC what is
    /// listed), and `kernels/README.md` lists each file and each GEMM variant by its names.
    #[test]
    fn sources_readme_and_variants_agree() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("kernels/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cu"))
            .collect();
        on_disk.sort();
        let listed: Vec<String> = SOURCES.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(on_disk, listed, "kernels/*.cu and kernels.rs SOURCES");
        for (file, _) in SOURCES {
            assert!(README.contains(&format!("| `{file}` |")), "kernels/README.md has no row for {file}");
        }
        for v in GemmVariant::ALL {
            let row = format!("| `{}` | `{}` | `gemm_{}_*`", v.name(), v.full_name(), v.full_name());
            assert!(README.contains(&row), "kernels/README.md has no row {row}");
        }
    }
}
