//! `kiln info`: version, compiled and available backends, CPU threads and SIMD level, wgpu
//! adapters, CUDA devices, and why a backend is unavailable.

use serde_json::{Value, json};

/// The SIMD level the CPU kernels can use here.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
        if is_x86_feature_detected!("sse4.2") {
            return "sse4.2";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Resident memory of this process in bytes: `(total, anonymous, file-backed)` from
/// /proc/self/status (Linux); zeros elsewhere.
pub fn rss_bytes() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

/// Everything `kiln info` reports, as JSON.
pub fn report() -> Value {
    let cuda = kiln_cuda::probe();
    let wgpu = kiln_wgpu::probe();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backends": {
            "cpu": {
                "compiled": true,
                "available": true,
                "threads": rayon::current_num_threads(),
                "simd": simd_level(),
                "arch": std::env::consts::ARCH,
            },
            "cuda": {
                "compiled": cuda.compiled,
                "available": cuda.unavailable.is_none(),
                "nvrtc": cuda.nvrtc,
                "devices": cuda.devices.iter().map(|d| json!({
                    "ordinal": d.ordinal, "name": d.name,
                    "compute_capability": format!("{}.{}", d.compute_capability.0, d.compute_capability.1),
                    "memory_mb": d.total_mem_bytes / (1 << 20),
                })).collect::<Vec<_>>(),
                "unavailable_reason": cuda.unavailable,
            },
            "cuda-emu": {
                "compiled": cfg!(feature = "cuda-emu"),
                "available": cfg!(feature = "cuda-emu"),
                "kernels": kiln_cuda::kernels::SOURCES.iter().map(|(_, s)| kiln_cuda::kernels::entry_points(s).len()).sum::<usize>(),
                "unavailable_reason": (!cfg!(feature = "cuda-emu")).then_some("not compiled (feature `cuda-emu`)"),
            },
            "wgpu": {
                "compiled": wgpu.compiled,
                "available": wgpu.unavailable.is_none(),
                "adapters": wgpu.adapters.iter().map(|a| json!({
                    "name": a.name, "backend": a.backend, "device_type": a.device_type,
                    "driver": a.driver, "shader_f16": a.shader_f16, "subgroups": a.subgroups,
                })).collect::<Vec<_>>(),
                "unavailable_reason": wgpu.unavailable,
            },
        },
    })
}

/// Human-readable form of [`report`].
pub fn render(v: &Value) -> String {
    let mut s = format!("kiln {}\n", v["version"].as_str().unwrap_or("?"));
    let b = &v["backends"];
    let cpu = &b["cpu"];
    s += &format!(
        "  cpu   available  {} threads, {} ({})\n",
        cpu["threads"],
        cpu["simd"].as_str().unwrap_or("?"),
        cpu["arch"].as_str().unwrap_or("?")
    );
    for name in ["cuda", "cuda-emu", "wgpu"] {
        let x = &b[name];
        let state = match (x["compiled"].as_bool(), x["available"].as_bool()) {
            (Some(false), _) => "not compiled",
            (_, Some(true)) => "available",
            _ => "unavailable",
        };
        s += &format!("  {name:<5} {state}");
        if name == "cuda-emu" && state == "available" {
            s += &format!(": the {} CUDA kernels on this CPU (correctness, not speed)", x["kernels"]);
        }
        if let Some(r) = x["unavailable_reason"].as_str() {
            s += &format!(": {r}");
        }
        s += "\n";
        if name == "cuda" {
            s +=
                &format!("        nvrtc: {}\n", if x["nvrtc"].as_bool() == Some(true) { "found" } else { "not found" });
        }
        // The index is what `--device` takes.
        for (i, d) in x["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(x["adapters"].as_array().into_iter().flatten())
            .enumerate()
        {
            s += &format!("        [{i}] {}\n", d);
        }
    }
    s
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), when the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok()?;
    Some(kb / 1024.0)
}
