//! GEMM and the (LoRA) linear layer (`shaders/matmul.wgsl`): every product is one strided GEMM
//! launch, so transposes cost nothing.

use kiln_core::backend::{LinDims, LinearGrads, LinearNeeds, LoraRef, MatmulDims, MatmulOps};
use kiln_core::{Error, Result, Tensor};

use super::WgpuBackend;
use crate::runtime::{Bind, Device, Part, WgpuBuf, device, held, tensor};

const SRC: (&str, &str) = (
    "matmul",
    concat!(
        include_str!("../../../../shaders/gemm_params.wgsl"),
        include_str!("../../../../shaders/matmul.wgsl"),
        include_str!("../../../../shaders/gemm_v3.wgsl")
    ),
);
/// The fused dequant-GEMM: quantized weights decoded as their tiles are staged.
const SRC_Q: (&str, &str) = (
    "matmul_q",
    concat!(
        include_str!("../../../../shaders/gemm_params.wgsl"),
        include_str!("../../../../shaders/matmul_q.wgsl"),
        include_str!("../../../../shaders/dequant_decode.wgsl"),
        include_str!("../../../../shaders/gemm_v3.wgsl")
    ),
);

/// The f16 GEMM (`gemm_v3h`, adapters with SHADER_F16): the same module in f16 arithmetic.
const SRC_H: (&str, &str) = (
    "matmul_h",
    concat!(
        "enable f16;\n",
        include_str!("../../../../shaders/gemm_params.wgsl"),
        include_str!("../../../../shaders/matmul.wgsl"),
        include_str!("../../../../shaders/gemm_v3h.wgsl")
    ),
);
/// The fused dequant-GEMM in f16 arithmetic.
const SRC_QH: (&str, &str) = (
    "matmul_qh",
    concat!(
        "enable f16;\n",
        include_str!("../../../../shaders/gemm_params.wgsl"),
        include_str!("../../../../shaders/matmul_q.wgsl"),
        include_str!("../../../../shaders/dequant_decode.wgsl"),
        include_str!("../../../../shaders/gemm_v3h.wgsl")
    ),
);
const ABSMAX: (&str, &str) = ("absmax", include_str!("../../../../shaders/absmax.wgsl"));

/// `shaders/absmax.wgsl` `Params`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AbsMax {
    n: u32,
    slot: u32,
    pad: [u32; 2],
}

/// The operand maxima of one f16 GEMM: a zeroed two-word buffer, `slots` filled by `absmax`.
fn amax_of(dev: &Device, ops: &[(&WgpuBuf, u32)]) -> Result<WgpuBuf> {
    let out = dev.write(&[0u8; 8])?;
    // Tensors over the binding limit are measured in aligned chunks.
    let align = u64::from(dev.limits.min_storage_buffer_offset_alignment).max(4);
    let chunk = (dev.max_binding() - align) / align * align / 4;
    for &(b, slot) in ops {
        let total = b.bytes / 4;
        for start in (0..total.max(1)).step_by(chunk as usize) {
            let n = chunk.min(total - start);
            // At most 1024 workgroups, each striding over its share (one atomic per workgroup).
            let groups = n.div_ceil(256).clamp(1, 1024) as u32;
            let p = AbsMax { n: n as u32, slot, pad: [0; 2] };
            let x = Bind::RAt(b, start * 4, n * 4);
            dev.launch(ABSMAX, "absmax", &p, &[x, Bind::W(&out)], (groups, 1, 1))?;
        }
    }
    Ok(out)
}

/// `shaders/matmul.wgsl` `Params`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Gemm {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
    rs_a: u32,
    cs_a: u32,
    rs_b: u32,
    cs_b: u32,
    alpha: f32,
    /// Quantized weights (matmul_q): the decoder's type id, values and bytes per block.
    ty: u32,
    block: u32,
    bytes: u32,
    /// Sub-range launches: each operand's first element inside its binding, C's row stride,
    /// and a packed B's first byte.
    a_off: u32,
    b_off: u32,
    c_off: u32,
    ldc: u32,
    qbase: u32,
    pad: [u32; 3],
}

