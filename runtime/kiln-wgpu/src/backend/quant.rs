//! Block-quantized weights on the device: kept in their GGUF/NF4 bytes; the linear layers decode
//! them inside the GEMM (`shaders/matmul_q.wgsl`), `shaders/quant.wgsl` widens f16/bf16
//! tensors for the other ops and decodes casts. Also the operand maxima the f16 GEMM scales by
//! (`shaders/quant_absmax.wgsl`).

use kiln_core::quant::GgmlType;
use kiln_core::{DType, Error, Result, Tensor};

use crate::runtime::{Bind, Device, Part, WgpuBuf, device};

const SRC: (&str, &str) = (
    "quant",
    concat!(include_str!("../../../../shaders/quant.wgsl"), include_str!("../../../../shaders/quant_decode.wgsl")),
);
const ABSMAX: (&str, &str) = ("quant_absmax", include_str!("../../../../shaders/quant_absmax.wgsl"));

/// `shaders/quant_absmax.wgsl` `Params`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AbsMax {
    n: u32,
    slot: u32,
    pad: [u32; 2],
}

/// The operand maxima of one f16 GEMM: a zeroed two-word buffer, `slots` filled by `absmax`.
pub(crate) fn amax_of(dev: &Device, ops: &[(&WgpuBuf, u32)]) -> Result<WgpuBuf> {
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

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct DeqP {
    n: u32,
    ty: u32,
    block: u32,
    bytes: u32,
}

/// The block types the kernels decode, with the id `decode` switches on.
pub(crate) fn kernel_id(t: GgmlType) -> Option<u32> {
    Some(match t {
        GgmlType::Q8_0 => 8,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 6,
        GgmlType::Q4K => 12,
        GgmlType::Q5K => 13,
        GgmlType::Q6K => 14,
        GgmlType::NF4 => 1000,
        GgmlType::NF4DQ => 1001,
        _ => return None,
    })
}

/// Whether weights of type `t` can live on the device.
pub(crate) fn supported(t: GgmlType) -> bool {
    kernel_id(t).is_some()
}

/// `n` f32 values decoded from `src` by the kernel's type `id`.
fn decode(src: &WgpuBuf, n: usize, id: u32, block: usize, bytes: usize) -> Result<WgpuBuf> {
    let dev = device()?;
    let y = dev.alloc((n * 4) as u64)?;
    // Split (where a tensor is larger than a binding) into "rows" of g blocks, g the fewest
    // whose bytes are whole words: 16-bit values go two to a row, Q8_0's 34-byte blocks two.
    let g = 4 / gcd(4, bytes);
    let per = g * block;
    let p = |r0: usize, rows: usize| DeqP {
        n: (rows * per).min(n - r0 * per) as u32,
        ty: id,
        block: block as u32,
        bytes: bytes as u32,
    };
    let parts = [Part::R(src, g * bytes / 4), Part::W(&y, per)];
    dev.launch_rows(SRC, "dequant", &parts, n.div_ceil(per), p, |rows| Device::grid(rows * per))?;
    Ok(y)
}

/// The f32 values of a block-quantized device tensor of `n` values.
pub(crate) fn dequant(src: &WgpuBuf, n: usize, t: GgmlType) -> Result<WgpuBuf> {
    let id = kernel_id(t).ok_or_else(|| Error::Msg(format!("wgpu: no decoder for {}", t.name())))?;
    let (block, bytes) = t.block();
    decode(src, n, id, block, bytes)
}

/// The f32 values of a 16-bit (f16 or bf16) device tensor of `n` values.
pub(crate) fn widen16(src: &WgpuBuf, n: usize, dtype: DType) -> Result<WgpuBuf> {
    let id = if dtype == DType::BF16 { 30 } else { 1 };
    decode(src, n, id, 1, 2)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Uploads a block-quantized CPU tensor's bytes.
pub(crate) fn upload(t: &Tensor) -> Result<WgpuBuf> {
    let DType::Quant(ty) = t.dtype() else { return Err(Error::Msg("not a quantized tensor".into())) };
    if !supported(ty) {
        return Err(Error::Msg(format!("wgpu: {} weights have no dequantization kernel yet", ty.name())));
    }
    device()?.write(t.raw_bytes()?)
}
