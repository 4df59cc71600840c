//! kiln's `Backend` on wgpu: memory, and one file per op family mirroring the CPU backend, each
//! launching the WGSL kernels of `shaders/<op>.wgsl`.
//!
//! f32 (and i32 indices) on the device; f16/bf16 inputs are widened to f32 at upload, and the
//! parity suite lists the f16/bf16 cases as skipped with that reason, never as passed.

mod attention;
mod elementwise;
pub mod matmul;
mod misc;
mod norm;
mod quant;

pub(crate) use quant::{upload as quant_upload, widen16};

use kiln_core::backend::{Backend, MemoryOps, Op, Support};
use kiln_core::{DType, Error, Result, Shape, Tensor};

use crate::runtime::{Device, Part, WgpuBuf, device, held, tensor};

/// The wgpu backend (the process's one device; see [`crate::runtime::device`]).
pub struct WgpuBackend;

/// The backend as the `'static` trait object device tensors hand out.
pub static WGPU: &dyn Backend = &WgpuBackend;

/// Parameters of the 1-D kernels (`shaders/elementwise.wgsl` `Params`).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct P1 {
    pub n: u32,
    pub s: f32,
    pub threads: u32,
    pub pad: u32,
}

impl P1 {
    pub(crate) fn n(n: usize) -> P1 {
        P1 { n: n as u32, s: 0.0, threads: 0, pad: 0 }
    }
}

pub(crate) const ELEMENTWISE: (&str, &str) = ("elementwise", include_str!("../../../../shaders/elementwise.wgsl"));

/// The little-endian bytes of an f16/bf16 CPU tensor.
fn half_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F16 => bytemuck::cast_slice(t.as_slice::<half::f16>()?).to_vec(),
        _ => bytemuck::cast_slice(t.as_slice::<half::bf16>()?).to_vec(),
    })
}

/// `t` (f32 on the device) rounded to nearest even into a 16-bit tensor of `dtype`.
fn round16(dev: &Device, t: &Tensor, dtype: DType) -> Result<Tensor> {
    let n = t.numel();
    let x = held(t)?;
    let y = dev.alloc((n * 2) as u64)?;
    let mode = u32::from(dtype == DType::F16);
    // "Rows" of two values: two input words, one output word.
    let p = |r0: usize, rows: usize| P1 { threads: mode, ..P1::n((2 * rows).min(n - 2 * r0)) };
    let parts = [Part::R(x.buf(), 2), Part::W(&y, 1)];
    dev.launch_rows(ELEMENTWISE, "round16", &parts, n.div_ceil(2), p, Device::grid)?;
    Ok(tensor(y, t.shape().clone(), dtype))
}

/// The raw (still packed) device buffer of a frozen f16/bf16/block-quantized weight: its own
/// (`Ok`), or (`Err`) a new upload of a host tensor's bytes. `held` would widen a 16-bit tensor.
pub(crate) fn packed<'a>(w: &'a Tensor, dev: &Device) -> Result<std::result::Result<&'a WgpuBuf, WgpuBuf>> {
    match w.storage() {
        kiln_core::tensor::Storage::Device(st) if w.offset() == 0 => st
            .as_any()
            .downcast_ref::<WgpuBuf>()
            .map(Ok)
            .ok_or_else(|| Error::Msg("wgpu: a weight of another device".into())),
        kiln_core::tensor::Storage::Device(_) => Err(Error::Msg("wgpu: a view of a packed weight".into())),
        kiln_core::tensor::Storage::Cpu(_) => Ok(Err(dev.write(w.raw_bytes()?)?)),
    }
}

/// Device element types: 4-byte f32 and i32.
fn check_dtype(op: &str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::I32 => Ok(()),
        d => {
            Err(Error::Msg(format!("wgpu {op}: {} tensors are not supported on wgpu yet (f32 and i32 are)", d.name())))
        }
    }
}

/// A new device tensor holding `t`'s elements copied by `copy` (same shape and dtype).
pub(crate) fn dup(dev: &Device, t: &Tensor) -> Result<Tensor> {
    let a = held(t)?;
    let y = dev.alloc((t.numel() * 4) as u64)?;
    let parts = [Part::R(a.buf(), 1), Part::W(&y, 1)];
    dev.launch_rows(ELEMENTWISE, "copy", &parts, t.numel(), |_, n| P1::n(n), Device::grid)?;
    Ok(tensor(y, t.shape().clone(), t.dtype()))
}