/// One operand: a buffer and its row/column strides.
struct Op<'a>(&'a WgpuBuf, u32, u32);

/// `c[m, n] (+)= α·A·B`.
fn gemm(
    dev: &Device,
    a: Op<'_>,
    b: Op<'_>,
    c: &WgpuBuf,
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    acc: bool,
) -> Result<()> {
    run(dev, &a, &B::F32(b), c, (m, n, k), alpha, acc)
}

/// The B operand: f32 values, or a packed weight (f16/bf16/block-quantized) with the decoder's
/// type id, values and bytes per block, and strides over its values.
enum B<'a> {
    F32(Op<'a>),
    Packed { raw: &'a WgpuBuf, rs: u32, cs: u32, id: u32, block: u32, bytes: u32 },
}

impl B<'_> {
    fn strides(&self) -> (u32, u32) {
        match self {
            B::F32(o) => (o.1, o.2),
            B::Packed { rs, cs, .. } => (*rs, *cs),
        }
    }
}

/// Elements `[first, last]` an operand with strides `(rs, cs)` touches over rows `r0..r0+nr`
/// and columns `c0..c0+nc`.
fn span((rs, cs): (u32, u32), (r0, nr): (usize, usize), (c0, nc): (usize, usize)) -> (u64, u64) {
    let (rs, cs) = (u64::from(rs), u64::from(cs));
    let first = r0 as u64 * rs + c0 as u64 * cs;
    (first, first + (nr.max(1) as u64 - 1) * rs + (nc.max(1) as u64 - 1) * cs)
}

/// The bytes a packed weight's elements `[first, last]` occupy (whole blocks).
fn packed_bytes((first, last): (u64, u64), block: u32, bytes: u32) -> (u64, u64) {
    let (bl, by) = (u64::from(block), u64::from(bytes));
    (first / bl * by, (last / bl + 1) * by)
}

/// Chunk lengths `(cm, cn, ck)` such that every operand's sub-range of one launch fits a storage
/// binding: the whole GEMM in one launch when it fits (always, at the adapters' usual limits).
/// Each operand is cut along its outer (larger-stride) dimension only, so a chunk is one
/// contiguous run of its buffer; chunks of more than 64 are multiples of 64 (whole tiles).
fn chunks(dev: &Device, a: &Op<'_>, b: &B<'_>, (m, n, k): (usize, usize, usize)) -> Result<(usize, usize, usize)> {
    let align = u64::from(dev.limits.min_storage_buffer_offset_alignment);
    let budget = dev.max_binding().saturating_sub(align);
    let (mut cm, mut cn, mut ck) = (m, n, k);
    let shrink = |x: &mut usize| {
        *x = if *x > 128 { (*x / 2).div_ceil(64) * 64 } else { (*x / 2).max(1) };
    };
    for _ in 0..200 {
        let sa = span((a.1, a.2), (0, cm), (0, ck));
        if (sa.1 - sa.0 + 1) * 4 > budget {
            if a.1 >= a.2 && cm > 1 {
                shrink(&mut cm);
            } else if ck > 1 {
                shrink(&mut ck);
            } else {
                break;
            }
            continue;
        }
        let sb = span(b.strides(), (0, ck), (0, cn));
        let bb = match b {
            B::F32(_) => (sb.1 - sb.0 + 1) * 4,
            B::Packed { block, bytes, .. } => {
                let (x, y) = packed_bytes(sb, *block, *bytes);
                y - x
            }
        };
        if bb > budget {
            let (rs, cs) = b.strides();
            if rs >= cs && ck > 1 {
                shrink(&mut ck);
            } else if cn > 1 {
                shrink(&mut cn);
            } else {
                break;
            }
            continue;
        }
        // C [m, n] row-major: rows of n.
        if ((cm as u64 - 1) * n as u64 + cn as u64) * 4 > budget {
            if cm > 1 {
                shrink(&mut cm);
                continue;
            }
            break;
        }
        return Ok((cm, cn, ck));
    }
    Err(Error::Msg(format!(
        "wgpu gemm {m}×{k}·{k}×{n}: one row of an operand exceeds {}'s storage binding limit of {} bytes",
        dev.info.name,
        dev.max_binding()
    )))
}

