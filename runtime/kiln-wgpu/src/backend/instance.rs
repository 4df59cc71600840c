//! The wgpu backend's instances: one per choice of kernels (GEMM variant, precision, subgroup
//! reductions; for tests only, a deliberate GEMM fault), all `'static` and sharing the
//! process's one device, its compiled pipelines and its buffer pool.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use kiln_core::backend::{Backend, Op, Support};
use kiln_core::{DType, Error, Result};

use super::quant;
use crate::runtime::{Device, device};
use crate::variant::{GemmFault, GemmVariant, Precision};

/// The wgpu backend: the process's one device (see [`crate::runtime::device`]) with a choice
/// of kernels. Instances differ only in these fields and share the device, its compiled
/// pipelines and its buffer pool; a device tensor remembers the instance that made it, so the
/// ops on it run that instance's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgpuBackend {
    gemm: GemmVariant,
    precision: Precision,
    subgroups: bool,
    /// A deliberate GEMM bug (tests only, [`WgpuBackend::with_fault`]); `None` everywhere else.
    fault: Option<GemmFault>,
}

/// Every instance, so each is `'static` (device tensors hand out `&'static dyn Backend`): the
/// first 8 are the kernel choices, the last 8 the same with [`GemmFault::DropLastTile`].
static INSTANCES: [WgpuBackend; 16] = {
    let mut all = [instance(0); 16];
    let mut i = 1;
    while i < 16 {
        all[i] = instance(i);
        i += 1;
    }
    all
};

/// See [`WgpuBackend::dropped_tiles`].
static DROPPED_TILES: AtomicUsize = AtomicUsize::new(0);

const fn instance(i: usize) -> WgpuBackend {
    WgpuBackend {
        gemm: GemmVariant::ALL[(i / 4) % 2],
        precision: Precision::ALL[(i / 2) % 2],
        subgroups: i % 2 == 1,
        fault: if i >= 8 { Some(GemmFault::DropLastTile) } else { None },
    }
}

impl WgpuBackend {
    /// The backend with the kernels chosen by the environment, read once: `KILN_WGPU_GEMM`
    /// (v2 or v3, default v3) and `KILN_WGPU_PRECISION` (f32 or f16, default f32), with
    /// subgroup reductions where the adapter has them. Fails when no adapter opens or a
    /// variable names no choice.
    pub fn open() -> Result<&'static WgpuBackend> {
        static DEFAULT: OnceLock<std::result::Result<&'static WgpuBackend, String>> = OnceLock::new();
        device()?;
        let from_env = || -> Result<&'static WgpuBackend> {
            let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let gemm = var("KILN_WGPU_GEMM")
                .map_or(Ok(GemmVariant::V3), |v| v.parse().map_err(|e| Error::Msg(format!("KILN_WGPU_GEMM: {e}"))))?;
            let precision = var("KILN_WGPU_PRECISION").map_or(Ok(Precision::F32), |v| {
                v.parse().map_err(|e| Error::Msg(format!("KILN_WGPU_PRECISION: {e}")))
            })?;
            Ok(WgpuBackend { gemm, precision, subgroups: true, fault: None }.interned())
        };
        DEFAULT.get_or_init(|| from_env().map_err(|e| e.to_string())).clone().map_err(Error::Msg)
    }

    /// The `'static` instance equal to this one.
    pub(crate) fn interned(&self) -> &'static WgpuBackend {
        let i = GemmVariant::ALL.iter().position(|g| *g == self.gemm).unwrap_or(0) * 4
            + Precision::ALL.iter().position(|p| *p == self.precision).unwrap_or(0) * 2
            + usize::from(self.subgroups)
            + if self.fault.is_some() { 8 } else { 0 };
        &INSTANCES[i]
    }

    /// The wgpu instance behind a backend trait object, if it is one.
    pub fn of(be: &dyn Backend) -> Option<&'static WgpuBackend> {
        INSTANCES.iter().find(|i| std::ptr::addr_eq(*i as *const WgpuBackend, be as *const dyn Backend))
    }

    /// The f32 GEMM kernel this instance runs.
    pub fn gemm(&self) -> GemmVariant {
        self.gemm
    }

    /// The GEMMs' precision asked for (see [`WgpuBackend::f16_gemm`] for what runs).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the reductions (norm, loss) use subgroup operations where the adapter has them.
    pub fn subgroups(&self) -> bool {
        self.subgroups
    }

    /// This backend running the GEMM variant `v`.
    pub fn with_gemm(&self, v: GemmVariant) -> &'static WgpuBackend {
        WgpuBackend { gemm: v, ..*self }.interned()
    }

    /// This backend running its GEMMs in precision `p`.
    pub fn with_precision(&self, p: Precision) -> &'static WgpuBackend {
        WgpuBackend { precision: p, ..*self }.interned()
    }

    /// This backend with subgroup reductions on or off (the parity test runs both).
    pub fn with_subgroups(&self, on: bool) -> &'static WgpuBackend {
        WgpuBackend { subgroups: on, ..*self }.interned()
    }

    /// This backend with a deliberate GEMM bug (`Some`) or without (`None`): for tests that
    /// show the parity table catches a missed tail tile. Tensors it makes carry the fault, so
    /// ops on them run the broken GEMM too.
    #[doc(hidden)]
    pub fn with_fault(&self, fault: Option<GemmFault>) -> &'static WgpuBackend {
        WgpuBackend { fault, ..*self }.interned()
    }

    /// Column tiles that [`GemmFault::DropLastTile`] has left out in this process, so a test
    /// knows which of its cases the fault reached.
    #[doc(hidden)]
    pub fn dropped_tiles() -> usize {
        DROPPED_TILES.load(Ordering::Relaxed)
    }

    /// Workgroups across `n` columns of `tile`-wide tiles: `⌈n / tile⌉`, or one fewer under
    /// [`GemmFault::DropLastTile`] when the last tile is partial and not the only one.
    pub(crate) fn gemm_col_groups(&self, n: usize, tile: usize) -> u32 {
        let all = n.div_ceil(tile);
        (match self.fault {
            Some(GemmFault::DropLastTile) if all > 1 && !n.is_multiple_of(tile) => {
                DROPPED_TILES.fetch_add(1, Ordering::Relaxed);
                all - 1
            }
            _ => all,
        }) as u32
    }

    /// Whether the GEMMs run in f16: asked for, and the adapter has SHADER_F16.
    pub fn f16_gemm(&self, dev: &Device) -> bool {
        self.precision == Precision::F16 && dev.shader_f16
    }

    /// Whether the reductions use subgroup operations on `dev` now.
    pub(crate) fn use_subgroups(&self, dev: &Device) -> bool {
        self.subgroups && dev.subgroups
    }

    /// The GEMM kernel that runs, as benchmark results name it: "v3h_f16" for the f16 GEMM,
    /// else the f32 variant's full name.
    pub fn gemm_kernel(&self) -> &'static str {
        match device() {
            Ok(dev) if self.f16_gemm(dev) => "v3h_f16",
            _ => self.gemm.full_name(),
        }
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
        match (op, device()) {
            // The f16 GEMMs round their operands to f16 (after exact power-of-two scaling).
            (Op::Linear | Op::Matmul, Ok(dev)) if self.f16_gemm(dev) => DType::F16,
            // Everything else is f32 arithmetic: 16-bit weights and tables are widened exactly
            // (at upload or where a lookup reads them), block-quantized ones decode exactly,
            // and casts round exactly.
            _ => match dtype {
                DType::BF16 | DType::F16 | DType::Quant(_) => DType::F32,
                d => d,
            },
        }
    }
}