impl MemoryOps for WgpuBackend {
    fn to_cpu(&self, t: &Tensor) -> Result<Tensor> {
        let dev = device()?;
        if let DType::Quant(ty) = t.dtype() {
            let h = held(t)?;
            let bytes = dev.read(h.buf().raw(), 0, t.dtype().bytes(t.numel()) as u64)?;
            return Tensor::from_quant_bytes(bytes, ty, t.shape().clone());
        }
        let kiln_core::tensor::Storage::Device(d) = t.storage() else { return Ok(t.clone()) };
        let b = d
            .as_any()
            .downcast_ref::<crate::runtime::WgpuBuf>()
            .ok_or_else(|| Error::Msg("wgpu to_cpu: a tensor of another device".into()))?;
        if matches!(t.dtype(), DType::F16 | DType::BF16) {
            let bytes = dev.read(b.raw(), (t.offset() * 2) as u64, (t.numel() * 2) as u64)?;
            return match t.dtype() {
                DType::F16 => {
                    Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::f16>(&bytes), t.shape().clone())
                }
                _ => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::bf16>(&bytes), t.shape().clone()),
            };
        }
        check_dtype("to_cpu", t)?;
        let bytes = dev.read(b.raw(), (t.offset() * 4) as u64, (t.numel() * 4) as u64)?;
        match t.dtype() {
            DType::I32 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, i32>(&bytes), t.shape().clone()),
            _ => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes), t.shape().clone()),
        }
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        if matches!(t.storage(), kiln_core::tensor::Storage::Device(_)) {
            return if t.backend().name() == "wgpu" { Ok(t.clone()) } else { self.upload(&t.to_cpu()?) };
        }
        let dev = device()?;
        let b = match t.dtype() {
            DType::F32 => dev.write(bytemuck::cast_slice(t.as_slice::<f32>()?))?,
            DType::I32 => dev.write(bytemuck::cast_slice(t.as_slice::<i32>()?))?,
            // f64 (gradient checks) and the half types are kept as f32 on the device.
            // f64 (gradient checks) is kept as f32 on the device.
            DType::F64 => dev.write(bytemuck::cast_slice(&t.to_vec_f32()?))?,
            // Frozen f16/bf16 weights keep their two bytes (half the memory); ops widen them.
            DType::F16 | DType::BF16 => dev.write(&half_bytes(t)?)?,
            DType::Quant(_) => quant::upload(t)?,
        };
        let dtype = if t.dtype() == DType::F64 { DType::F32 } else { t.dtype() };
        Ok(tensor(b, t.shape().clone(), dtype))
    }
    fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let dev = device()?;
        match (t.dtype(), dtype) {
            // held() widens a 16-bit tensor into a buffer of its own: that buffer is the cast.
            (DType::F16 | DType::BF16, DType::F32) => match crate::runtime::held(t)? {
                crate::runtime::Held::Copy(b) => Ok(tensor(b, t.shape().clone(), DType::F32)),
                crate::runtime::Held::Own(_) => Err(Error::Msg("wgpu cast: a 16-bit tensor was not widened".into())),
            },
            // Same 16-bit type: the bytes.
            (a @ (DType::F16 | DType::BF16), b) if a == b => {
                let raw = packed(t, dev)?;
                let src = match &raw {
                    Ok(b) => *b,
                    Err(b) => b,
                };
                Ok(tensor(dev.copy(src.raw(), 0, (t.numel() * 2) as u64)?, t.shape().clone(), a))
            }
            // The device keeps f64 as f32.
            (a, b) if a == b || (a == DType::F32 && b == DType::F64) => dup(dev, t),
            (DType::F32 | DType::F64, DType::F16 | DType::BF16) => round16(dev, t, dtype),
            (DType::F16 | DType::BF16, DType::F16 | DType::BF16) => round16(dev, &self.cast(t, DType::F32)?, dtype),
            (DType::Quant(q), DType::F32) => {
                let raw = packed(t, dev)?;
                let src = match &raw {
                    Ok(b) => *b,
                    Err(b) => b,
                };
                Ok(tensor(quant::dequant(src, t.numel(), q)?, t.shape().clone(), DType::F32))
            }
            (DType::Quant(_), DType::F16 | DType::BF16) => round16(dev, &self.cast(t, DType::F32)?, dtype),
            (a, b) => Err(Error::Msg(format!("wgpu cast {} → {}: not supported on wgpu yet", a.name(), b.name()))),
        }
    }
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Tensor> {
        let n = shape.numel();
        let dtype = if dtype == DType::I32 { DType::I32 } else { DType::F32 };
        Ok(tensor(device()?.write(&vec![0u8; n * 4])?, shape.clone(), dtype))
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }
    fn supports(&self, op: Op, dtype: DType) -> Support {
        if let Err(e) = device() {
            return Support::No(e.to_string());
        }
        match (op, dtype) {
            (Op::GeGlu, _) => Support::No("no WGSL GeGLU kernel yet".into()),
            (_, DType::F32) => Support::Yes,
            // Frozen f16/bf16 weights are widened to f32 at upload (exact, at twice the memory)
            // until the f16 kernels land; the linear layers then run on them in f32.
            (Op::Linear | Op::Matmul, DType::F16 | DType::BF16) => Support::Yes,
            // Block-quantized frozen weights stay quantized on the device (QLoRA).
            (Op::Linear | Op::Matmul, DType::Quant(t)) if quant::supported(t) => Support::Yes,
            // Casts round to nearest even into 16-bit tensors and decode block-quantized ones.
            (Op::Cast, DType::F16 | DType::BF16) => Support::Yes,
            (Op::Cast, DType::Quant(t)) if quant::supported(t) => Support::Yes,
            // Frozen 16-bit and block-quantized tables are decoded where a lookup reads them.
            (Op::Embedding, DType::F16 | DType::BF16) => Support::Yes,
            (Op::Embedding, DType::Quant(t)) if quant::supported(t) => Support::Yes,
            (op, d) => Support::No(format!("{op:?} in {} on wgpu: f32 kernels only so far", d.name())),
        }
    }
    fn compute_dtype(&self, op: Op, dtype: DType) -> DType {
        // The f16 GEMMs round their operands to f16 (after exact power-of-two scaling).
        match (op, device()) {
            (Op::Linear | Op::Matmul, Ok(dev)) if matmul::f16_on(dev) => DType::F16,
            _ => dtype,
        }
    }
}
