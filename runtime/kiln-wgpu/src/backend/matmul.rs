//! GEMM and the (LoRA) linear layer (`shaders/matmul.wgsl`): every product is one strided GEMM
//! launch, so transposes cost nothing.

use kiln_core::backend::{LinDims, LinearGrads, LinearNeeds, LoraRef, MatmulDims, MatmulOps};
use kiln_core::{Error, Result, Tensor};

use super::WgpuBackend;
use crate::runtime::{Bind, Device, WgpuBuf, device, held, tensor};

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
    for &(b, slot) in ops {
        let n = (b.bytes / 4) as usize;
        // At most 1024 workgroups, each striding over its share (one atomic per workgroup).
        let groups = n.div_ceil(256).clamp(1, 1024) as u32;
        let p = AbsMax { n: n as u32, slot, pad: [0; 2] };
        dev.launch(ABSMAX, "absmax", &p, &[Bind::R(b), Bind::W(&out)], (groups, 1, 1))?;
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
    let gy = m.div_ceil(16);
    if gy > 65535 || n.div_ceil(16) > 65535 {
        // (The v2 grid is the larger one: v3's 64×64 tiles need a quarter of the workgroups.)
        return Err(Error::Msg(format!("wgpu gemm: {m}×{n} exceeds one dispatch (at most 1 048 560 rows or columns)")));
    }
    let p = Gemm {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: u32::from(acc),
        rs_a: a.1,
        cs_a: a.2,
        rs_b: b.1,
        cs_b: b.2,
        alpha: alpha as f32,
        ty: 0,
        block: 0,
        bytes: 0,
    };
    let bufs = [Bind::R(a.0), Bind::R(b.0), Bind::W(c)];
    if f16_on(dev) {
        let amax = amax_of(dev, &[(a.0, 0), (b.0, 1)])?;
        let bufs = [Bind::R(a.0), Bind::R(b.0), Bind::W(c), Bind::W(&amax)];
        return dev.launch(SRC_H, "gemm_v3h", &p, &bufs, (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1));
    }
    match variant() {
        Variant::V2 => dev.launch(SRC, "gemm", &p, &bufs, (n.div_ceil(16) as u32, gy as u32, 1)),
        Variant::V3 => dev.launch(SRC, "gemm_v3", &p, &bufs, (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1)),
    }
}

/// `c[m, n] (+)= α·A·W`-like products where the B operand is the block-quantized weight `w`
/// (strides over its values), decoded inside the GEMM. (The arguments mirror `gemm`'s.)
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
            (id, block, bytes)
        }
        d => return Err(Error::Msg(format!("gemm_q: {} is not a packed weight type", d.name()))),
    };
    // The raw (still packed) bytes: held() would widen a 16-bit tensor. A host tensor is
    // uploaded as it is.
    let uploaded;
    let raw = match w.storage() {
        kiln_core::tensor::Storage::Device(st) if w.offset() == 0 => st
            .as_any()
            .downcast_ref::<WgpuBuf>()
            .ok_or_else(|| Error::Msg("gemm_q: a weight of another device".into()))?,
        kiln_core::tensor::Storage::Device(_) => return Err(Error::Msg("gemm_q: a view of a weight".into())),
        kiln_core::tensor::Storage::Cpu(_) => {
            uploaded = dev.write(w.raw_bytes()?)?;
            &uploaded
        }
    };
    if m.div_ceil(64) > 65535 || n.div_ceil(64) > 65535 {
        return Err(Error::Msg(format!("wgpu gemm: {m}×{n} exceeds one dispatch")));
    }
    let p = Gemm {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        accumulate: u32::from(acc),
        rs_a: a.1,
        cs_a: a.2,
        rs_b,
        cs_b,
        alpha: alpha as f32,
        ty: id,
        block: block as u32,
        bytes: bytes as u32,
    };
    let groups = (n.div_ceil(64) as u32, m.div_ceil(64) as u32, 1);
    if f16_on(dev) {
        let amax = amax_of(dev, &[(a.0, 0)])?;
        let bufs = [Bind::R(a.0), Bind::R(raw), Bind::W(c), Bind::W(&amax)];
        return dev.launch(SRC_QH, "gemm_v3h", &p, &bufs, groups);
    }
    let bufs = [Bind::R(a.0), Bind::R(raw), Bind::W(c)];
    dev.launch(SRC_Q, "gemm_v3", &p, &bufs, groups)
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
            let p = Gemm { m: u(m), n: u(n), ..bytemuck::Zeroable::zeroed() };
            dev.launch(SRC, "add_bias", &p, &[Bind::R(hb.buf()), Bind::W(&y)], Device::grid(m * n))?;
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
            let p = Gemm { m: u(m), n: u(n), ..bytemuck::Zeroable::zeroed() };
            dev.launch(SRC, "col_sum", &p, &[Bind::R(hdy.buf()), Bind::W(&db)], Device::grid(n))?;
            g.dbias = Some(tensor(db, vec![n], x.dtype()));
        }
        Ok(g)
    }
}
