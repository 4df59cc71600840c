//! kiln's `Backend` on the CUDA kernels of `kernels/*.cu`, written once over [`Exec`]: the same
//! code runs the kernels on a GPU or in the CPU emulation (`cuda-emu`).
//!
//! Device tensors are f32, i32, 16-bit frozen weights (kept in their two bytes; the kernels
//! widen them), or 16-bit activations on the mixed-precision path ([`env_act`]: the activation
//! ops read and write them in their type and compute in f32). Ops whose kernels have not landed answer [`Support::No`] with the issue that
//! brings them, so the parity suite lists them as skipped, never as passed.
//!
//! One file per op family (`kernels/README.md`); `launch.rs` holds what they share. A device is
//! opened once and serves every GEMM variant, one [`KernelBackend`] each
//! ([`KernelBackend::with_gemm`]).

mod attention;
mod elementwise;
mod embedding;
mod glu;
mod launch;
mod loss;
mod matmul;
mod norm;
mod optim;
mod rope;

use std::sync::{Arc, OnceLock};

use kiln_core::backend::{Backend, MemoryOps, Op, Support};
use kiln_core::tensor::{DeviceStorage, Storage};
use kiln_core::{DType, Error, Result, Shape, Tensor};

use crate::GemmVariant;
use crate::exec::{DevBuf, Exec};

/// The backend over one [`Exec`], running one GEMM variant. Every device holds one instance per
/// variant, sharing the [`Exec`] (memory, modules, pools), in [`DEVICES`] (tensors hand out a
/// `'static` reference to their backend).
pub struct KernelBackend {
    pub exec: Arc<dyn Exec>,
    slot: usize,
    gemm: GemmVariant,
}

/// A device tensor's memory, and the variant of the backend that made it (the ops a tensor
/// leads, `t.backend().op(..)`, stay on that variant).
pub(crate) struct CudaBuf {
    buf: DevBuf,
    slot: usize,
    gemm: GemmVariant,
}

impl DeviceStorage for CudaBuf {
    fn backend(&self) -> &'static dyn Backend {
        device(self.slot).get(self.gemm)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// One opened device: its backend under every GEMM variant, and the variant it opened with.
struct Device {
    by_gemm: [KernelBackend; GemmVariant::ALL.len()],
    default: GemmVariant,
}

impl Device {
    fn get(&self, v: GemmVariant) -> &KernelBackend {
        &self.by_gemm[v as usize]
    }
}

/// Slot 0: the emulation; 1: the emulation with its race checker on; 2..: GPUs by ordinal + 2.
static DEVICES: [OnceLock<Device>; 18] = [const { OnceLock::new() }; 18];

/// The slot of GPU `ordinal`.
pub(crate) fn gpu_slot(ordinal: usize) -> usize {
    2 + ordinal
}

fn device(i: usize) -> &'static Device {
    // A CudaBuf's device was opened before the buffer existed.
    DEVICES[i].get().unwrap_or_else(|| unreachable!("device slot {i} is empty"))
}

/// `KILN_CUDA_GEMM`, read once: the variant backends open with, or None when it is unset (each
/// device then picks its own, [`GemmVariant::default_for`]).
pub fn env_gemm() -> std::result::Result<Option<GemmVariant>, String> {
    static ENV: OnceLock<std::result::Result<Option<GemmVariant>, String>> = OnceLock::new();
    ENV.get_or_init(|| match std::env::var("KILN_CUDA_GEMM") {
        Err(_) => Ok(None),
        Ok(s) => s.parse().map(Some).map_err(|e| format!("KILN_CUDA_GEMM: {e}")),
    })
    .clone()
}

/// `KILN_CUDA_ACT`, read once: the type a model's activations travel in between the CUDA kernels
/// (`bf16` where unset: mixed precision; `f16`; `f32` for the all-f32 path).
pub fn env_act() -> std::result::Result<DType, String> {
    static ENV: OnceLock<std::result::Result<DType, String>> = OnceLock::new();
    ENV.get_or_init(|| match std::env::var("KILN_CUDA_ACT").as_deref() {
        Err(_) | Ok("bf16") => Ok(DType::BF16),
        Ok("f16") => Ok(DType::F16),
        Ok("f32") => Ok(DType::F32),
        Ok(s) => Err(format!("KILN_CUDA_ACT: {s:?} is not one of bf16, f16, f32")),
    })
    .clone()
}

