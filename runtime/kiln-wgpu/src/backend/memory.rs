//! Memory ops of the wgpu backend: uploads, read-backs, zeros and casts (the cast kernels are
//! the elementwise family's).

use kiln_core::backend::MemoryOps;
use kiln_core::tensor::Storage;
use kiln_core::{DType, Error, Result, Shape, Tensor};

use super::elementwise::{dup, round16};
use super::instance::WgpuBackend;
use super::quant;
use super::tensor::{Held, held, packed, stored};
use crate::runtime::device;

/// The little-endian bytes of an f16/bf16 CPU tensor.
fn half_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(match t.dtype() {
        DType::F16 => bytemuck::cast_slice(t.as_slice::<half::f16>()?).to_vec(),
        _ => bytemuck::cast_slice(t.as_slice::<half::bf16>()?).to_vec(),
    })
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

impl MemoryOps for WgpuBackend {
    fn to_cpu(&self, t: &Tensor) -> Result<Tensor> {
        let dev = device()?;
        if let DType::Quant(ty) = t.dtype() {
            let h = held(t)?;
            let bytes = dev.read(h.buf().raw(), 0, t.dtype().bytes(t.numel()) as u64)?;
            return Tensor::from_quant_bytes(bytes, ty, t.shape().clone());
        }
        let Some(b) = stored(t) else { return Ok(t.clone()) };
        let b = b?;
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
        if matches!(t.storage(), Storage::Device(_)) {
            return if t.backend().name() == "wgpu" { Ok(t.clone()) } else { self.upload(&t.to_cpu()?) };
        }
        let dev = device()?;
        let b = match t.dtype() {
            DType::F32 => dev.write(bytemuck::cast_slice(t.as_slice::<f32>()?))?,
            DType::I32 => dev.write(bytemuck::cast_slice(t.as_slice::<i32>()?))?,
            // f64 (gradient checks) is kept as f32 on the device.
            DType::F64 => dev.write(bytemuck::cast_slice(&t.to_vec_f32()?))?,
            // Frozen f16/bf16 weights keep their two bytes (half the memory); ops widen them.
            DType::F16 | DType::BF16 => dev.write(&half_bytes(t)?)?,
            DType::Quant(_) => quant::upload(t)?,
        };
        let dtype = if t.dtype() == DType::F64 { DType::F32 } else { t.dtype() };
        Ok(self.tensor(b, t.shape().clone(), dtype))
    }
    fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let dev = device()?;
        match (t.dtype(), dtype) {
            // held() widens a 16-bit tensor into a buffer of its own: that buffer is the cast.
            (DType::F16 | DType::BF16, DType::F32) => match held(t)? {
                Held::Copy(b) => Ok(self.tensor(b, t.shape().clone(), DType::F32)),
                Held::Own(_) => Err(Error::Msg("wgpu cast: a 16-bit tensor was not widened".into())),
            },
            // Same 16-bit type: the bytes.
            (a @ (DType::F16 | DType::BF16), b) if a == b => {
                let raw = packed(t, dev)?;
                let src = match &raw {
                    Ok(b) => *b,
                    Err(b) => b,
                };
                Ok(self.tensor(dev.copy(src.raw(), 0, (t.numel() * 2) as u64)?, t.shape().clone(), a))
            }
            // The device keeps f64 as f32.
            (a, b) if a == b || (a == DType::F32 && b == DType::F64) => dup(self, dev, t),
            (DType::F32 | DType::F64, DType::F16 | DType::BF16) => round16(self, dev, t, dtype),
            (DType::F16 | DType::BF16, DType::F16 | DType::BF16) => {
                round16(self, dev, &self.cast(t, DType::F32)?, dtype)
            }
            (DType::Quant(q), DType::F32) => {
                let raw = packed(t, dev)?;
                let src = match &raw {
                    Ok(b) => *b,
                    Err(b) => b,
                };
                Ok(self.tensor(quant::dequant(src, t.numel(), q)?, t.shape().clone(), DType::F32))
            }
            (DType::Quant(_), DType::F16 | DType::BF16) => round16(self, dev, &self.cast(t, DType::F32)?, dtype),
            (a, b) => Err(Error::Msg(format!("wgpu cast {} → {}: not supported on wgpu yet", a.name(), b.name()))),
        }
    }
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Tensor> {
        let n = shape.numel();
        let dtype = if dtype == DType::I32 { DType::I32 } else { DType::F32 };
        Ok(self.tensor(device()?.write(&vec![0u8; n * 4])?, shape.clone(), dtype))
    }
}