/// `c[m, n] (+)= α·A·B`, split into launches over sub-ranges where an operand is larger than a
/// storage binding (k-chunks after the first accumulate).
#[allow(clippy::too_many_arguments)]
fn run(
    dev: &Device,
    a: &Op<'_>,
    b: &B<'_>,
    c: &WgpuBuf,
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    acc: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (cm, cn, ck) = chunks(dev, a, b, (m, n, k))?;
    if cm.div_ceil(16) > 65535 || cn.div_ceil(16) > 65535 {
        // (The v2 grid is the larger one: v3's 64×64 tiles need a quarter of the workgroups.)
        return Err(Error::Msg(format!("wgpu gemm: {m}×{n} exceeds one dispatch (at most 1 048 560 rows or columns)")));
    }
    let f16 = f16_on(dev);
    // The f16 kernels scale each f32 operand by its maximum over the whole tensor.
    let amax = if f16 {
        let mut ops = vec![(a.0, 0)];
        if let B::F32(o) = b {
            ops.push((o.0, 1));
        }
        Some(amax_of(dev, &ops)?)
    } else {
        None
    };
    for m0 in (0..m).step_by(cm) {
        let mm = cm.min(m - m0);
        for n0 in (0..n).step_by(cn) {
            let nn = cn.min(n - n0);
            for (ki, k0) in (0..k.max(1)).step_by(ck.max(1)).enumerate() {
                let kk = ck.min(k - k0.min(k));
                let (a0, a1) = span((a.1, a.2), (m0, mm), (k0, kk));
                let (ao, asz, a_off) = crate::runtime::sub_range(dev, a0, a1 - a0 + 1, 4);
                let (c0, c1) = span((u(n), 1), (m0, mm), (n0, nn));
                let (co, csz, c_off) = crate::runtime::sub_range(dev, c0, c1 - c0 + 1, 4);
                let mut p = Gemm {
                    m: u(mm),
                    n: u(nn),
                    k: u(kk),
                    accumulate: u32::from(acc || ki > 0),
                    rs_a: a.1,
                    cs_a: a.2,
                    rs_b: b.strides().0,
                    cs_b: b.strides().1,
                    alpha: alpha as f32,
                    a_off,
                    c_off,
                    ldc: u(n),
                    ..bytemuck::Zeroable::zeroed()
                };
                let sb = span(b.strides(), (k0, kk), (n0, nn));
                let (bbuf, bo, bsz) = match b {
                    B::F32(o) => {
                        let (bo, bsz, b_off) = crate::runtime::sub_range(dev, sb.0, sb.1 - sb.0 + 1, 4);
                        p.b_off = b_off;
                        (o.0, bo, bsz)
                    }
                    B::Packed { raw, id, block, bytes, .. } => {
                        if !sb.0.is_multiple_of(u64::from(*block)) {
                            return Err(Error::Msg("wgpu gemm: a packed weight split inside a block".into()));
                        }
                        let (x, y) = packed_bytes(sb, *block, *bytes);
                        let (bo, bsz, qbase) = crate::runtime::sub_range(dev, x, y - x, 1);
                        (p.ty, p.block, p.bytes, p.qbase) = (*id, *block, *bytes, qbase);
                        (*raw, bo, bsz)
                    }
                };
                let binds = [Bind::RAt(a.0, ao, asz), Bind::RAt(bbuf, bo, bsz), Bind::WAt(c, co, csz)];
                let groups64 = (nn.div_ceil(64) as u32, mm.div_ceil(64) as u32, 1);
                let packed = matches!(b, B::Packed { .. });
                match (&amax, packed) {
                    (Some(am), _) => {
                        let binds = [binds[0], binds[1], binds[2], Bind::W(am)];
                        let src = if packed { SRC_QH } else { SRC_H };
                        dev.launch(src, "gemm_v3h", &p, &binds, groups64)?;
                    }
                    (None, true) => dev.launch(SRC_Q, "gemm_v3", &p, &binds, groups64)?,
                    (None, false) => match variant() {
                        Variant::V2 => {
                            dev.launch(SRC, "gemm", &p, &binds, (nn.div_ceil(16) as u32, mm.div_ceil(16) as u32, 1))?
                        }
                        Variant::V3 => dev.launch(SRC, "gemm_v3", &p, &binds, groups64)?,
                    },
                }
            }
        }
    }
    Ok(())
}

