//! GEMM and the (LoRA) linear layer (`shaders/matmul*.wgsl`): every product is one strided GEMM
//! launch, so transposes cost nothing. The kernel is the backend instance's choice: its
//! [`GemmVariant`] in f32, or the f16 GEMM when its precision is f16 and the adapter has
//! SHADER_F16; packed (16-bit, block-quantized) weights go through the fused dequant-GEMM.

use kiln_core::backend::{LinDims, LinearGrads, LinearNeeds, LoraRef, MatmulDims, MatmulOps};
use kiln_core::{Error, Result, Tensor};

use super::instance::WgpuBackend;
use super::quant;
use super::tensor::{Held, held, packed};
use crate::runtime::{Bind, Device, Part, WgpuBuf, device, sub_range};
use crate::variant::GemmVariant;

const SRC: (&str, &str) = (
    "matmul",
    concat!(
        include_str!("../../../../shaders/matmul_params.wgsl"),
        include_str!("../../../../shaders/matmul.wgsl"),
        include_str!("../../../../shaders/matmul_v3.wgsl")
    ),
);
/// The fused dequant-GEMM: quantized weights decoded as their tiles are staged.
const SRC_Q: (&str, &str) = (
    "matmul_q",
    concat!(
        include_str!("../../../../shaders/matmul_params.wgsl"),
        include_str!("../../../../shaders/matmul_q.wgsl"),
        include_str!("../../../../shaders/quant_decode.wgsl"),
        include_str!("../../../../shaders/matmul_v3.wgsl")
    ),
);

/// The f16 GEMM (`gemm_v3h`, adapters with SHADER_F16): the same module in f16 arithmetic.
const SRC_H: (&str, &str) = (
    "matmul_h",
    concat!(
        "enable f16;\n",
        include_str!("../../../../shaders/matmul_params.wgsl"),
        include_str!("../../../../shaders/matmul.wgsl"),
        include_str!("../../../../shaders/matmul_v3h.wgsl")
    ),
);
/// The fused dequant-GEMM in f16 arithmetic.
const SRC_QH: (&str, &str) = (
    "matmul_qh",
    concat!(
        "enable f16;\n",
        include_str!("../../../../shaders/matmul_params.wgsl"),
        include_str!("../../../../shaders/matmul_q.wgsl"),
        include_str!("../../../../shaders/quant_decode.wgsl"),
        include_str!("../../../../shaders/matmul_v3h.wgsl")
    ),
);

/// `shaders/matmul_params.wgsl` `Params`.
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
#[allow(clippy::too_many_arguments)]
fn gemm(
    be: &WgpuBackend,
    dev: &Device,
    a: Op<'_>,
    b: Op<'_>,
    c: &WgpuBuf,
    (m, n, k): (usize, usize, usize),
    alpha: f64,
    acc: bool,
) -> Result<()> {
    run(be, dev, &a, &B::F32(b), c, (m, n, k), alpha, acc)
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
    be: &WgpuBackend,
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
    let f16 = be.f16_gemm(dev);
    // The f16 kernels scale each f32 operand by its maximum over the whole tensor.
    let amax = if f16 {
        let mut ops = vec![(a.0, 0)];
        if let B::F32(o) = b {
            ops.push((o.0, 1));
        }
        Some(quant::amax_of(dev, &ops)?)
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
                let (ao, asz, a_off) = sub_range(dev, a0, a1 - a0 + 1, 4);
                let (c0, c1) = span((u(n), 1), (m0, mm), (n0, nn));
                let (co, csz, c_off) = sub_range(dev, c0, c1 - c0 + 1, 4);
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
                        let (bo, bsz, b_off) = sub_range(dev, sb.0, sb.1 - sb.0 + 1, 4);
                        p.b_off = b_off;
                        (o.0, bo, bsz)
                    }
                    B::Packed { raw, id, block, bytes, .. } => {
                        if !sb.0.is_multiple_of(u64::from(*block)) {
                            return Err(Error::Msg("wgpu gemm: a packed weight split inside a block".into()));
                        }
                        let (x, y) = packed_bytes(sb, *block, *bytes);
                        let (bo, bsz, qbase) = sub_range(dev, x, y - x, 1);
                        (p.ty, p.block, p.bytes, p.qbase) = (*id, *block, *bytes, qbase);
                        (*raw, bo, bsz)
                    }
                };
                let binds = [Bind::RAt(a.0, ao, asz), Bind::RAt(bbuf, bo, bsz), Bind::WAt(c, co, csz)];
                let groups64 = (be.gemm_col_groups(nn, 64), mm.div_ceil(64) as u32, 1);
                let packed = matches!(b, B::Packed { .. });
                match (&amax, packed) {
                    (Some(am), _) => {
                        let binds = [binds[0], binds[1], binds[2], Bind::W(am)];
                        let src = if packed { SRC_QH } else { SRC_H };
                        dev.launch(src, "gemm_v3h", &p, &binds, groups64)?;
                    }
                    (None, true) => dev.launch(SRC_Q, "gemm_v3", &p, &binds, groups64)?,
                    (None, false) => {
                        let groups = match be.gemm() {
                            GemmVariant::V2 => (be.gemm_col_groups(nn, 16), mm.div_ceil(16) as u32, 1),
                            GemmVariant::V3 => groups64,
                        };
                        dev.launch(SRC, be.gemm().entry(), &p, &binds, groups)?
                    }
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
    be: &WgpuBackend,
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
            let id = quant::kernel_id(t).ok_or_else(|| Error::Msg(format!("wgpu: no decoder for {} yet", t.name())))?;
            let (block, bytes) = t.block();
            (id, block as u32, bytes as u32)
        }
        d => return Err(Error::Msg(format!("gemm_q: {} is not a packed weight type", d.name()))),
    };
    let uploaded;
    let raw = match packed(w, dev)? {
        Ok(b) => b,
        Err(b) => {
            uploaded = b;
            &uploaded
        }
    };
    run(be, dev, &a, &B::Packed { raw, rs: rs_b, cs: cs_b, id, block, bytes }, c, (m, n, k), alpha, acc)
}

