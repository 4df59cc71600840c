//! Matrix products and the (LoRA) linear layer (`Op::Matmul`, `Op::Linear`) on kernels/matmul.cu,
//! in the backend's GEMM variant ([`GemmVariant`]).
//!
//! Forward `y = x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ`: the rank-r pre-pass `u = x·Aᵀ` (a small GEMM), then one
//! GEMM whose reduction runs over K plus the rank (`s·u` against `B`) and whose epilogue adds
//! the bias. Backward: `g = dy·B` (pre-pass), `dx = dy·W + s·g·A` (one fused GEMM),
//! `dA = s·gᵀ·x`, `dB = s·dyᵀ·u`, `dW = dyᵀ·x`, `db = Σ dy`.

use kiln_core::backend::{LinDims, LinearGrads, LinearNeeds, LoraRef, MatmulDims, MatmulOps, MemoryOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::{Held, KernelBackend, act_type, act_types, elementwise::col_sum, want_f32};
use crate::GemmVariant;
use crate::exec::Launch;
use crate::kernels::{Gemm16Params, Gemm90Params, GemmParams, PackParams, SplitSumParams, TensorMap};

/// Dynamic shared memory of the v5 kernels: two stages of a 128×32 A and a 128×32 B tile in
/// 16-bit values (kernels/matmul.cu `V5_STAGE`).
const V5_SMEM: usize = 2 * (128 + 128) * 32 * 2;

/// The variant a launch uses: where the device has no wgmma, v5 becomes v4 and v7 v6 (said
/// once).
fn effective(be: &KernelBackend) -> GemmVariant {
    static NOTED: std::sync::Once = std::sync::Once::new();
    match be.gemm() {
        v if !be.runs(v) => {
            let instead = if v == GemmVariant::V7 { GemmVariant::V6 } else { GemmVariant::V4 };
            NOTED.call_once(|| {
                eprintln!("note: GEMM {v} needs {}; running {instead} on {}", v.archs(), be.exec.describe())
            });
            instead
        }
        v => v,
    }
}

/// Whether B's element type has GEMM kernels.
fn check_b(d: DType) -> Result<()> {
    match d {
        DType::F32 | DType::BF16 | DType::F16 | DType::Quant(_) => Ok(()),
        d => Err(Error::Msg(format!("cuda gemm: {} operand", d.name()))),
    }
}

/// Dynamic shared memory of the v7 kernels: four stages of a 128×64 A, a 256×64 B and a 16×64
/// LoRA A tile in 16-bit values, eight barriers, and 1024 bytes to align the ring
/// (kernels/matmul.cu `V7_SMEM`).
const V7_SMEM: usize = 4 * (128 + 256 + 16) * 64 * 2 + 2 * 4 * 8 + 1024;

/// The launch shape of each variant's kernels over an `m × n` output.
fn shape(v: GemmVariant, m: u32, n: u32) -> Launch {
    let tiles = |t: u32, threads: u32, smem: usize| Launch {
        grid: [n.div_ceil(t), m.div_ceil(t), 1],
        block: [threads, 1, 1],
        smem,
    };
    match v {
        GemmVariant::V1 => Launch { grid: [n.div_ceil(16), m.div_ceil(16), 1], block: [16, 16, 1], smem: 0 },
        GemmVariant::V2 => tiles(64, 256, 0),
        GemmVariant::V3 => tiles(64, 128, 0),
        GemmVariant::V4 => tiles(128, 256, 0),
        GemmVariant::V5 => tiles(128, 256, V5_SMEM),
        GemmVariant::V6 => tiles(128, 128, 0),
        GemmVariant::V7 => Launch { grid: [n.div_ceil(256), m.div_ceil(128), 1], block: [384, 1, 1], smem: V7_SMEM },
    }
}

/// Rows up to which x·Wᵀ runs as a GEMV (kernels/matmul.cu `GEMV_MAX_M`): a decode step.
pub const GEMV_MAX_M: i32 = 4;

/// The GEMV serves products of at most [`GEMV_MAX_M`] rows whose B is read along its rows
/// (`sbk == 1`: a linear layer's x·Wᵀ), where reading W once is the whole cost.
fn gemv_applies(p: &GemmParams) -> bool {
    p.m <= GEMV_MAX_M && p.sbk == 1
}

/// One GEMM launch: `p` has operands, strides and epilogue; `b_type` is B's element type.
fn gemm(be: &KernelBackend, p: &GemmParams, b_type: DType) -> Result<()> {
    gemm_a16(be, p, b_type, None, Io::default())
}

/// How v6 and v7 meet the activations: A already in B's 16-bit type (the mixed-precision
/// path's x or dy, packed only where its rows need padding) and C written in that type; by
/// default A is f32 (packed first) and C f32. Only v6 and v7 take a non-default `Io`
/// ([`direct16`] decides).
#[derive(Clone, Copy, Default, PartialEq)]
struct Io {
    a16: bool,
    c16: bool,
    /// LoRA fused into v7 ([`fuses_lora`]): the kernel computes U itself.
    fuse: Option<FusedLora>,
}

/// The largest LoRA rank v7 fuses (its `V7_RF`: U's accumulators stay in registers).
const V7_FUSED_RANK: usize = 16;

/// The widest output v7 fuses LoRA into. Every CTA recomputes its rows of U, re-reading its x
/// tiles from shared memory, which already bounds the product: the fused term costs about a sixth
/// of the product's time, the pre-pass one read of x from DRAM and four small launches, a cost
/// that does not grow with N. Modeled on H100 (bf16 activations, M = K = 4096, r = 16, plain
/// product → fused / pre-pass, µs): N = 1024 38.8 → 48.5 / 67.3; N = 4096 146.3 → 176.0 / 176.2;
/// N = 14336 → 601.0 / 541.5.
const V7_FUSED_MAX_N: i32 = 4096;

/// A LoRA term v7 computes whole (forward, rank ≤ [`V7_FUSED_RANK`]): A [rank, k] and B [n, rank]
/// (f32, row-major), U = x·Aᵀ [m, rank] written to `u_out` (f32) for the backward.
#[derive(Clone, Copy, PartialEq)]
struct FusedLora {
    a: u64,
    b: u64,
    u_out: u64,
    rank: usize,
    scale: f32,
}

/// Whether the forward product `p` (NK, `x·Wᵀ`) runs on v7 with its LoRA term fused: v7 chosen,
/// W 16-bit or block-quantized (decoded to bf16 first), more rows than a decode step, N at most
/// [`V7_FUSED_MAX_N`], and a layout v7 reads directly. Elsewhere the rank-r pre-pass runs first.
fn fuses_lora(be: &KernelBackend, p: &GemmParams, w: DType, rank: usize) -> bool {
    // (An empty product launches nothing, and U must still be written.)
    if rank > V7_FUSED_RANK || effective(be) != GemmVariant::V7 || p.sbk != 1 || p.m <= 0 || p.n <= 0 {
        return false;
    }
    if p.n > V7_FUSED_MAX_N {
        return false;
    }
    if v6_prepass_type(be, w, p.m as usize).is_none() || gemv_applies(p) {
        return false;
    }
    match w {
        DType::Quant(_) => v6_dense_numel(p).is_some() && v6_unfit(&GemmParams { b: 0, ..*p }).is_none(),
        _ => GemmVariant::V7.runs_for(w) == GemmVariant::V7 && v6_unfit(p).is_none(),
    }
}

/// An error where a fused LoRA term reached a kernel other than v7's ([`fuses_lora`] and the
/// routing of [`gemm_a16`] disagree): never a product without its LoRA term.
fn unfused(io: Io, kernel: &str) -> Result<()> {
    match io.fuse {
        Some(_) => Err(Error::Msg(format!("cuda gemm: a fused LoRA term reached {kernel}, which cannot run it"))),
        None => Ok(()),
    }
}

/// Whether a product with 16-bit activations of type `x` runs on v6/v7 reading them directly and
/// writing 16-bit output: B of the same type (or block-quantized, decoded to bf16, under bf16
/// activations), more rows than a decode step, and B's layout one v6 reads. Elsewhere the
/// activations are widened to f32 around the f32 path.
fn direct16(be: &KernelBackend, p: &GemmParams, b_type: DType, x: DType) -> bool {
    let v = effective(be);
    let types = match b_type {
        DType::Quant(_) => x == DType::BF16 && v6_dense_numel(p).is_some(),
        b => b == x && matches!(x, DType::BF16 | DType::F16),
    };
    let b_ok = if matches!(b_type, DType::Quant(_)) { GemmParams { b: 0, ..*p } } else { *p };
    matches!(v, GemmVariant::V6 | GemmVariant::V7) && types && p.m > GEMV_MAX_M && v6_unfit(&b_ok).is_none()
}

/// [`gemm`], with A already packed for v6 where the caller has it (`a16`: A in B's 16-bit
/// type, [m, k rounded up to 8], as [`pack`] writes it): the LoRA pre-pass and the main
/// product share one packing of x (forward) or dy (dx).
fn gemm_a16(be: &KernelBackend, p: &GemmParams, b_type: DType, a16: Option<u64>, io: Io) -> Result<()> {
    if p.m == 0 || p.n == 0 {
        return Ok(());
    }
    check_b(b_type)?;
    if (io.a16 || io.c16) && !direct16(be, p, b_type, if b_type == DType::F16 { DType::F16 } else { DType::BF16 }) {
        return Err(Error::Msg("cuda gemm: 16-bit activations reached a kernel that reads f32".into()));
    }
    let mut p = *p;
    if let DType::Quant(q) = b_type {
        let (id, block, bytes) = crate::kernels::quant_kernel_id(q)
            .ok_or_else(|| Error::Msg(format!("cuda gemm: no kernel for {} weights", q.name())))?;
        (p.qtype, p.qblock, p.qbytes) = (id, block, bytes);
    }
    let p = &p;
    let (m, n) = (p.m as u32, p.n as u32);
    // Decoding (a few rows against a weight read once): the GEMV, whatever the variant.
    if gemv_applies(p) {
        let ty = match b_type {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::Quant(_) => "q",
            _ => "f32",
        };
        unfused(io, "the GEMV")?;
        let cfg = Launch { grid: [n.div_ceil(8), 1, 1], block: [256, 1, 1], smem: 0 };
        return be.exec.launch(&format!("gemv_{ty}"), cfg, bytemuck::bytes_of(p));
    }
    let mut v = effective(be);
    // v6 on block-quantized B: the weight decoded to bf16 once (a transient buffer, n·k·2
    // bytes; the decode reads the blocks once, 16 bytes a thread), then the bf16 GEMM. The
    // decode costs about what the packing of A does, far less than decoding in the loader of
    // every CTA that reads the weight.
    if let (GemmVariant::V6 | GemmVariant::V7, DType::Quant(q)) = (v, b_type)
        && let Some(numel) = v6_dense_numel(p)
    {
        // The decoded copy is a fresh (aligned) allocation: only B's shape decides the fit,
        // checked before any decoding is spent on it.
        let mut d = GemmParams { b: 0, ..*p };
        if v6_unfit(&d).is_none() {
            let (w16, _) = super::elementwise::dequant(be, p.b, numel, q, DType::BF16)?;
            d.b = w16.ptr;
            if v == GemmVariant::V7 {
                gemm_hopper(be, &d, DType::BF16, a16, io)?;
            } else {
                gemm_v6(be, &d, DType::BF16, a16, io)?;
            }
            drop(w16);
            return Ok(());
        }
    }
    if v.runs_for(b_type) == GemmVariant::V7 {
        if v6_unfit(p).is_none() {
            return gemm_hopper(be, p, b_type, a16, io);
        }
        v = GemmVariant::V6;
    }
    if v.runs_for(b_type) == GemmVariant::V6 {
        match v6_unfit(p) {
            None => return gemm_v6(be, p, b_type, a16, io),
            Some(why) => {
                static NOTED: std::sync::Once = std::sync::Once::new();
                NOTED.call_once(|| eprintln!("note: GEMM v6 runs v4 for a product whose {why} (and others like it)"));
                v = GemmVariant::V4;
            }
        }
    }
    unfused(io, v.kernel(b_type))?;
    be.exec.launch(v.kernel(b_type), shape(v.runs_for(b_type), m, n), bytemuck::bytes_of(p))
}

/// Why v6's 16-byte copies cannot read B as given (its A and LoRA factors are packed, so any
/// layout of theirs serves), or None. B is read in whole 16-byte chunks along its contiguous
/// dimension: that dimension's extent and the other stride must be multiples of 8 values, the
/// base 16-byte aligned.
fn v6_unfit(p: &GemmParams) -> Option<&'static str> {
    if p.k <= 0 {
        return Some("reduction is empty");
    }
    if !p.b.is_multiple_of(16) {
        return Some("B is not 16-byte aligned");
    }
    let (nk, kn) = (p.sbk == 1 && p.sbn % 8 == 0 && p.k % 8 == 0, p.sbn == 1 && p.sbk % 8 == 0 && p.n % 8 == 0);
    if !(nk || kn) {
        return Some("B's strides or extent are not multiples of 8 values");
    }
    None
}

