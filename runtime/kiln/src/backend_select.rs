//! Which backend a command runs on: `--backend auto|cpu|cuda|cuda-emu|wgpu`, `--device` and
//! the wgpu `--precision`, decided here once for train, generate, demo and the benches.

use kiln_core::Backend;

use crate::{KilnError, Result};

/// What `auto` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auto {
    /// An NVIDIA GPU (CUDA), else another GPU (wgpu), else the CPU: for running work.
    BestGpu,
    /// The CPU: a bench names the backend it measures.
    Cpu,
}

fn err(msg: String) -> KilnError {
    KilnError::Msg(msg)
}

/// The backend `want` names. `auto` ([`Auto::BestGpu`]) takes an NVIDIA GPU (CUDA), else
/// another GPU (wgpu), else the CPU, and says why the others were passed over — a CPU Vulkan
/// driver such as lavapipe is not faster than the CPU backend, and the CUDA emulation is for
/// checking kernels.
pub fn pick(want: &str, device: Option<&str>, auto: Auto) -> Result<&'static dyn Backend> {
    let cpu: &'static dyn Backend = &kiln_core::CpuBackend;
    match want {
        "cpu" => Ok(cpu),
        "auto" if auto == Auto::Cpu => Ok(cpu),
        "cuda" => {
            let ordinal = match device {
                None => 0,
                Some(d) => d.parse::<usize>().map_err(|_| err(format!("--device {d}: a CUDA device ordinal")))?,
            };
            kiln_cuda::open(ordinal).map_err(|e| err(format!("--backend cuda: {e}")))
        }
        "cuda-emu" => {
            if auto == Auto::BestGpu {
                eprintln!(
                    "backend: cuda-emu — the CUDA kernels on this CPU through kiln's emulation (slow; for checking kernels)"
                );
            }
            kiln_cuda::open_emu().map_err(|e| err(format!("--backend cuda-emu: {e}")))
        }
        "wgpu" => kiln_wgpu::open().map_err(|e| err(format!("--backend wgpu: {e}"))),
        "auto" => Ok(best_gpu().unwrap_or(cpu)),
        other if auto == Auto::Cpu => Err(err(format!("--backend {other}: one of cpu, cuda, cuda-emu, wgpu"))),
        other => Err(err(format!("--backend {other}: one of auto, cpu, cuda, cuda-emu, wgpu"))),
    }
}

/// An NVIDIA GPU through kiln's CUDA kernels, else any GPU through wgpu; `None` (having said
/// why on stderr) when neither opens.
fn best_gpu() -> Option<&'static dyn Backend> {
    let cuda = kiln_cuda::probe();
    if let Some(d) = cuda.devices.first() {
        match kiln_cuda::open(0) {
            Ok(be) => {
                eprintln!("backend: cuda on {} (device 0)", d.name);
                return Some(be);
            }
            Err(e) => eprintln!("note: cuda device 0 ({}) did not open: {e}", d.name),
        }
    }
    let probe = kiln_wgpu::probe();
    let gpu = probe.adapters.iter().find(|a| a.device_type != "Cpu");
    if let Some(a) = gpu
        && let Ok(be) = kiln_wgpu::open()
    {
        eprintln!("backend: wgpu on {} ({})", a.name, a.backend);
        return Some(be);
    }
    let wgpu = match (gpu, probe.unavailable) {
        (None, None) => "only a CPU adapter (use --backend wgpu to run on it anyway)".to_string(),
        (_, Some(u)) => u,
        (Some(_), None) => "the adapter did not open".to_string(),
    };
    let cuda = cuda.unavailable.unwrap_or_else(|| "no device opened".into());
    eprintln!("backend: cpu (cuda: {cuda}; wgpu: {wgpu})");
    None
}

/// Applies `--precision` (a wgpu setting; the CPU and CUDA backends compute in their own
/// fixed precisions and refuse f16 rather than ignore it): the backend instance to run on.
pub fn set_precision(backend: &'static dyn Backend, precision: &str) -> Result<&'static dyn Backend> {
    if precision == "f32" {
        return Ok(backend);
    }
    if backend.name() != "wgpu" {
        return Err(err(format!(
            "--precision {precision}: a wgpu setting (the {} backend has its own precision)",
            backend.name()
        )));
    }
    if precision != "f16" {
        return Err(err(format!("--precision {precision}: f32 or f16")));
    }
    let backend = kiln_wgpu::with_precision(backend, kiln_wgpu::Precision::F16)
        .ok_or_else(|| err(format!("--precision {precision}: not a wgpu backend")))?;
    #[cfg(feature = "wgpu")]
    if let Ok(dev) = kiln_wgpu::runtime::device() {
        if dev.shader_f16 {
            eprintln!("precision: f16 GEMMs (f32 accumulation) on {}", dev.info.name);
        } else {
            eprintln!("note: {} has no SHADER_F16: the GEMMs run in f32", dev.info.name);
        }
    }
    Ok(backend)
}

/// The backend of a run: `--device` chosen among the wgpu adapters, the backend picked, its
/// precision set.
pub fn open(want: &str, device: Option<&str>, precision: &str, auto: Auto) -> Result<&'static dyn Backend> {
    if let Some(d) = device {
        kiln_wgpu::choose(d);
    }
    let be = pick(want, device, auto)?;
    set_precision(be, precision)
}