/// Weights the fused GEMM decodes: block-quantized, and f16/bf16 (kept in two bytes on the
/// device, so no f32 copy of them is made either).
fn is_quant(w: &Tensor) -> bool {
    matches!(w.dtype(), kiln_core::DType::Quant(_) | kiln_core::DType::F16 | kiln_core::DType::BF16)
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
        gemm(self, dev, oa, ob, &c, (m, n, k), 1.0, false)?;
        Ok(self.tensor(c, dims, a.dtype()))
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
            gemm_q(self, dev, Op(hx.buf(), u(k), 1), w, (1, u(k)), &y, (m, n, k), 1.0, false)?;
        } else {
            let hw = held(w)?;
            gemm(self, dev, Op(hx.buf(), u(k), 1), Op(hw.buf(), 1, u(k)), &y, (m, n, k), 1.0, false)?;
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
                gemm(self, dev, Op(hx.buf(), u(k), 1), Op(ha.buf(), 1, u(k)), &ub, (m, r, k), 1.0, false)?;
                gemm(self, dev, Op(&ub, u(r), 1), Op(hb.buf(), 1, u(r)), &y, (m, n, r), l.scale, true)?;
                Some(self.tensor(ub, LinDims::out_dims(x, r), x.dtype()))
            }
        };
        Ok((self.tensor(y, LinDims::out_dims(x, n), x.dtype()), ut))
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
        let mut du: Option<(WgpuBuf, usize, Held<'_>)> = None;
        if let Some((l, ut)) = &lora {
            let r = l.rank(&LinDims { m, k, n })?;
            let (hb, hu) = (held(l.b)?, held(ut)?);
            let dub = dev.alloc((m * r * 4) as u64)?;
            gemm(self, dev, Op(hdy.buf(), u(n), 1), Op(hb.buf(), u(r), 1), &dub, (m, r, n), l.scale, false)?;
            if needs.lora {
                let db = dev.alloc((n * r * 4) as u64)?;
                gemm(self, dev, Op(hdy.buf(), 1, u(n)), Op(hu.buf(), u(r), 1), &db, (n, r, m), l.scale, false)?;
                let da = dev.alloc((r * k * 4) as u64)?;
                gemm(self, dev, Op(&dub, 1, u(r)), Op(hx.buf(), u(k), 1), &da, (r, k, m), 1.0, false)?;
                g.da = Some(self.tensor(da, vec![r, k], x.dtype()));
                g.db = Some(self.tensor(db, vec![n, r], x.dtype()));
            }
            du = Some((dub, r, held(l.a)?));
        }
        if needs.x {
            let dx = dev.alloc((m * k * 4) as u64)?;
            if is_quant(w) {
                gemm_q(self, dev, Op(hdy.buf(), u(n), 1), w, (u(k), 1), &dx, (m, k, n), 1.0, false)?;
            } else {
                let hw = held(w)?;
                gemm(self, dev, Op(hdy.buf(), u(n), 1), Op(hw.buf(), u(k), 1), &dx, (m, k, n), 1.0, false)?;
            }
            if let Some((dub, r, ha)) = &du {
                gemm(self, dev, Op(dub, u(*r), 1), Op(ha.buf(), u(k), 1), &dx, (m, k, *r), 1.0, true)?;
            }
            g.dx = Some(self.tensor(dx, x.dims().to_vec(), x.dtype()));
        }
        if needs.w {
            let dw = dev.alloc((n * k * 4) as u64)?;
            gemm(self, dev, Op(hdy.buf(), 1, u(n)), Op(hx.buf(), u(k), 1), &dw, (n, k, m), 1.0, false)?;
            g.dw = Some(self.tensor(dw, vec![n, k], x.dtype()));
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
            g.dbias = Some(self.tensor(db, vec![n], x.dtype()));
        }
        Ok(g)
    }
}