/// The element count of B when it is one dense row-major matrix as the product reads it (W
/// [n, k] read as NK, or [k, n] read as KN): what decoding the whole weight yields.
fn v6_dense_numel(p: &GemmParams) -> Option<usize> {
    let (k, n) = (p.k as i64, p.n as i64);
    let dense = (p.sbk == 1 && p.sbn == k) || (p.sbn == 1 && p.sbk == n);
    (dense && k > 0 && n > 0).then_some((k * n) as usize)
}

/// `out [out_rows, ld]` (16-bit, type `ty`) = `scale · x[r·s.0 + c·s.1]` for r < rows, c < cols,
/// zero elsewhere (kernels/matmul.cu `gemm_pack_*`); x f32.
#[allow(clippy::too_many_arguments)]
fn pack(
    be: &KernelBackend,
    ty: &str,
    x: u64,
    s: (i64, i64),
    rows: usize,
    cols: usize,
    out_rows: usize,
    ld: usize,
    scale: f32,
) -> Result<crate::exec::DevBuf> {
    pack_from(be, ty, false, x, s, (rows, cols, out_rows, ld), scale)
}

/// An activation operand of v6/v7 in `ty` ([`pack`]'s layout, `[out_rows, ld]`): x itself where
/// it is already 16-bit (`x16`, of type `ty`) in exactly that layout, else a packed copy (kept
/// alive by the second value until the GEMM has run).
fn operand16(
    be: &KernelBackend,
    ty: &str,
    (x, x16): (u64, bool),
    s: (i64, i64),
    (rows, cols, out_rows, ld): (usize, usize, usize, usize),
) -> Result<(u64, Option<crate::exec::DevBuf>)> {
    if x16 && s == (ld as i64, 1) && rows == out_rows && cols == ld && x.is_multiple_of(16) {
        return Ok((x, None));
    }
    let b = pack_from(be, ty, x16, x, s, (rows, cols, out_rows, ld), 1.0)?;
    Ok((b.ptr, Some(b)))
}