/// Opens (once) the device of a slot, its default variant chosen by `pick` from the opened
/// device; a device already open keeps the variant it opened with.
pub(crate) fn install(
    i: usize,
    pick: impl FnOnce(&dyn Exec) -> GemmVariant,
    make: impl FnOnce() -> Result<Box<dyn Exec>>,
) -> Result<&'static KernelBackend> {
    let s = DEVICES.get(i).ok_or_else(|| Error::Msg(format!("cuda: device slot {i} is out of range")))?;
    if let Some(d) = s.get() {
        return Ok(d.get(d.default));
    }
    let exec: Arc<dyn Exec> = Arc::from(make()?);
    let default = pick(exec.as_ref());
    let d = s.get_or_init(|| Device {
        by_gemm: GemmVariant::ALL.map(|gemm| KernelBackend { exec: exec.clone(), slot: i, gemm }),
        default,
    });
    Ok(d.get(d.default))
}

/// The emulated CUDA backend (the process's one), under `KILN_CUDA_GEMM`'s variant (v6 where it
/// is unset; an unknown value is reported by [`crate::open_emu`], and here said and ignored).
#[cfg(feature = "cuda-emu")]
pub fn emu() -> &'static KernelBackend {
    emu_slot(0, false)
}

/// A second emulated device whose every launch runs the race checker (kept apart so the tests
/// that check races run beside the others without switching a shared setting).
#[cfg(feature = "cuda-emu")]
pub fn emu_racecheck() -> &'static KernelBackend {
    emu_slot(1, true)
}

#[cfg(feature = "cuda-emu")]
fn emu_slot(i: usize, racecheck: bool) -> &'static KernelBackend {
    let gemm = env_gemm()
        .unwrap_or_else(|e| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("warning: {e}; running {}", GemmVariant::default()));
            None
        })
        .unwrap_or_default();
    let make = || {
        let ex = crate::emu::EmuExec::default();
        if racecheck {
            ex.set_racecheck(true);
        }
        Ok(Box::new(ex) as Box<dyn Exec>)
    };
    match install(i, |_| gemm, make) {
        Ok(b) => b,
        Err(_) => unreachable!("the emulation backend cannot fail to open"),
    }
}

/// A tensor's memory as kernels address it: borrowed when it already lives on this backend,
/// uploaded when it is on the CPU.
pub(crate) enum Held<'a> {
    Borrowed(&'a DevBuf, usize),
    Owned(DevBuf),
}

impl Held<'_> {
    /// The address of the tensor's first element.
    pub(crate) fn ptr(&self) -> u64 {
        match self {
            Held::Borrowed(b, off) => b.ptr + *off as u64,
            Held::Owned(b) => b.ptr,
        }
    }
}

/// Bytes per element on the device.
fn dev_size(d: DType) -> Result<usize> {
    match d {
        DType::F32 | DType::I32 => Ok(4),
        DType::F16 | DType::BF16 => Ok(2),
        d => Err(Error::Msg(format!("cuda: {} tensors are not supported on the device", d.name()))),
    }
}

impl KernelBackend {
    /// The GEMM variant this instance runs.
    pub fn gemm(&self) -> GemmVariant {
        self.gemm
    }

    /// This device's backend running GEMM variant `v` (same memory, modules and pools; tensors of
    /// either are used by both).
    pub fn with_gemm(&self, v: GemmVariant) -> &'static KernelBackend {
        device(self.slot).get(v)
    }

    /// Whether this device runs variant `v` itself (v5 needs wgmma; elsewhere it runs v4).
    pub fn runs(&self, v: GemmVariant) -> bool {
        !v.needs_wgmma() || self.exec.has_wgmma()
    }

    pub(crate) fn held<'a>(&self, t: &'a Tensor) -> Result<Held<'a>> {
        match t.storage() {
            Storage::Device(d) => {
                let b = d
                    .as_any()
                    .downcast_ref::<CudaBuf>()
                    .filter(|b| b.slot == self.slot)
                    .ok_or_else(|| Error::Msg(format!("{}: a tensor of another backend", self.exec.name())))?;
                let off = match t.dtype() {
                    // Blocks are not split: a quantized tensor is used whole.
                    DType::Quant(_) if t.offset() == 0 => 0,
                    DType::Quant(_) => return Err(Error::Msg("cuda: a view into a block-quantized tensor".into())),
                    d => t.offset() * dev_size(d)?,
                };
                Ok(Held::Borrowed(&b.buf, off))
            }
            Storage::Cpu(_) => Ok(Held::Owned(self.upload_buf(t)?)),
        }
    }

    /// The device bytes of a CPU tensor (f64 narrowed to f32).
    fn upload_buf(&self, t: &Tensor) -> Result<DevBuf> {
        let bytes: Vec<u8> = match t.dtype() {
            DType::F32 => bytemuck::cast_slice(t.as_slice::<f32>()?).to_vec(),
            DType::I32 => bytemuck::cast_slice(t.as_slice::<i32>()?).to_vec(),
            DType::F64 => bytemuck::cast_slice(&t.to_vec_f32()?).to_vec(),
            DType::F16 => bytemuck::cast_slice(t.as_slice::<half::f16>()?).to_vec(),
            DType::BF16 => bytemuck::cast_slice(t.as_slice::<half::bf16>()?).to_vec(),
            DType::Quant(q) if crate::kernels::quant_kernel_id(q).is_some() => t.raw_bytes()?.to_vec(),
            DType::Quant(q) => {
                return Err(Error::Msg(format!("{}: {} weights have no CUDA kernel", self.exec.name(), q.name())));
            }
        };
        self.exec.upload(&bytes)
    }

    /// Wraps device memory as a tensor of this backend.
    pub(crate) fn wrap(&self, buf: DevBuf, shape: impl Into<Shape>, dtype: DType) -> Tensor {
        Tensor::from_device(Box::new(CudaBuf { buf, slot: self.slot, gemm: self.gemm }), shape.into(), dtype)
    }

    /// An output tensor's memory (poisoned in the emulation until a kernel writes it).
    pub(crate) fn alloc(&self, n: usize, dtype: DType) -> Result<DevBuf> {
        self.exec.alloc(n * dev_size(dtype)?)
    }
}