/// `c[m, n] (+)= α·A·W`-like products where the B operand is the packed weight `w` (strides
/// over its values), decoded inside the GEMM. (The arguments mirror `gemm`'s.)
#[allow(clippy::too_many_arguments)]
fn gemm_q(
    dev: &Device,
    a: Op<'_>,
    w: &Tensor,
    (rs_b, cs_b): (u32, u32),
    c: &WgpuBuf,
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    acc: bool,
) -> Result<()> {
    // f16/bf16 weights are one-value "blocks" of two bytes to the same decoder.
    let (id, block, bytes) = match w.dtype() {
        kiln_core::DType::F16 => (1, 1, 2),
        kiln_core::DType::BF16 => (30, 1, 2),
        kiln_core::DType::Quant(t) => {
            let id = super::quant::kernel_id(t)
                .ok_or_else(|| Error::Msg(format!("wgpu: no decoder for {} yet", t.name())))?;
            let (block, bytes) = t.block();
            (id, block as u32, bytes as u32)
        }
        d => return Err(Error::Msg(format!("gemm_q: {} is not a packed weight type", d.name()))),
    };
    let uploaded;
    let raw = match super::packed(w, dev)? {
        Ok(b) => b,
        Err(b) => {
            uploaded = b;
            &uploaded
        }
    };
    run(dev, &a, &B::Packed { raw, rs: rs_b, cs: cs_b, id, block, bytes }, c, (m, n, k), alpha, acc)
}

/// Weights the fused GEMM decodes: block-quantized, and f16/bf16 (kept in two bytes on the
/// device, so no f32 copy of them is made either).
fn is_quant(w: &Tensor) -> bool {
    matches!(w.dtype(), kiln_core::DType::Quant(_) | kiln_core::DType::F16 | kiln_core::DType::BF16)
}

/// The GEMM kernels, by their names in `shaders/matmul.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// `v2_smem_tiled`: one output per thread.
    V2,
    /// `v3_register_blocked`: 4×4 outputs per thread.
    V3,
}

static VARIANT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The GEMM variant in use: set by [`set_variant`], else `KILN_WGPU_GEMM=v2|v3`, else v3.
pub fn variant() -> Variant {
    match VARIANT.load(std::sync::atomic::Ordering::Relaxed) {
        2 => Variant::V2,
        3 => Variant::V3,
        _ if std::env::var("KILN_WGPU_GEMM").is_ok_and(|v| v == "v2") => Variant::V2,
        _ => Variant::V3,
    }
}

/// Chooses the GEMM variant for the whole process (benchmarks and the parity test of each).
pub fn set_variant(v: Variant) {
    VARIANT.store(if v == Variant::V2 { 2 } else { 3 }, std::sync::atomic::Ordering::Relaxed);
}