/// The parameters of one packing: `out [out_rows, ld]` = `scale · x[r·s.0 + c·s.1]`.
fn pack_params(x: u64, out: u64, s: (i64, i64), (rows, cols, out_rows, ld): PackDims, scale: f32) -> PackParams {
    PackParams {
        x,
        out,
        s_row: s.0,
        s_col: s.1,
        rows: rows as i32,
        cols: cols as i32,
        out_rows: out_rows as i32,
        ld: ld as i32,
        scale,
        pad: 0,
    }
}

/// (rows, cols, out_rows, ld) of a packing.
type PackDims = (usize, usize, usize, usize);

/// Two [`pack`]s of f32 values in one launch (`gemm_pack_pair_*`), scale 1: each job is x, its
/// strides and its [`PackDims`].
fn pack_pair(
    be: &KernelBackend,
    ty: &str,
    jobs: [(u64, (i64, i64), PackDims); 2],
) -> Result<(crate::exec::DevBuf, crate::exec::DevBuf)> {
    let [a, l] = jobs.map(|(_, _, (_, _, out_rows, ld))| be.alloc(out_rows * ld, DType::BF16));
    let (a, l) = (a?, l?);
    let job = |i: usize, out: u64| pack_params(jobs[i].0, out, jobs[i].1, jobs[i].2, 1.0);
    let q = crate::kernels::PackPairParams { job: [job(0, a.ptr), job(1, l.ptr)] };
    let threads = jobs.iter().map(|j| (j.2.2 * j.2.3 / 4) as u32).max().unwrap_or(0);
    if threads > 0 {
        let cfg = Launch { grid: [threads.div_ceil(256), 1, 2], block: [256, 1, 1], smem: 0 };
        be.exec.launch(&format!("gemm_pack_pair_{ty}"), cfg, bytemuck::bytes_of(&q))?;
    }
    Ok((a, l))
}

