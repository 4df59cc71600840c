//! The CUDA backend crate: kiln's kernels (`kernels/*.cu`), compiled at run time by NVRTC for
//! the GPU (cudarc loads `libcuda`/`libnvrtc` dynamically: no toolkit needed to build), and the
//! same sources built for the CPU by the emulation harness (`cuda-emu` feature), which runs them
//! in `cargo test` on machines without a GPU.
//!
//! Without the `cuda` feature the probe answers "not compiled with CUDA support".

pub mod backend;
pub mod bench;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda-emu")]
pub mod emu;
pub mod exec;
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod prof;
pub mod ptxver;
mod variant;

pub use variant::{GemmVariant, UnknownGemmVariant};

/// The op parity table's cases the CUDA backend skips, `(pattern in the case name, reason)`, as
/// `kiln_core::selftest::Report::verify` takes them: the parity tests and `kiln selftest` fail on
/// any other skip.
pub const PARITY_SKIPS: &[(&str, &str)] = &[];

/// One visible CUDA device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// Compute capability, e.g. (9, 0) for H100.
    pub compute_capability: (i32, i32),
    pub total_mem_bytes: usize,
}

/// What CUDA can do in this process, or why not.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Whether this build includes the CUDA backend.
    pub compiled: bool,
    /// Devices found; empty when the driver is absent.
    pub devices: Vec<DeviceInfo>,
    /// Whether libnvrtc could be loaded (kernels compile at run time).
    pub nvrtc: bool,
    /// Why CUDA is unusable here, when it is.
    pub unavailable: Option<String>,
}

#[cfg(feature = "cuda")]
mod imp {
    use super::{DeviceInfo, Probe};
    use cudarc::driver::{result, sys};

    pub fn probe() -> Probe {
        // SAFETY: only checks whether the shared libraries can be opened; cudarc panics on first
        // use of a missing library, so nothing else is called unless this says yes.
        let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
        let driver = unsafe { sys::is_culib_present() };
        if !driver {
            return Probe {
                compiled: true,
                devices: vec![],
                nvrtc,
                unavailable: Some("libcuda.so (the NVIDIA driver) was not found".into()),
            };
        }
        if let Err(e) = result::init() {
            return Probe { compiled: true, devices: vec![], nvrtc, unavailable: Some(format!("cuInit failed: {e}")) };
        }
        let n = result::device::get_count().unwrap_or(0).max(0) as usize;
        let mut devices = Vec::new();
        for ordinal in 0..n {
            let Ok(dev) = result::device::get(ordinal as i32) else { continue };
            let name = result::device::get_name(dev).unwrap_or_else(|_| "?".into());
            // SAFETY: `dev` is a valid device handle returned by cuDeviceGet above.
            let (total, major, minor) = unsafe {
                (
                    result::device::total_mem(dev).unwrap_or(0),
                    result::device::get_attribute(
                        dev,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                    )
                    .unwrap_or(0),
                    result::device::get_attribute(
                        dev,
                        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                    )
                    .unwrap_or(0),
                )
            };
            devices.push(DeviceInfo { ordinal, name, compute_capability: (major, minor), total_mem_bytes: total });
        }
        let unavailable = devices.is_empty().then(|| "the driver reports no CUDA devices".to_string());
        Probe { compiled: true, devices, nvrtc, unavailable }
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::Probe;
    pub fn probe() -> Probe {
        Probe {
            compiled: false,
            devices: vec![],
            nvrtc: false,
            unavailable: Some("not compiled with CUDA support (feature `cuda`)".into()),
        }
    }
}

/// Looks for the CUDA driver, NVRTC and devices. Never panics when they are missing.
pub fn probe() -> Probe {
    imp::probe()
}

/// The CUDA backend on device `ordinal` (opened once per process), running the GEMM variant
/// `KILN_CUDA_GEMM` names (when unset, v7 on Hopper, v6 elsewhere).
#[cfg(feature = "cuda")]
pub fn open(ordinal: usize) -> Result<&'static dyn kiln_core::Backend, String> {
    open_gpu(ordinal).map(|b| b as _)
}

#[cfg(feature = "cuda")]
fn open_gpu(ordinal: usize) -> Result<&'static backend::KernelBackend, String> {
    let gemm = backend::env_gemm()?;
    backend::env_act()?;
    // Unset KILN_CUDA_GEMM: the fastest variant the device runs (v7 on Hopper).
    let pick = |ex: &dyn exec::Exec| gemm.unwrap_or_else(|| GemmVariant::default_for(ex.has_wgmma()));
    backend::install(backend::gpu_slot(ordinal), pick, || Ok(Box::new(cuda::CudaExec::new(ordinal)?)))
        .map_err(|e| e.to_string())
}

/// The CUDA backend: not compiled in.
#[cfg(not(feature = "cuda"))]
pub fn open(_ordinal: usize) -> Result<&'static dyn kiln_core::Backend, String> {
    Err("not compiled with CUDA support (feature `cuda`)".into())
}

/// The CUDA kernels on the CPU (kiln's emulation harness), running the GEMM variant
/// `KILN_CUDA_GEMM` names (v6 when unset).
#[cfg(feature = "cuda-emu")]
pub fn open_emu() -> Result<&'static dyn kiln_core::Backend, String> {
    backend::env_gemm()?;
    backend::env_act()?;
    Ok(backend::emu())
}

/// The emulation: not compiled in.
#[cfg(not(feature = "cuda-emu"))]
pub fn open_emu() -> Result<&'static dyn kiln_core::Backend, String> {
    Err("not compiled with the CUDA emulation (feature `cuda-emu`)".into())
}

/// The kernel backend behind `cuda` (device `ordinal`) or `cuda-emu`, for tools that reach below
/// the `Backend` trait (kernel benchmarks, timing, memory, other GEMM variants).
pub fn kernel_backend(which: &str, ordinal: usize) -> Result<&'static backend::KernelBackend, String> {
    match which {
        #[cfg(feature = "cuda")]
        "cuda" => open_gpu(ordinal),
        #[cfg(feature = "cuda-emu")]
        "cuda-emu" => {
            backend::env_gemm()?;
            backend::env_act()?;
            Ok(backend::emu())
        }
        #[allow(unreachable_patterns)]
        "cuda" | "cuda-emu" => Err(format!("{which}: not compiled into this build (features `cuda`, `cuda-emu`)")),
        other => Err(format!("{other}: not a CUDA kernel backend (cuda or cuda-emu)")),
    }
}
