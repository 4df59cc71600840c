//! Tensors: a shape, a dtype and contiguous storage on one backend.
//!
//! Storage is reference-counted, so `clone`, `reshape` and `narrow` (along the first dimension)
//! are views that copy nothing. CPU storage is either owned or a range of a memory map: frozen
//! weights loaded from safetensors are used straight from the page cache, never copied whole.

use std::any::Any;
use std::sync::Arc;

use half::{bf16, f16};

use crate::backend::{Backend, CPU};
pub use crate::dtype::Element;
use crate::{DType, Error, Result, Shape};

/// Memory owned by a non-CPU backend (CUDA, wgpu). The backend downcasts through `as_any`.
pub trait DeviceStorage: Send + Sync {
    /// The backend that owns this memory. Backends live for the whole process (one per device,
    /// created once), so tensors can hand out a `'static` reference.
    fn backend(&self) -> &'static dyn Backend;
    /// For the owning backend to reach its concrete buffer type.
    fn as_any(&self) -> &dyn Any;
}

/// Host memory: owned vectors, or a byte range of a read-only memory map.
pub enum CpuData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    I32(Vec<i32>),
    /// Owned bytes of a block-quantized tensor.
    Bytes(Vec<u8>),
    /// `len` bytes at `start` of `map`; the dtype lives in the tensor.
    Mapped {
        map: Arc<memmap2::Mmap>,
        start: usize,
        len: usize,
    },
}

/// Where a tensor's elements live.
pub enum Storage {
    Cpu(CpuData),
    Device(Box<dyn DeviceStorage>),
}

impl CpuData {
    fn bytes(&self) -> &[u8] {
        match self {
            CpuData::F32(v) => bytemuck::cast_slice(v),
            CpuData::F64(v) => bytemuck::cast_slice(v),
            CpuData::F16(v) => bytemuck::cast_slice(v),
            CpuData::BF16(v) => bytemuck::cast_slice(v),
            CpuData::I32(v) => bytemuck::cast_slice(v),
            CpuData::Bytes(v) => v,
            CpuData::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

/// An n-dimensional array on one backend. Cloning is cheap (shared storage).
#[derive(Clone)]
pub struct Tensor {
    storage: Arc<Storage>,
    shape: Shape,
    dtype: DType,
    /// Offset of the first element, in elements, into the storage.
    offset: usize,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?}, {:?}, {})", self.shape, self.dtype, self.backend().name())
    }
}

fn owned<T: Element>(v: Vec<T>) -> CpuData {
    // The match is on a compile-time constant; each arm reinterprets a Vec of the same type.
    let any: Box<dyn Any> = Box::new(v);
    match T::DTYPE {
        DType::F32 => CpuData::F32(*any.downcast().expect("dtype tag matches type")),
        DType::F64 => CpuData::F64(*any.downcast().expect("dtype tag matches type")),
        DType::F16 => CpuData::F16(*any.downcast().expect("dtype tag matches type")),
        DType::BF16 => CpuData::BF16(*any.downcast().expect("dtype tag matches type")),
        DType::I32 => CpuData::I32(*any.downcast().expect("dtype tag matches type")),
        DType::Quant(_) => unreachable!("no Rust element type is a block type"),
    }
}

impl Tensor {
    /// A CPU tensor owning `data`.
    pub fn from_vec<T: Element>(data: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != data.len() {
            return Err(Error::shape("from_vec", format!("{} elements for shape {:?}", data.len(), shape)));
        }
        Ok(Tensor { storage: Arc::new(Storage::Cpu(owned(data))), shape, dtype: T::DTYPE, offset: 0 })
    }

    /// A CPU tensor over `len` bytes of a memory map, without copying. Falls back to a copy when
    /// the bytes are not aligned for the dtype (safetensors does not promise alignment).
    pub fn from_mmap(map: Arc<memmap2::Mmap>, start: usize, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let len = dtype.bytes(shape.numel());
        let end = start
            .checked_add(len)
            .filter(|&e| e <= map.len())
            .ok_or_else(|| Error::shape("from_mmap", format!("bytes {start}+{len} beyond map of {}", map.len())))?;
        let bytes = &map[start..end];
        if (bytes.as_ptr() as usize).is_multiple_of(dtype.size()) {
            let storage = Storage::Cpu(CpuData::Mapped { map: map.clone(), start, len });
            return Ok(Tensor { storage: Arc::new(storage), shape, dtype, offset: 0 });
        }
        let data = match dtype {
            DType::F32 => owned(bytemuck::pod_collect_to_vec::<u8, f32>(bytes)),
            DType::F64 => owned(bytemuck::pod_collect_to_vec::<u8, f64>(bytes)),
            DType::F16 => owned(bytemuck::pod_collect_to_vec::<u8, f16>(bytes)),
            DType::BF16 => owned(bytemuck::pod_collect_to_vec::<u8, bf16>(bytes)),
            DType::I32 => owned(bytemuck::pod_collect_to_vec::<u8, i32>(bytes)),
            DType::Quant(_) => CpuData::Bytes(bytes.to_vec()),
        };
        Ok(Tensor { storage: Arc::new(Storage::Cpu(data)), shape, dtype, offset: 0 })
    }