/// [`pack`] from f32 or (`x16`) from 16-bit values of type `ty`.
fn pack_from(
    be: &KernelBackend,
    ty: &str,
    x16: bool,
    x: u64,
    s: (i64, i64),
    dims: PackDims,
    scale: f32,
) -> Result<crate::exec::DevBuf> {
    let (_, _, out_rows, ld) = dims;
    let out = be.alloc(out_rows * ld, DType::BF16)?;
    let p = pack_params(x, out.ptr, s, dims, scale);
    let threads = (out_rows * ld / 4) as u32;
    if threads > 0 {
        let cfg = Launch { grid: [threads.div_ceil(256), 1, 1], block: [256, 1, 1], smem: 0 };
        let kernel = format!("gemm_pack{}_{ty}", if x16 { "16" } else { "" });
        be.exec.launch(&kernel, cfg, bytemuck::bytes_of(&p))?;
    }
    Ok(out)
}

/// A for v6 and v7 in B's 16-bit type `ty`: the caller's packing (`packed`, [m, k rounded up to
/// 8]) or a new one, kept alive (the third value) until the GEMM has run; with its row stride.
fn packed_a(
    be: &KernelBackend,
    ty: &str,
    p: &GemmParams,
    packed: Option<u64>,
    io: Io,
) -> Result<(u64, usize, Option<crate::exec::DevBuf>)> {
    let (m, k) = (p.m as usize, p.k as usize);
    let lda = k.next_multiple_of(8);
    Ok(match packed {
        Some(a) => (a, lda, None),
        None => {
            let (a, buf) = operand16(be, ty, (p.a, io.a16), (p.sam, p.sak), (m, k, m, lda))?;
            (a, lda, buf)
        }
    })
}

/// LoRA's factors for v6 and v7, packed to `ty` with the rank zero-padded to `ru`: s·U
/// [m, ru], and L in B's layout (NK [n, ru], or KN [ru, n] where `kn`).
fn pack_lora(
    be: &KernelBackend,
    ty: &str,
    p: &GemmParams,
    ru: usize,
    kn: bool,
) -> Result<(crate::exec::DevBuf, crate::exec::DevBuf)> {
    let (m, n, r) = (p.m as usize, p.n as usize, p.rank as usize);
    let u16 = pack(be, ty, p.lora_u, (r as i64, 1), m, r, m, ru, p.lora_scale)?;
    let l16 = if kn {
        pack(be, ty, p.lora_l, (p.sl_r, p.sl_n), r, n, ru, n, 1.0)?
    } else {
        pack(be, ty, p.lora_l, (p.sl_n, p.sl_r), n, r, n, ru, 1.0)?
    };
    Ok((u16, l16))
}

/// The v6 GEMM: A (and LoRA's s·U and L) packed to B's 16-bit type, then the multistage kernel
/// for B's layout (NK: `sbk == 1`, a linear layer's x·Wᵀ; KN: `sbn == 1`, its dx = dy·W).
fn gemm_v6(be: &KernelBackend, p: &GemmParams, b_type: DType, packed: Option<u64>, io: Io) -> Result<()> {
    unfused(io, "GEMM v6")?;
    let ty = if b_type == DType::F16 { "f16" } else { "bf16" };
    let (m, n) = (p.m as usize, p.n as usize);
    let kn = p.sbk != 1;
    let (a, lda, a16) = packed_a(be, ty, p, packed, io)?;
    let mut q = Gemm16Params {
        a,
        b: p.b,
        c: p.c,
        bias: p.bias,
        lda: lda as i64,
        ldb: if kn { p.sbk } else { p.sbn },
        m: p.m,
        n: p.n,
        k: p.k,
        ldc: p.ldc,
        alpha: p.alpha,
        c16: io.c16 as i32,
        ..Default::default()
    };
    // Kept alive until the GEMM has run.
    let mut lora = None;
    if p.lora_u != 0 && p.rank > 0 {
        let ru = (p.rank as usize).next_multiple_of(32);
        let (u16, l16) = pack_lora(be, ty, p, ru, kn)?;
        (q.u, q.l, q.ru, q.ldl) = (u16.ptr, l16.ptr, ru as i32, if kn { n as i64 } else { ru as i64 });
        lora = Some((u16, l16));
    }
    let name = format!("gemm_v6_mma_multistage_{}{ty}", if kn { "kn_" } else { "" });
    let cfg = Launch { grid: [n.div_ceil(128) as u32, m.div_ceil(128) as u32, 1], block: [128, 1, 1], smem: 0 };
    be.exec.launch(&name, cfg, bytemuck::bytes_of(&q))?;
    drop((a16, lora));
    Ok(())
}

