//! Compiling `kernels/*.cu` with NVRTC (loaded at run time; never a build dependency).
//!
//! The CUDA headers the kernels include (`cuda_fp16.h`, `cuda_bf16.h`) come from a CUDA install
//! or the pip wheel `nvidia-cuda-runtime-cu12`: kiln looks in `--cuda-include DIR` (passed as
//! `extra`), `KILN_CUDA_INCLUDE`, `$CUDA_HOME/include`, `$CUDA_PATH/include`, then
//! `/usr/local/cuda/include`.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::result;
use kiln_core::{Error, Result};

/// Every target kiln builds for: Turing to Blackwell, plus Hopper's arch-specific features.
pub const ARCHS: [&str; 7] = ["sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "compute_90a", "sm_120"];

/// Whether libnvrtc can be loaded (cudarc panics on first use otherwise).
pub fn available() -> bool {
    // SAFETY: only tries to open the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// NVRTC's version, e.g. (12, 9).
pub fn version() -> Result<(i32, i32)> {
    if !available() {
        return Err(Error::Msg("libnvrtc was not found on the library path".into()));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is present (checked above); the out-pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| Error::Msg(format!("nvrtcVersion: {e:?}")))?;
    Ok((major, minor))
}

/// Directories searched for the CUDA headers, in order; only those with `cuda_fp16.h`.
pub fn include_dirs(extra: Option<PathBuf>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    v.extend(extra);
    v.extend(std::env::var_os("KILN_CUDA_INCLUDE").map(PathBuf::from));
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        v.extend(std::env::var_os(var).map(|h| PathBuf::from(h).join("include")));
    }
    v.push(PathBuf::from("/usr/local/cuda/include"));
    v.into_iter().filter(|d| d.join("cuda_fp16.h").is_file()).collect()
}

/// A compiled kernel file.
pub struct Compiled {
    pub ptx: String,
    /// NVRTC's log: warnings, empty when there were none.
    pub log: String,
}

/// Compiles one kernel file (`#include "common.cuh"` inlined) for `arch`.
pub fn compile(file: &str, source: &str, arch: &str, includes: &[PathBuf]) -> Result<Compiled> {
    if !available() {
        return Err(Error::Msg("libnvrtc was not found on the library path (pip: nvidia-cuda-nvrtc-cu12)".into()));
    }
    if includes.is_empty() {
        return Err(Error::Msg(
            "the CUDA headers (cuda_fp16.h) were not found: pass --cuda-include DIR or set KILN_CUDA_INCLUDE \
             (pip: nvidia-cuda-runtime-cu12)"
                .into(),
        ));
    }
    let src = CString::new(crate::kernels::expanded(source)).map_err(|_| Error::Msg(format!("{file}: NUL byte")))?;
    let name = CString::new(file).map_err(|_| Error::Msg(format!("{file}: NUL byte")))?;
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--device-as-default-execution-space".to_string(),
        "-lineinfo".to_string(),
    ];
    opts.extend(includes.iter().map(|d| format!("--include-path={}", d.display())));
    let prog = result::create_program(&src, Some(&name)).map_err(|e| Error::Msg(format!("{file}: nvrtc: {e:?}")))?;
    // SAFETY: `prog` is a live program (created above) and destroyed once at the end.
    unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog)
            .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().trim().to_string())
            .unwrap_or_default();
        let res = match compiled {
            Err(e) => Err(Error::Msg(format!("{file} for {arch}: NVRTC {e:?}:\n{log}"))),
            Ok(()) => result::get_ptx(prog)
                .map(|p| Compiled { ptx: CStr::from_ptr(p.as_ptr()).to_string_lossy().into_owned(), log })
                .map_err(|e| Error::Msg(format!("{file} for {arch}: no PTX: {e:?}"))),
        };
        let _ = result::destroy_program(prog);
        res
    }
}
