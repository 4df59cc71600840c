//! Device tensors: the storage that pairs a buffer with the backend instance that made it (ops
//! on a tensor dispatch to that instance, so its GEMM variant and precision follow the tensor),
//! and the views every op reads its inputs through (`held`, `packed`).

use std::any::Any;

use kiln_core::backend::Backend;
use kiln_core::tensor::{DeviceStorage, Storage};
use kiln_core::{DType, Error, Result, Shape, Tensor};

use super::instance::WgpuBackend;
use super::quant;
use crate::runtime::{Device, WgpuBuf, device};

/// A device tensor's storage: its buffer and the backend instance its ops run on.
pub struct Stored {
    pub(crate) buf: WgpuBuf,
    be: &'static WgpuBackend,
}

impl DeviceStorage for Stored {
    fn backend(&self) -> &'static dyn Backend {
        self.be
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl WgpuBackend {
    /// Wraps a buffer as a tensor whose ops run on this instance.
    pub(crate) fn tensor(&self, b: WgpuBuf, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor::from_device(Box::new(Stored { buf: b, be: self.interned() }), shape.into(), dtype)
    }
}

/// The buffer of a wgpu device tensor (any instance's), from its storage.
pub(crate) fn stored(t: &Tensor) -> Option<Result<&WgpuBuf>> {
    match t.storage() {
        Storage::Device(d) => Some(
            d.as_any()
                .downcast_ref::<Stored>()
                .map(|s| &s.buf)
                .ok_or_else(|| Error::Msg("wgpu: a tensor of another device was passed to a wgpu op".into())),
        ),
        Storage::Cpu(_) => None,
    }
}

/// The device buffer of `t` as a whole buffer starting at `t`'s first element: `t`'s own when it
/// is not a view, else a copy of its range.
pub enum Held<'a> {
    Own(&'a WgpuBuf),
    Copy(WgpuBuf),
}

impl Held<'_> {
    pub fn buf(&self) -> &WgpuBuf {
        match self {
            Held::Own(b) => b,
            Held::Copy(b) => b,
        }
    }
}

/// `t` on this device (4-byte elements), as a buffer starting at its first element. A CPU
/// tensor is uploaded for the call: the model's small index inputs (ids, positions, segments,
/// targets) are built on the host, and this keeps every caller backend-agnostic.
pub fn held(t: &Tensor) -> Result<Held<'_>> {
    let Some(b) = stored(t) else {
        let dev = device()?;
        let b = match t.dtype() {
            DType::F32 => dev.write(bytemuck::cast_slice(t.as_slice::<f32>()?))?,
            DType::I32 => dev.write(bytemuck::cast_slice(t.as_slice::<i32>()?))?,
            DType::F64 | DType::F16 | DType::BF16 => dev.write(bytemuck::cast_slice(&t.to_vec_f32()?))?,
            DType::Quant(_) => quant::upload(t)?,
        };
        return Ok(Held::Copy(b));
    };
    let b = b?;
    // Device elements are 4 bytes, except frozen weights kept in their own type: block-quantized
    // (dequantized by the linear layers) and f16/bf16 (widened to f32 here, for any op).
    let bytes = t.dtype().bytes(t.numel()) as u64;
    let own = if t.offset() == 0 && b.bytes == bytes {
        Held::Own(b)
    } else {
        Held::Copy(device()?.copy(b.raw(), t.dtype().bytes(t.offset()) as u64, bytes)?)
    };
    match t.dtype() {
        DType::F16 | DType::BF16 => Ok(Held::Copy(quant::widen16(own.buf(), t.numel(), t.dtype())?)),
        _ => Ok(own),
    }
}

/// Integer indices (ids, targets) on the host, where the ops check them before any launch.
pub(crate) fn i32s(t: &Tensor) -> Result<Vec<i32>> {
    Ok(t.to_cpu()?.as_slice::<i32>()?.to_vec())
}

/// The raw (still packed) device buffer of a frozen f16/bf16/block-quantized weight: its own
/// (`Ok`), or (`Err`) a new upload of a host tensor's bytes. `held` would widen a 16-bit tensor.
pub(crate) fn packed<'a>(w: &'a Tensor, dev: &Device) -> Result<std::result::Result<&'a WgpuBuf, WgpuBuf>> {
    match stored(w) {
        Some(_) if w.offset() != 0 => Err(Error::Msg("wgpu: a view of a packed weight".into())),
        Some(b) => b.map(Ok),
        None => Ok(Err(dev.write(w.raw_bytes()?)?)),
    }
}