/// v7 for a product v6 could serve: NK B (x·Wᵀ) directly, KN B (dx = dy·W) through a transposed
/// 16-bit copy of B (one read and one write of the weight: at 4096² about a tenth of the
/// product's modeled time, against v6's mma.sync), v6 where K is no multiple of 8 (the copy's
/// rows would not be 16-byte aligned).
fn gemm_hopper(be: &KernelBackend, p: &GemmParams, b_type: DType, a16: Option<u64>, io: Io) -> Result<()> {
    if p.sbk == 1 {
        return gemm_v7(be, p, b_type, a16, io);
    }
    if p.k % 8 != 0 {
        return gemm_v6(be, p, b_type, a16, io);
    }
    // B [k, n] (rows sbk apart) → Bᵀ [n, k].
    let (k, n) = (p.k as usize, p.n as usize);
    let bt = be.alloc(n * k, DType::BF16)?;
    let t = crate::kernels::TransposeParams {
        input: p.b,
        out: bt.ptr,
        ld_in: p.sbk,
        ld_out: k as i64,
        rows: p.k,
        cols: p.n,
    };
    let cfg = Launch { grid: [n.div_ceil(64) as u32, k.div_ceil(64) as u32, 1], block: [256, 1, 1], smem: 0 };
    be.exec.launch("gemm_transpose16", cfg, bytemuck::bytes_of(&t))?;
    let q = GemmParams { b: bt.ptr, sbk: 1, sbn: k as i64, ..*p };
    gemm_v7(be, &q, b_type, a16, io)?;
    drop(bt);
    Ok(())
}

/// The v7 GEMM (Hopper, NK layout): A (and LoRA's s·U and L, rank padded to 64) packed to B's
/// 16-bit type as for v6, each operand described by a TMA tensor map (boxes of 64 K values by the
/// tile's rows, 128-byte swizzle; the maps zero-fill every edge).
fn gemm_v7(be: &KernelBackend, p: &GemmParams, b_type: DType, packed: Option<u64>, io: Io) -> Result<()> {
    let (ty, f16) = if b_type == DType::F16 { ("f16", true) } else { ("bf16", false) };
    let (m, n, k) = (p.m as usize, p.n as usize, p.k as usize);
    let (a, lda, a16) = packed_a(be, ty, p, packed, io)?;
    let map = |base: u64, cols: usize, rows: usize, ld: usize, box_rows: u32| {
        be.exec
            .tensor_map_2d(&crate::exec::TensorMap2d {
                base,
                dims: [cols as u64, rows as u64],
                row_bytes: 2 * ld as u64,
                boxes: [64, box_rows],
                swizzle128: true,
                f16,
            })
            .map(TensorMap)
    };
    let mut q = Gemm90Params {
        ta: map(a, k, m, lda, 128)?,
        tb: map(p.b, k, n, p.sbn as usize, 256)?,
        c: p.c,
        bias: p.bias,
        m: p.m,
        n: p.n,
        k: p.k,
        ldc: p.ldc,
        alpha: p.alpha,
        c16: io.c16 as i32,
        ..Default::default()
    };
    // Kept alive until the GEMM has run.
    let mut lora = None;
    if let Some(f) = io.fuse {
        // A [rank, k] → [16, k8] and B [n, rank] → [n, 64] in one launch (zero-padded: the
        // kernel's k16 steps read 16 ranks, L's box 64 columns).
        let k8 = k.next_multiple_of(8);
        let (a16, l16) = pack_pair(
            be,
            ty,
            [(f.a, (k as i64, 1), (f.rank, k, V7_FUSED_RANK, k8)), (f.b, (f.rank as i64, 1), (n, f.rank, n, 64))],
        )?;
        (q.tu, q.tl) = (map(a16.ptr, k, V7_FUSED_RANK, k8, V7_FUSED_RANK as u32)?, map(l16.ptr, 64, n, 64, 256)?);
        (q.rank, q.scale, q.u_out) = (f.rank as i32, f.scale, f.u_out);
        lora = Some((a16, l16));
    } else if p.lora_u != 0 && p.rank > 0 {
        let ru = (p.rank as usize).next_multiple_of(64);
        let (u16, l16) = pack_lora(be, ty, p, ru, false)?;
        (q.tu, q.tl, q.ru) = (map(u16.ptr, ru, m, ru, 128)?, map(l16.ptr, ru, n, ru, 256)?, ru as i32);
        lora = Some((u16, l16));
    }
    be.exec.launch(
        &format!("gemm_v7_tma_wgmma_{}{ty}", if io.fuse.is_some() { "lora_" } else { "" }),
        shape(GemmVariant::V7, p.m as u32, p.n as u32),
        bytemuck::bytes_of(&q),
    )?;
    drop((a16, lora));
    Ok(())
}

/// The rank-r pre-pass `out [m, nj] = X·Y` (f32, a GEMM with a narrow N), `X(i,p)` at
/// `x[i·sx.0 + p·sx.1]`, `Y(p,j)` at `y[p·sy.0 + j·sy.1]`.
#[allow(clippy::too_many_arguments)]
fn prepass(
    be: &KernelBackend,
    x: &Held,
    sx: (i64, i64),
    y: &Held,
    sy: (i64, i64),
    m: usize,
    k: usize,
    nj: usize,
) -> Result<crate::exec::DevBuf> {
    let out = be.alloc(m * nj, DType::F32)?;
    let mut p = base(x.ptr(), y.ptr(), out.ptr, m, nj, k);
    (p.sam, p.sak, p.sbk, p.sbn) = (sx.0, sx.1, sy.0, sy.1);
    gemm(be, &p, DType::F32)?;
    Ok(out)
}