/// An activation's element type and its kernels' suffix: f32 (f64 narrowed to it), or bf16/f16
/// on the mixed-precision path (read and written in 16 bits, computed in f32).
pub(crate) fn act_type(op: &str, t: &Tensor) -> Result<(DType, &'static str)> {
    match t.dtype() {
        DType::F32 | DType::F64 => Ok((DType::F32, "f32")),
        DType::BF16 => Ok((DType::BF16, "bf16")),
        DType::F16 => Ok((DType::F16, "f16")),
        d => Err(Error::Msg(format!("cuda {op}: {} input where an f32, bf16 or f16 activation is expected", d.name()))),
    }
}

/// [`act_type`] of `a`, with every one of `rest` of the same type (an op's activations travel
/// together: one kernel reads them all in one type).
pub(crate) fn act_types(op: &str, a: &Tensor, rest: &[&Tensor]) -> Result<(DType, &'static str)> {
    let t = act_type(op, a)?;
    for r in rest {
        if act_type(op, r)?.0 != t.0 {
            return Err(Error::Msg(format!(
                "cuda {op}: a {} input beside a {} one (the activations of one op share a type)",
                r.dtype().name(),
                a.dtype().name()
            )));
        }
    }
    Ok(t)
}

/// f32 only (trainable parameters, their gradients, optimizer state).
pub(crate) fn want_f32(op: &str, t: &Tensor) -> Result<()> {
    if t.dtype() == DType::F32 || t.dtype() == DType::F64 {
        Ok(())
    } else {
        Err(Error::Msg(format!("cuda {op}: {} input where f32 is expected", t.dtype().name())))
    }
}

impl MemoryOps for KernelBackend {
    fn to_cpu(&self, t: &Tensor) -> Result<Tensor> {
        let Storage::Device(_) = t.storage() else { return Ok(t.clone()) };
        let Held::Borrowed(b, off) = self.held(t)? else { unreachable!("a device tensor is borrowed") };
        let len = match t.dtype() {
            DType::Quant(_) => t.dtype().bytes(t.numel()),
            d => t.numel() * dev_size(d)?,
        };
        let bytes = self.exec.download(b, off, len)?;
        let shape = t.shape().clone();
        match t.dtype() {
            DType::Quant(q) => Tensor::from_quant_bytes(bytes, q, shape),
            DType::F32 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes), shape),
            DType::I32 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, i32>(&bytes), shape),
            DType::F16 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::f16>(&bytes), shape),
            DType::BF16 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::bf16>(&bytes), shape),
            d => Err(Error::Msg(format!("cuda to_cpu: {} tensor", d.name()))),
        }
    }
    fn upload(&self, t: &Tensor) -> Result<Tensor> {
        if let Storage::Device(d) = t.storage() {
            let mine = d.as_any().downcast_ref::<CudaBuf>().is_some_and(|b| b.slot == self.slot);
            return if mine { Ok(t.clone()) } else { self.upload(&t.to_cpu()?) };
        }
        let dtype = if t.dtype() == DType::F64 { DType::F32 } else { t.dtype() };
        Ok(self.wrap(self.upload_buf(t)?, t.shape().clone(), dtype))
    }
    fn cast(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        elementwise::cast(self, t, dtype)
    }
    fn zeros(&self, shape: &Shape, dtype: DType) -> Result<Tensor> {
        let n = shape.numel();
        Ok(self.wrap(self.exec.alloc_zeroed(n * dev_size(dtype)?)?, shape.clone(), dtype))
    }
}

