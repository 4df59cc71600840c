//! The CPU backend: the reference every other backend is checked against, and the default
//! where no GPU is present. Clear loops, f32 accumulation (f64 when the inputs are f64, which the
//! gradient checks use), rayon across rows, and a packed SIMD GEMM for the matrix products.

mod attention;
mod elementwise;
mod embedding;
mod glu;
mod loss;
mod matmul;
mod norm;
mod optim;
mod qmatmul;
mod rope;

use std::borrow::Cow;
use std::iter::Sum;
use std::ops::{AddAssign, MulAssign, SubAssign};

use half::{bf16, f16};
use rayon::prelude::*;

use super::{Backend, MemoryOps, Op, Support};
use crate::tensor::Element;
use crate::{DType, Error, Result, Shape, Tensor};

pub use matmul::gemm;

/// The CPU backend (stateless; threads come from rayon's global pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuBackend;

/// The one CPU backend instance that CPU tensors point to.
pub static CPU: CpuBackend = CpuBackend;

/// Floating types the CPU kernels are written over.
pub trait Real:
    Element + num_traits::Float + Sum + AddAssign + SubAssign + MulAssign + Default + std::fmt::Debug
{
}
impl Real for f32 {}
impl Real for f64 {}

/// The compute precision for a set of inputs: f64 if any is f64, else f32.
pub(crate) fn prec(ts: &[&Tensor]) -> DType {
    if ts.iter().any(|t| t.dtype() == DType::F64) { DType::F64 } else { DType::F32 }
}

/// The elements of `t` as `T`, borrowed when the dtype already matches.
pub(crate) fn read<T: Real>(t: &Tensor) -> Result<Cow<'_, [T]>> {
    if t.dtype() == T::DTYPE {
        return Ok(Cow::Borrowed(t.as_slice::<T>()?));
    }
    // Widening frozen f16/bf16 weights happens on every matmul: done in parallel, through f32
    // (exact for both), so it costs a memory pass rather than a serial loop.
    let conv = |x: f32| T::from_f64(x as f64);
    Ok(Cow::Owned(match t.dtype() {
        DType::F32 => t.as_slice::<f32>()?.par_iter().map(|&x| conv(x)).collect(),
        DType::F64 => t.as_slice::<f64>()?.par_iter().map(|&x| T::from_f64(x)).collect(),
        DType::F16 => t.as_slice::<f16>()?.par_iter().map(|x| conv(x.to_f32())).collect(),
        DType::BF16 => t.as_slice::<bf16>()?.par_iter().map(|x| conv(x.to_f32())).collect(),
        DType::I32 => t.as_slice::<i32>()?.par_iter().map(|&x| T::from_f64(x as f64)).collect(),
        // Frozen block-quantized weights: dequantized here, inside the op, in parallel over
        // rows of blocks; never stored dequantized.
        DType::Quant(ty) => {
            let bytes = t.raw_bytes()?;
            let (bs, ts) = ty.block();
            let chunk = 64;
            let mut out = vec![T::zero(); t.numel()];
            out.par_chunks_mut(bs * chunk).zip(bytes.par_chunks(ts * chunk)).try_for_each(|(o, b)| {
                let mut tmp = vec![0f32; o.len()];
                crate::quant::dequantize(ty, b, &mut tmp)?;
                o.iter_mut().zip(tmp).for_each(|(o, x)| *o = conv(x));
                Ok::<(), crate::Error>(())
            })?;
            out
        }
    }))
}

/// Integer elements (ids, positions, targets, segments).
pub(crate) fn read_i32(t: &Tensor) -> Result<&[i32]> {
    t.as_slice::<i32>()
}

/// Wraps a result vector.
pub(crate) fn out<T: Real>(v: Vec<T>, shape: impl Into<Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape)
}

/// Runs `$f::<f32>` or `$f::<f64>` by the inputs' precision.
macro_rules! by_prec {
    ($p:expr, $f:ident ( $($a:expr),* $(,)? )) => {
        match $p {
            $crate::DType::F64 => $f::<f64>($($a),*),
            _ => $f::<f32>($($a),*),
        }
    };
}
pub(crate) use by_prec;

impl MemoryOps for CpuBackend {
    fn to_cpu(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        let v = t.to_vec_f64()?;
        let shape = t.shape().clone();
        match dtype {
            DType::F32 => Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), shape),
            DType::F64 => Tensor::from_vec(v, shape),
            DType::F16 => Tensor::from_vec(v.iter().map(|&x| crate::dtype::round_f16(x)).collect::<Vec<_>>(), shape),
            DType::BF16 => Tensor::from_vec(v.iter().map(|&x| crate::dtype::round_bf16(x)).collect::<Vec<_>>(), shape),
            DType::I32 => Tensor::from_vec(v.iter().map(|&x| x as i32).collect::<Vec<_>>(), shape),
            DType::Quant(ty) => {
                let q = crate::quant::quantize(ty, &v.iter().map(|&x| x as f32).collect::<Vec<_>>())?;
                Tensor::from_quant_bytes(q, ty, shape)
            }
        }
    }
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Tensor> {
        Ok(Tensor::zeros(shape.clone(), dtype))
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn supports(&self, op: Op, dtype: DType) -> Support {
        match (op, dtype) {
            (Op::Cast, _) => Support::Yes,
            (_, DType::I32) => Support::No("integer tensors are inputs only".into()),
            (Op::Matmul | Op::Linear | Op::Embedding, DType::Quant(_)) => Support::Yes,
            (_, DType::Quant(t)) => Support::No(format!("{} is a storage format for frozen weights", t.name())),
            (Op::AdamW, DType::F16 | DType::BF16) => Support::No("optimizer state and trainable params are f32".into()),
            _ => Support::Yes,
        }
    }
}

/// Checks that two shapes are equal.
pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("{:?} vs {:?}", a.shape(), b.shape())));
    }
    Ok(())
}