/// `C` [m, n] (f32, dense) = `alpha · A·B` on v6's tensor cores, split over K so that the few
/// output tiles of a thin product still fill the GPU (about 256 CTAs, at least one K tile each;
/// the slabs summed in order: deterministic); `transposed`: C's transpose [n, m] instead. `a16`
/// [m, k] and `b16` (NK [n, k], or KN [k, n]) hold 16-bit values of type `ty` in rows `lda` /
/// `ldb` apart, zero-padded to `k`, a multiple of 8.
fn gemm_v6_split(
    be: &KernelBackend,
    ty: &str,
    (a16, lda): (u64, usize),
    (b16, ldb, kn): (u64, usize, bool),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    transposed: bool,
) -> Result<crate::exec::DevBuf> {
    let out = be.alloc(m * n, DType::F32)?;
    let tiles = k.div_ceil(32);
    let ctas = m.div_ceil(128) * n.div_ceil(128);
    let want = (256 / ctas).clamp(1, tiles);
    let kst = tiles.div_ceil(want);
    let splits = tiles.div_ceil(kst);
    let ws = if splits > 1 || transposed { Some(be.alloc(splits * m * n, DType::F32)?) } else { None };
    let q = Gemm16Params {
        a: a16,
        b: b16,
        c: ws.as_ref().map_or(out.ptr, |w| w.ptr),
        lda: lda as i64,
        ldb: ldb as i64,
        m: m as i32,
        n: n as i32,
        k: k as i32,
        ldc: n as i32,
        alpha,
        kst: if splits > 1 { kst as i32 } else { 0 },
        ..Default::default()
    };
    let grid = [n.div_ceil(128) as u32, m.div_ceil(128) as u32, splits as u32];
    be.exec.launch(
        &format!("gemm_v6_mma_multistage_{}{ty}", if kn { "kn_" } else { "" }),
        Launch { grid, block: [128, 1, 1], smem: 0 },
        bytemuck::bytes_of(&q),
    )?;
    if let Some(ws) = &ws {
        let len = m * n;
        let cols = if transposed { n as i32 } else { 0 };
        let s = SplitSumParams { ws: ws.ptr, out: out.ptr, len: len as i64, splits: splits as i32, cols };
        be.exec.launch(
            "gemm_splitk_sum",
            Launch { grid: [len.div_ceil(256) as u32, 1, 1], block: [256, 1, 1], smem: 0 },
            bytemuck::bytes_of(&s),
        )?;
    }
    drop(ws);
    Ok(out)
}

/// The rank-r pre-pass on v6's tensor cores, for products whose main GEMM rounds to a 16-bit
/// type `ty` anyway: `x16` is X packed to `ty` ([`pack`], K zero-padded to 8; the main product
/// reuses it), Y is packed likewise, split-K ([`gemm_v6_split`]).
#[allow(clippy::too_many_arguments)]
fn prepass_v6(
    be: &KernelBackend,
    ty: &str,
    x16: u64,
    y: &Held,
    sy: (i64, i64),
    m: usize,
    k: usize,
    nj: usize,
) -> Result<crate::exec::DevBuf> {
    let k8 = k.next_multiple_of(8);
    let y16 = pack(be, ty, y.ptr(), (sy.1, sy.0), nj, k, nj, k8, 1.0)?;
    let out = gemm_v6_split(be, ty, (x16, k8), (y16.ptr, k8, false), (m, nj, k8), 1.0, false)?;
    drop(y16);
    Ok(out)
}

/// LoRA's weight gradients on v6's tensor cores (the reduction runs over the m tokens, split-K):
/// `dA [r, k] = s·gᵀ·x` and `dB [n, r] = s·dyᵀ·u`, the latter as the transpose of `s·uᵀ·dy` so
/// that dy is read as the pre-pass packed it (`dy16` [m rounded up to 8, n]). g and u (f32
/// [m, r]) are packed transposed (small), x packed once [m8, k] (read as is where it is 16-bit
/// already, `x.1`, and m a multiple of 8). Needs k and n multiples of 8.
#[allow(clippy::too_many_arguments)]
fn lora_grads_v6(
    be: &KernelBackend,
    ty: &str,
    x: (u64, bool),
    g: u64,
    u: u64,
    dy16: u64,
    (m, k, n, r): (usize, usize, usize, usize),
    s: f32,
) -> Result<(crate::exec::DevBuf, crate::exec::DevBuf)> {
    let m8 = m.next_multiple_of(8);
    let gt = pack(be, ty, g, (1, r as i64), r, m, r, m8, 1.0)?;
    let (x16, xbuf) = operand16(be, ty, x, (k as i64, 1), (m, k, m8, k))?;
    let da = gemm_v6_split(be, ty, (gt.ptr, m8), (x16, k, true), (r, k, m8), s, false)?;
    drop((gt, xbuf));
    let ut = pack(be, ty, u, (1, r as i64), r, m, r, m8, 1.0)?;
    let db = gemm_v6_split(be, ty, (ut.ptr, m8), (dy16, n, true), (r, n, m8), s, true)?;
    drop(ut);
    Ok((da, db))
}