impl Backend for KernelBackend {
    fn name(&self) -> &'static str {
        self.exec.name()
    }
    fn counters(&self) -> Option<kiln_core::backend::DeviceCounters> {
        Some(self.exec.counters())
    }
    fn loss_chunk_rows(&self, vocab: usize) -> usize {
        loss::loss_chunk_rows(vocab)
    }
    fn cross_entropy_chunk(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        grad: Option<f64>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        loss::cross_entropy_chunk(self, logits, targets, grad)
    }
    fn loss_sum(&self, acc: Option<&Tensor>, nll: &Tensor, s: f64) -> Result<Tensor> {
        loss::loss_sum(self, acc, nll, s)
    }
    fn scale_by(&self, a: &Tensor, s: &Tensor) -> Result<Tensor> {
        match elementwise::scale_by(self, a, s)? {
            Some(t) => Ok(t),
            // Other types: the seed read on the host (the backward seeds the models make are f32).
            None => kiln_core::backend::ElementwiseOps::scale(self, a, s.item()?),
        }
    }
    fn concat0(&self, parts: &[Tensor]) -> Result<Tensor> {
        elementwise::concat0(self, parts)
    }
    fn activation_dtype(&self) -> DType {
        env_act().unwrap_or_else(|e| {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("warning: {e}; activations in bf16"));
            DType::BF16
        })
    }
    fn supports(&self, op: Op, dtype: DType) -> Support {
        match (op, dtype) {
            (Op::Linear | Op::Cast | Op::Embedding, DType::Quant(q))
                if crate::kernels::quant_kernel_id(q).is_some() =>
            {
                Support::Yes
            }
            (_, DType::Quant(q)) => Support::No(format!("no CUDA kernel for {} weights", q.name())),
            (Op::Linear | Op::Embedding | Op::Cast, DType::F32 | DType::BF16 | DType::F16) => Support::Yes,
            // The mixed-precision path: 16-bit activations in and out, f32 arithmetic.
            (
                Op::Add | Op::Scale | Op::Softcap | Op::SwiGlu | Op::GeGlu | Op::RmsNorm | Op::Rope | Op::Attention,
                DType::BF16 | DType::F16,
            ) => Support::Yes,
            (_, DType::F32) => Support::Yes,
            (op, d) => Support::No(format!("no CUDA kernel for {op:?} at {} yet", d.name())),
        }
    }
    fn compute_dtype(&self, op: Op, dtype: DType) -> DType {
        let tc = self.gemm.tensor_cores();
        match (op, dtype) {
            // The tensor-core GEMMs (kernels/matmul.cu v3–v6) round A (and the fused LoRA terms)
            // to B's 16-bit type, and take block-quantized weights decoded and rounded to bf16.
            // (A GEMV of a few rows, and products whose B is f32, stay f32 there too.)
            (Op::Linear | Op::Matmul, DType::BF16 | DType::F16) if tc => dtype,
            (Op::Linear | Op::Matmul, DType::Quant(_)) if tc => DType::BF16,
            // Attention v2 rounds Q, K, V and P to bf16 for the tensor cores.
            (Op::Attention, _) if tc => DType::BF16,
            // 16-bit activations: the outputs (and the gradients) are rounded to their type.
            (
                Op::Add | Op::Scale | Op::Softcap | Op::SwiGlu | Op::GeGlu | Op::RmsNorm | Op::Rope | Op::Attention,
                DType::BF16 | DType::F16,
            ) => dtype,
            // Everything else is f32 arithmetic: v1/v2 widen 16-bit and block-quantized weights
            // exactly in the loader (`to_f32`, `kiln_decode`), lookups and casts are exact.
            (_, DType::BF16 | DType::F16 | DType::Quant(_)) => DType::F32,
            (_, d) => d,
        }
    }
    fn adamw_multi(
        &self,
        items: &mut [kiln_core::backend::AdamWItem<'_>],
        hp: kiln_core::backend::AdamWStep,
        grad_scale: f64,
    ) -> Result<()> {
        optim::adamw_multi(self, items, hp, grad_scale)
    }
    fn sum_squares_multi(&self, ts: &[&Tensor]) -> Result<f64> {
        optim::sum_squares_multi(self, ts)
    }
    fn sum_squares_multi_and(&self, ts: &[&Tensor], scalars: &[&Tensor]) -> Result<(f64, Vec<f64>)> {
        optim::sum_squares_multi_and(self, ts, scalars)
    }
    fn has_adamw8(&self) -> bool {
        true
    }
    fn adamw8_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        state: &mut kiln_core::backend::Adam8State,
        hp: kiln_core::backend::AdamWStep,
        grad_scale: f64,
    ) -> Result<()> {
        optim::adamw8_step(self, param, grad, state, hp, grad_scale)
    }
}