    /// A CPU tensor of block-quantized `bytes` (e.g. rows reordered at load).
    pub fn from_quant_bytes(bytes: Vec<u8>, ty: crate::quant::GgmlType, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        let dtype = DType::Quant(ty);
        if shape.last() % ty.block().0 != 0 || bytes.len() != dtype.bytes(shape.numel()) {
            return Err(Error::shape(
                "from_quant_bytes",
                format!("{} bytes of {} for {:?}", bytes.len(), ty.name(), shape),
            ));
        }
        Ok(Tensor { storage: Arc::new(Storage::Cpu(CpuData::Bytes(bytes))), shape, dtype, offset: 0 })
    }

    /// The bytes of this view (CPU only).
    pub fn raw_bytes(&self) -> Result<&[u8]> {
        match &*self.storage {
            Storage::Cpu(d) => {
                let (a, n) = (self.dtype.bytes(self.offset), self.dtype.bytes(self.numel()));
                Ok(&d.bytes()[a..a + n])
            }
            Storage::Device(_) => Err(Error::Msg("raw_bytes on a device tensor: call to_cpu".into())),
        }
    }

    /// Zeros on the CPU.
    pub fn zeros(shape: impl Into<Shape>, dtype: DType) -> Tensor {
        let shape = shape.into();
        let n = shape.numel();
        let data = match dtype {
            DType::F32 => CpuData::F32(vec![0.0; n]),
            DType::F64 => CpuData::F64(vec![0.0; n]),
            DType::F16 => CpuData::F16(vec![f16::ZERO; n]),
            DType::BF16 => CpuData::BF16(vec![bf16::ZERO; n]),
            DType::I32 => CpuData::I32(vec![0; n]),
            DType::Quant(_) => CpuData::Bytes(vec![0; dtype.bytes(n)]),
        };
        Tensor { storage: Arc::new(Storage::Cpu(data)), shape, dtype, offset: 0 }
    }

    /// Wraps device memory.
    pub fn from_device(s: Box<dyn DeviceStorage>, shape: Shape, dtype: DType) -> Tensor {
        Tensor { storage: Arc::new(Storage::Device(s)), shape, dtype, offset: 0 }
    }

    /// `f` applied to every element of an f32 CPU tensor (a copy); other tensors are returned
    /// unchanged.
    pub fn map_f32(&self, f: impl Fn(f32) -> f32) -> Tensor {
        match self.as_slice::<f32>() {
            Ok(v) => Tensor::from_vec(v.iter().map(|&x| f(x)).collect::<Vec<f32>>(), self.shape.clone())
                .unwrap_or_else(|_| self.clone()),
            Err(_) => self.clone(),
        }
    }