/// The 16-bit type v6's rank-r pre-pass rounds to when the main product runs on v6's tensor
/// cores (W 16-bit or block-quantized, more rows than a decode step), else None (the f32
/// pre-pass).
fn v6_prepass_type(be: &KernelBackend, w: DType, m: usize) -> Option<&'static str> {
    if !matches!(effective(be), GemmVariant::V6 | GemmVariant::V7) || m <= GEMV_MAX_M as usize {
        return None;
    }
    match w {
        DType::F16 => Some("f16"),
        DType::BF16 | DType::Quant(_) => Some("bf16"),
        _ => None,
    }
}

fn lora_rank(l: &LoraRef<'_>, d: &LinDims) -> Result<usize> {
    let r = l.rank(d)?;
    want_f32("lora A", l.a)?;
    want_f32("lora B", l.b)?;
    Ok(r)
}

fn base(a: u64, b: u64, c: u64, m: usize, n: usize, k: usize) -> GemmParams {
    GemmParams { a, b, c, m: m as i32, n: n as i32, k: k as i32, ldc: n as i32, alpha: 1.0, ..Default::default() }
}

impl MatmulOps for KernelBackend {
    fn matmul(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        want_f32("matmul", a)?;
        let MatmulDims { m, k, n, out: dims } = MatmulDims::of(a, b, ta, tb)?;
        let b_type = if b.dtype() == DType::F64 { DType::F32 } else { b.dtype() };
        let (ha, hb) = (self.held(a)?, self.held(b)?);
        let c = self.alloc(m * n, DType::F32)?;
        let mut p = base(ha.ptr(), hb.ptr(), c.ptr, m, n, k);
        (p.sam, p.sak) = if ta { (1, m as i64) } else { (k as i64, 1) };
        (p.sbk, p.sbn) = if tb { (1, k as i64) } else { (n as i64, 1) };
        gemm(self, &p, b_type)?;
        Ok(self.wrap(c, dims, DType::F32))
    }