/// The arithmetic of the GEMMs (every linear layer and matmul).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// f32 multiply-adds (exact f32 products).
    F32,
    /// f16 multiply-adds in 4-term dots, accumulated in f32, operands scaled by powers of two
    /// (`shaders/gemm_v3h.wgsl`); adapters without SHADER_F16 run f32 instead.
    F16,
}

static PRECISION: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// The precision asked for: set by [`set_precision`], else `KILN_WGPU_PRECISION=f16|f32`, else
/// f32 (f16 is opt-in, as mixed precision is in PyTorch: it trades accuracy for speed).
pub fn precision() -> Precision {
    match PRECISION.load(std::sync::atomic::Ordering::Relaxed) {
        16 => Precision::F16,
        32 => Precision::F32,
        _ if std::env::var("KILN_WGPU_PRECISION").is_ok_and(|v| v == "f16") => Precision::F16,
        _ => Precision::F32,
    }
}

/// Chooses the GEMMs' precision for the whole process.
pub fn set_precision(p: Precision) {
    PRECISION.store(if p == Precision::F16 { 16 } else { 32 }, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the GEMMs run in f16 now: asked for, and the adapter has SHADER_F16.
pub fn f16_on(dev: &Device) -> bool {
    precision() == Precision::F16 && dev.shader_f16
}

fn u(x: usize) -> u32 {
    x as u32
}

impl MatmulOps for WgpuBackend {
    fn matmul(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        let MatmulDims { m, k, n, out: dims } = MatmulDims::of(a, b, ta, tb)?;
        let dev = device()?;
        let (ha, hb) = (held(a)?, held(b)?);
        let c = dev.alloc((m * n * 4) as u64)?;
        let oa = if ta { Op(ha.buf(), 1, u(m)) } else { Op(ha.buf(), u(k), 1) };
        let ob = if tb { Op(hb.buf(), 1, u(k)) } else { Op(hb.buf(), u(n), 1) };
        gemm(dev, oa, ob, &c, (m, n, k), 1.0, false)?;
        Ok(tensor(c, dims, a.dtype()))
    }

    fn linear_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<LoraRef<'_>>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (m, k) = (x.shape().rows(), x.shape().last());
        let n = w.dims().first().copied().unwrap_or(0);
        if w.dims() != [n, k] {
            return Err(Error::shape("linear", format!("x {:?}, W {:?}", x.shape(), w.shape())));
        }
        let dev = device()?;
        let hx = held(x)?;
        let y = dev.alloc((m * n * 4) as u64)?;
        if is_quant(w) {
            gemm_q(dev, Op(hx.buf(), u(k), 1), w, (1, u(k)), &y, (m, n, k), 1.0, false)?;
        } else {
            let hw = held(w)?;
            gemm(dev, Op(hx.buf(), u(k), 1), Op(hw.buf(), 1, u(k)), &y, (m, n, k), 1.0, false)?;
        }
        if let Some(b) = bias {
            if b.numel() != n {
                return Err(Error::shape("linear", format!("bias {:?} for out={n}", b.shape())));
            }
            let hb = held(b)?;
            let p = |_, rows: usize| Gemm { m: u(rows), n: u(n), ..bytemuck::Zeroable::zeroed() };
            let parts = [Part::Whole(Bind::R(hb.buf())), Part::W(&y, n)];
            dev.launch_rows(SRC, "add_bias", &parts, m, p, |rows| Device::grid(rows * n))?;
        }
        let ut = match lora {
            None => None,
            Some(l) => {
                let r = l.rank(&LinDims { m, k, n })?;
                let (ha, hb) = (held(l.a)?, held(l.b)?);
                let ub = dev.alloc((m * r * 4) as u64)?;
                gemm(dev, Op(hx.buf(), u(k), 1), Op(ha.buf(), 1, u(k)), &ub, (m, r, k), 1.0, false)?;
                gemm(dev, Op(&ub, u(r), 1), Op(hb.buf(), 1, u(r)), &y, (m, n, r), l.scale, true)?;
                Some(tensor(ub, LinDims::out_dims(x, r), x.dtype()))
            }
        };
        Ok((tensor(y, LinDims::out_dims(x, n), x.dtype()), ut))
    }

    fn linear_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        lora: Option<(LoraRef<'_>, &Tensor)>,
        needs: LinearNeeds,
    ) -> Result<LinearGrads> {
        let (m, k) = (x.shape().rows(), x.shape().last());
        let n = w.dims().first().copied().unwrap_or(0);
        if w.dims() != [n, k] || dy.numel() != m * n {
            return Err(Error::shape(
                "linear_bwd",
                format!("x {:?}, W {:?}, dy {:?}", x.shape(), w.shape(), dy.shape()),
            ));
        }
        let dev = device()?;
        let (hdy, hx) = (held(dy)?, held(x)?);
        let mut g = LinearGrads::default();
        // du = s·dy·B, shared by dA and dx.
        let mut du: Option<(WgpuBuf, usize, crate::runtime::Held<'_>)> = None;
        if let Some((l, ut)) = &lora {
            let r = l.rank(&LinDims { m, k, n })?;
            let (hb, hu) = (held(l.b)?, held(ut)?);
            let dub = dev.alloc((m * r * 4) as u64)?;
            gemm(dev, Op(hdy.buf(), u(n), 1), Op(hb.buf(), u(r), 1), &dub, (m, r, n), l.scale, false)?;
            if needs.lora {
                let db = dev.alloc((n * r * 4) as u64)?;
                gemm(dev, Op(hdy.buf(), 1, u(n)), Op(hu.buf(), u(r), 1), &db, (n, r, m), l.scale, false)?;
                let da = dev.alloc((r * k * 4) as u64)?;
                gemm(dev, Op(&dub, 1, u(r)), Op(hx.buf(), u(k), 1), &da, (r, k, m), 1.0, false)?;
                g.da = Some(tensor(da, vec![r, k], x.dtype()));
                g.db = Some(tensor(db, vec![n, r], x.dtype()));
            }
            du = Some((dub, r, held(l.a)?));
        }
        if needs.x {
            let dx = dev.alloc((m * k * 4) as u64)?;
            if is_quant(w) {
                gemm_q(dev, Op(hdy.buf(), u(n), 1), w, (u(k), 1), &dx, (m, k, n), 1.0, false)?;
            } else {
                let hw = held(w)?;
                gemm(dev, Op(hdy.buf(), u(n), 1), Op(hw.buf(), u(k), 1), &dx, (m, k, n), 1.0, false)?;
            }
            if let Some((dub, r, ha)) = &du {
                gemm(dev, Op(dub, u(*r), 1), Op(ha.buf(), u(k), 1), &dx, (m, k, *r), 1.0, true)?;
            }
            g.dx = Some(tensor(dx, x.dims().to_vec(), x.dtype()));
        }
        if needs.w {
            let dw = dev.alloc((n * k * 4) as u64)?;
            gemm(dev, Op(hdy.buf(), 1, u(n)), Op(hx.buf(), u(k), 1), &dw, (n, k, m), 1.0, false)?;
            g.dw = Some(tensor(dw, vec![n, k], x.dtype()));
        }
        if needs.bias {
            let db = dev.alloc((n * 4) as u64)?;
            // A sum over rows: launches after the first of a split one add to db.
            let p = |r0: usize, rows: usize| Gemm {
                m: u(rows),
                n: u(n),
                accumulate: u32::from(r0 > 0),
                ..bytemuck::Zeroable::zeroed()
            };
            let parts = [Part::R(hdy.buf(), n), Part::Whole(Bind::W(&db))];
            dev.launch_rows(SRC, "col_sum", &parts, m, p, |_| Device::grid(n))?;
            g.dbias = Some(tensor(db, vec![n], x.dtype()));
        }
        Ok(g)
    }
}
