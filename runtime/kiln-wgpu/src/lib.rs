//! The wgpu backend crate (Vulkan, Metal, DX12, GL): adapter discovery, and kiln's `Backend`
//! running the WGSL kernels of `shaders/*.wgsl` (op families land one at a time; the rest
//! report themselves unsupported). The kernel choices, [`GemmVariant`] and [`Precision`], are
//! fields of a backend instance ([`with_gemm`], [`with_precision`]).
//!
//! Without the `wgpu` feature the same API answers "not compiled with wgpu support".

#[cfg(feature = "wgpu")]
pub mod backend;
#[cfg(feature = "wgpu")]
pub mod runtime;
mod variant;

#[cfg(feature = "wgpu")]
pub use backend::WgpuBackend;
#[doc(hidden)]
pub use variant::GemmFault;
pub use variant::{GemmVariant, Precision};

/// The op parity table's cases the wgpu backend skips, `(pattern in the case name, reason)`, as
/// `kiln_core::selftest::Report::verify` takes them: the parity tests and `kiln selftest` fail on
/// any other skip.
pub const PARITY_SKIPS: &[(&str, &str)] = &[
    (
        "adamw8 ",
        "no 8-bit AdamW kernel (has_adamw8 is false): the trainer keeps 8-bit moments on the host and steps them with adamw_step",
    ),
    (
        " activations",
        "the mixed-precision rows (16-bit activations in and out): wgpu carries activations in f32 between kernels",
    ),
];

/// Chooses the adapter `open` will use (an index as `kiln info` lists them, or part of a name);
/// false when the device is already open. A build without wgpu ignores it.
pub fn choose(spec: &str) -> bool {
    #[cfg(feature = "wgpu")]
    {
        runtime::choose(spec)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = spec;
        false
    }
}

/// Runs `f` and returns the GPU seconds of the wgpu kernels it launched, where the adapter has
/// timestamp queries (benchmarks); `None` otherwise.
pub fn gpu_time<R>(f: impl FnOnce() -> R) -> (R, Option<f64>) {
    #[cfg(feature = "wgpu")]
    {
        match runtime::device() {
            Ok(d) => d.timed(f),
            Err(_) => (f(), None),
        }
    }
    #[cfg(not(feature = "wgpu"))]
    {
        (f(), None)
    }
}

/// The wgpu backend when an adapter opens here, else why not: its GEMM variant and precision
/// from `KILN_WGPU_GEMM` and `KILN_WGPU_PRECISION` (see [`WgpuBackend::open`]).
pub fn open() -> Result<&'static dyn kiln_core::Backend, String> {
    #[cfg(feature = "wgpu")]
    {
        backend::WgpuBackend::open().map(|b| b as &'static dyn kiln_core::Backend).map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "wgpu"))]
    {
        Err("not compiled with wgpu support (feature `wgpu`)".into())
    }
}

/// `be` running the GEMM variant `v`, sharing its device; `None` when `be` is not a wgpu backend.
pub fn with_gemm(be: &dyn kiln_core::Backend, v: GemmVariant) -> Option<&'static dyn kiln_core::Backend> {
    #[cfg(feature = "wgpu")]
    {
        backend::WgpuBackend::of(be).map(|w| w.with_gemm(v) as &'static dyn kiln_core::Backend)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (be, v);
        None
    }
}

/// `be` running its GEMMs in precision `p`, sharing its device; `None` when `be` is not a wgpu
/// backend.
pub fn with_precision(be: &dyn kiln_core::Backend, p: Precision) -> Option<&'static dyn kiln_core::Backend> {
    #[cfg(feature = "wgpu")]
    {
        backend::WgpuBackend::of(be).map(|w| w.with_precision(p) as &'static dyn kiln_core::Backend)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = (be, p);
        None
    }
}

/// The GEMM kernel a wgpu backend runs, as benchmark results name it ("v2_smem_tiled",
/// "v3_register_blocked", "v3h_f16"); `None` when `be` is not a wgpu backend.
pub fn gemm_kernel(be: &dyn kiln_core::Backend) -> Option<&'static str> {
    #[cfg(feature = "wgpu")]
    {
        backend::WgpuBackend::of(be).map(|w| w.gemm_kernel())
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = be;
        None
    }
}

/// One adapter wgpu can open.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    pub name: String,
    /// "Vulkan", "Metal", "Dx12", "Gl".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "Cpu" (e.g. llvmpipe/lavapipe), …
    pub device_type: String,
    pub driver: String,
    /// Whether f16 arithmetic in shaders is available.
    pub shader_f16: bool,
    pub subgroups: bool,
}

/// What wgpu can do in this process, or why not.
#[derive(Clone, Debug)]
pub struct Probe {
    pub compiled: bool,
    pub adapters: Vec<AdapterInfo>,
    pub unavailable: Option<String>,
}

#[cfg(feature = "wgpu")]
mod imp {
    use super::{AdapterInfo, Probe};

    pub fn probe() -> Probe {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let adapters: Vec<AdapterInfo> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                let f = a.features();
                AdapterInfo {
                    name: i.name,
                    backend: format!("{:?}", i.backend),
                    device_type: format!("{:?}", i.device_type),
                    driver: format!("{} {}", i.driver, i.driver_info).trim().to_string(),
                    shader_f16: f.contains(wgpu::Features::SHADER_F16),
                    subgroups: f.contains(wgpu::Features::SUBGROUP),
                }
            })
            .collect();
        let unavailable = adapters
            .is_empty()
            .then(|| "no wgpu adapter (install a Vulkan driver, e.g. mesa-vulkan-drivers for lavapipe)".to_string());
        Probe { compiled: true, adapters, unavailable }
    }
}

#[cfg(not(feature = "wgpu"))]
mod imp {
    use super::Probe;
    pub fn probe() -> Probe {
        Probe {
            compiled: false,
            adapters: vec![],
            unavailable: Some("not compiled with wgpu support (feature `wgpu`)".into()),
        }
    }
}

/// Enumerates adapters on every wgpu backend. Never panics when none exist.
pub fn probe() -> Probe {
    imp::probe()
}