    /// Where this tensor's elements start in its storage, in elements (views from `narrow0`).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }
    /// Dimensions.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.numel()
    }
    /// The storage, for backends.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// True when this tensor lives in a memory map (used to check that loading copies nothing).
    pub fn is_mapped(&self) -> bool {
        matches!(&*self.storage, Storage::Cpu(CpuData::Mapped { .. }))
    }

    /// The backend that owns this tensor's memory.
    pub fn backend(&self) -> &'static dyn Backend {
        match &*self.storage {
            Storage::Cpu(_) => &CPU,
            Storage::Device(d) => d.backend(),
        }
    }

    /// Same elements, new shape (a view).
    pub fn reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.numel() != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} to {:?}", self.shape, shape)));
        }
        Ok(Tensor { shape, ..self.clone() })
    }

    /// Rows `start..start+len` of the first dimension (a view).
    pub fn narrow0(&self, start: usize, len: usize) -> Result<Tensor> {
        let d0 = *self.dims().first().ok_or_else(|| Error::shape("narrow0", "scalar"))?;
        if start + len > d0 {
            return Err(Error::shape("narrow0", format!("{start}+{len} > {d0}")));
        }
        let row = self.numel() / d0.max(1);
        let mut dims = self.dims().to_vec();
        dims[0] = len;
        Ok(Tensor {
            storage: self.storage.clone(),
            shape: Shape(dims),
            dtype: self.dtype,
            offset: self.offset + start * row,
        })
    }

    /// The elements as a typed slice (CPU only, dtype must match).
    pub fn as_slice<T: Element>(&self) -> Result<&[T]> {
        if T::DTYPE != self.dtype {
            return Err(Error::Msg(format!("as_slice: tensor is {:?}, asked {:?}", self.dtype, T::DTYPE)));
        }
        match &*self.storage {
            Storage::Cpu(d) => {
                let all: &[T] =
                    bytemuck::try_cast_slice(d.bytes()).map_err(|e| Error::Msg(format!("as_slice: {e}")))?;
                Ok(&all[self.offset..self.offset + self.numel()])
            }
            Storage::Device(_) => Err(Error::Msg("as_slice on a device tensor: call to_cpu".into())),
        }
    }

    /// Mutable elements (CPU only). Copies the storage first when it is shared or mapped, so
    /// views of the old value never change under a reader.
    pub fn as_mut_slice<T: Element>(&mut self) -> Result<&mut [T]> {
        if T::DTYPE != self.dtype {
            return Err(Error::Msg(format!("as_mut_slice: tensor is {:?}", self.dtype)));
        }
        let whole = self.offset == 0
            && matches!(&*self.storage, Storage::Cpu(d) if d.bytes().len() == self.numel() * self.dtype.size());
        let unique_owned = whole && Arc::get_mut(&mut self.storage).is_some() && !self.is_mapped();
        if !unique_owned {
            let copy = self.as_slice::<T>()?.to_vec();
            *self = Tensor::from_vec(copy, self.shape.clone())?;
        }
        let Some(Storage::Cpu(d)) = Arc::get_mut(&mut self.storage) else {
            return Err(Error::Msg("as_mut_slice: storage not unique".into()));
        };
        let bytes: &mut [u8] = match d {
            CpuData::F32(v) => bytemuck::cast_slice_mut(v),
            CpuData::F64(v) => bytemuck::cast_slice_mut(v),
            CpuData::F16(v) => bytemuck::cast_slice_mut(v),
            CpuData::BF16(v) => bytemuck::cast_slice_mut(v),
            CpuData::I32(v) => bytemuck::cast_slice_mut(v),
            CpuData::Bytes(v) => v,
            CpuData::Mapped { .. } => unreachable!("copied above"),
        };
        bytemuck::try_cast_slice_mut(bytes).map_err(|e| Error::Msg(format!("as_mut_slice: {e}")))
    }

    /// Copies to a CPU f32 vector, converting the dtype.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        let t = self.to_cpu()?;
        Ok(match t.dtype {
            DType::F32 => t.as_slice::<f32>()?.to_vec(),
            DType::F64 => t.as_slice::<f64>()?.iter().map(|&x| x as f32).collect(),
            DType::F16 => t.as_slice::<f16>()?.iter().map(|x| x.to_f32()).collect(),
            DType::BF16 => t.as_slice::<bf16>()?.iter().map(|x| x.to_f32()).collect(),
            DType::I32 => t.as_slice::<i32>()?.iter().map(|&x| x as f32).collect(),
            DType::Quant(ty) => {
                let mut out = vec![0f32; t.numel()];
                crate::quant::dequantize(ty, t.raw_bytes()?, &mut out)?;
                out
            }
        })
    }

    /// Copies to a CPU f64 vector, converting the dtype.
    pub fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let t = self.to_cpu()?;
        Ok(match t.dtype {
            DType::F64 => t.as_slice::<f64>()?.to_vec(),
            DType::F32 => t.as_slice::<f32>()?.iter().map(|&x| x as f64).collect(),
            DType::F16 => t.as_slice::<f16>()?.iter().map(|x| x.to_f64()).collect(),
            DType::BF16 => t.as_slice::<bf16>()?.iter().map(|x| x.to_f64()).collect(),
            DType::I32 => t.as_slice::<i32>()?.iter().map(|&x| x as f64).collect(),
            DType::Quant(_) => t.to_vec_f32()?.into_iter().map(|x| x as f64).collect(),
        })
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f64> {
        let v = self.to_vec_f64()?;
        if v.len() != 1 {
            return Err(Error::shape("item", format!("{} elements", v.len())));
        }
        Ok(v[0])
    }

    /// This tensor on the CPU (itself when already there).
    pub fn to_cpu(&self) -> Result<Tensor> {
        match &*self.storage {
            Storage::Cpu(_) => Ok(self.clone()),
            Storage::Device(_) => self.backend().to_cpu(self),
        }
    }

    /// Converts the element type (on the owning backend).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype {
            return Ok(self.clone());
        }
        self.backend().cast(self, dtype)
    }
}