    fn linear_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<LoraRef<'_>>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (xt, _) = act_type("linear x", x)?;
        let d = LinDims::of(x, w)?;
        let (m, k, n) = (d.m, d.k, d.n);
        if let Some(b) = bias.filter(|b| b.numel() != n) {
            return Err(Error::shape("linear", format!("bias {:?} for out={n}", b.shape())));
        }
        let (hx, hw) = (self.held(x)?, self.held(w)?);
        let mut p = base(hx.ptr(), hw.ptr(), 0, m, n, k);
        (p.sam, p.sak, p.sbk, p.sbn) = (k as i64, 1, 1, k as i64);
        let x16 = xt != DType::F32;
        if x16 && !direct16(self, &p, w.dtype(), xt) {
            // 16-bit activations where no kernel reads them: widened around the f32 path.
            let (y, u) = self.linear_fwd(&self.cast(x, DType::F32)?, w, bias, lora)?;
            return Ok((self.cast(&y, xt)?, u));
        }
        let mut io = Io { a16: x16, c16: x16, fuse: None };
        let hbias = bias.map(|b| self.held(b)).transpose()?;
        let y = self.alloc(m * n, xt)?;
        (p.c, p.bias) = (y.ptr, hbias.as_ref().map_or(0, Held::ptr));
        let mut u_out = None;
        // x as v6 reads it (packed, or itself where 16-bit), shared by the LoRA pre-pass and
        // the main product.
        let mut a16 = None;
        // Kept alive until the GEMM has run.
        let (_ha, _hb, _xbuf);
        if let Some(l) = &lora {
            let r = lora_rank(l, &d)?;
            let (ha, hb) = (self.held(l.a)?, self.held(l.b)?);
            let u = match v6_prepass_type(self, w.dtype(), m) {
                // v7 computes U itself beside the product (and writes it for the backward).
                _ if fuses_lora(self, &p, w.dtype(), r) => {
                    let u = self.alloc(m * r, DType::F32)?;
                    let scale = l.scale as f32;
                    io.fuse = Some(FusedLora { a: ha.ptr(), b: hb.ptr(), u_out: u.ptr, rank: r, scale });
                    _xbuf = None;
                    u
                }
                Some(ty) => {
                    let (xp, buf) =
                        operand16(self, ty, (hx.ptr(), x16), (k as i64, 1), (m, k, m, k.next_multiple_of(8)))?;
                    let u = prepass_v6(self, ty, xp, &ha, (1, k as i64), m, k, r)?;
                    (a16, _xbuf) = (Some(xp), buf);
                    u
                }
                None => {
                    _xbuf = None;
                    prepass(self, &hx, (k as i64, 1), &ha, (1, k as i64), m, k, r)?
                }
            };
            if io.fuse.is_none() {
                (p.lora_u, p.lora_l, p.sl_n, p.sl_r, p.rank, p.lora_scale) =
                    (u.ptr, hb.ptr(), r as i64, 1, r as i32, l.scale as f32);
            }
            u_out = Some(self.wrap(u, LinDims::out_dims(x, r), DType::F32));
            (_ha, _hb) = (Some(ha), Some(hb));
        } else {
            (_ha, _hb, _xbuf) = (None, None, None);
        }
        gemm_a16(self, &p, w.dtype(), a16, io)?;
        Ok((self.wrap(y, LinDims::out_dims(x, n), xt), u_out))
    }

    fn linear_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        lora: Option<(LoraRef<'_>, &Tensor)>,
        needs: LinearNeeds,
    ) -> Result<LinearGrads> {
        let (xt, _) = act_types("linear_bwd", x, &[dy])?;
        let d = LinDims::of(x, w)?;
        let (m, k, n) = (d.m, d.k, d.n);
        if dy.numel() != m * n {
            return Err(Error::shape("linear_bwd", format!("dy {:?} for {m}×{n}", dy.dims())));
        }
        let x16 = xt != DType::F32;
        let hw = self.held(w)?;
        if x16 {
            // dx = dy·W (KN) on v6/v7 reading dy directly, and LoRA's gradients with it (n a
            // multiple of 8); else the activations widened around the f32 path.
            let p = GemmParams { sam: n as i64, sak: 1, sbk: k as i64, sbn: 1, ..base(0, hw.ptr(), 0, m, k, n) };
            if !(direct16(self, &p, w.dtype(), xt) && n.is_multiple_of(8)) {
                let (df, xf) = (self.cast(dy, DType::F32)?, self.cast(x, DType::F32)?);
                let mut g = self.linear_bwd(&df, &xf, w, lora, needs)?;
                g.dx = g.dx.map(|t| self.cast(&t, xt)).transpose()?;
                return Ok(g);
            }
        }
        let io = Io { a16: x16, c16: x16, fuse: None };
        let (hdy, hx) = (self.held(dy)?, self.held(x)?);
        let mut g = LinearGrads::default();
        // The LoRA pre-pass g = dy·B [m, r], shared by dx and dA.
        let lo = match &lora {
            Some((l, u)) if needs.x || needs.lora => {
                let r = lora_rank(l, &d)?;
                let (ha, hb, hu) = (self.held(l.a)?, self.held(l.b)?, self.held(u)?);
                let (gb, dy16) = match v6_prepass_type(self, w.dtype(), m) {
                    Some(ty) => {
                        // Rows up to a multiple of 8: the KN operand of dB reads them (zeros).
                        let m8 = m.next_multiple_of(8);
                        let shape = (m, n, m8, n.next_multiple_of(8));
                        let dp = operand16(self, ty, (hdy.ptr(), x16), (n as i64, 1), shape)?;
                        (prepass_v6(self, ty, dp.0, &hb, (r as i64, 1), m, n, r)?, Some(dp))
                    }
                    None => (prepass(self, &hdy, (n as i64, 1), &hb, (r as i64, 1), m, n, r)?, None),
                };
                Some((r, l.scale as f32, ha, hb, hu, gb, dy16))
            }
            _ => None,
        };
        if needs.x {
            let dx = self.alloc(m * k, xt)?;
            let mut p = base(hdy.ptr(), hw.ptr(), dx.ptr, m, k, n);
            (p.sam, p.sak, p.sbk, p.sbn) = (n as i64, 1, k as i64, 1);
            let mut dy16 = None;
            if let Some((r, s, ha, _, _, gb, dp)) = &lo {
                (p.lora_u, p.lora_l, p.sl_n, p.sl_r, p.rank, p.lora_scale) =
                    (gb.ptr, ha.ptr(), 1, k as i64, *r as i32, *s);
                dy16 = dp.as_ref().map(|b| b.0);
            }
            gemm_a16(self, &p, w.dtype(), dy16, io)?;
            g.dx = Some(self.wrap(dx, x.dims().to_vec(), xt));
        }
        if needs.w {
            // dW = dyᵀ·x on the f32 path (16-bit activations widened first).
            let (df, xf) =
                if x16 { (self.cast(dy, DType::F32)?, self.cast(x, DType::F32)?) } else { (dy.clone(), x.clone()) };
            let (hd, hxf) = (self.held(&df)?, self.held(&xf)?);
            let dw = self.alloc(n * k, DType::F32)?;
            let mut p = base(hd.ptr(), hxf.ptr(), dw.ptr, n, k, m);
            (p.sam, p.sak, p.sbk, p.sbn) = (1, n as i64, k as i64, 1);
            gemm(self, &p, DType::F32)?;
            g.dw = Some(self.wrap(dw, [n, k], DType::F32));
        }
        if needs.bias {
            g.dbias = Some(col_sum(self, dy, m, n)?);
        }
        if let (true, Some((r, s, _, _, hu, gb, dp))) = (needs.lora, &lo) {
            let r = *r;
            if let (Some(ty), Some((dy16, _))) = (v6_prepass_type(self, w.dtype(), m), dp)
                && k.is_multiple_of(8)
                && n.is_multiple_of(8)
            {
                let (da, db) = lora_grads_v6(self, ty, (hx.ptr(), x16), gb.ptr, hu.ptr(), *dy16, (m, k, n, r), *s)?;
                g.da = Some(self.wrap(da, [r, k], DType::F32));
                g.db = Some(self.wrap(db, [n, r], DType::F32));
                return Ok(g);
            }
            let da = self.alloc(r * k, DType::F32)?;
            let mut p = base(gb.ptr, hx.ptr(), da.ptr, r, k, m);
            (p.sam, p.sak, p.sbk, p.sbn, p.alpha) = (1, r as i64, k as i64, 1, *s);
            gemm(self, &p, DType::F32)?;
            let db = self.alloc(n * r, DType::F32)?;
            let mut p = base(hdy.ptr(), hu.ptr(), db.ptr, n, r, m);
            (p.sam, p.sak, p.sbk, p.sbn, p.alpha) = (1, n as i64, r as i64, 1, *s);
            gemm(self, &p, DType::F32)?;
            g.da = Some(self.wrap(da, [r, k], DType::F32));
            g.db = Some(self.wrap(db, [n, r], DType::F32));
        }
        Ok(g)
    }
}
