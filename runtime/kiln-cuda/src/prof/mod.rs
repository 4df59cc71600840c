//! The kernel profiler's static half (`kiln prof static`): for each kernel and target, what
//! ptxas reports (registers, shared memory, spills, stack), the theoretical occupancy from the
//! per-architecture limits ([`arch`]), and the instruction mix of the steady-state main loop
//! found in the SASS control flow ([`sass`]), with the headline ratio of non-MMA instructions
//! per 16×8×16 MMA-equivalent.
//!
//! The tools: ptxas from the CUDA 12.9 wheel (`nvidia-cuda-nvcc-cu12`, `KILN_PTXAS`) turns
//! NVRTC's PTX into a cubin; NVIDIA's disassembler ships in pip wheels for CUDA 13 only
//! (`nvidia-cuda-nvdisasm==13.5.*`, `KILN_NVDISASM`), and CUDA 13's nvdisasm reads the 12.9
//! cubins of sm_80 … sm_120 (it notes that it switches to the older ELF layout; the listing is
//! the same).

pub mod arch;
pub mod baseline;
pub mod dynamic;
pub mod model;
pub mod ops;
pub mod sass;

use std::path::{Path, PathBuf};

pub use arch::{ArchLimits, Occupancy, Resources};
pub use sass::{Loop, Mix};

/// One kernel on one target.
#[derive(Clone, Debug)]
pub struct KernelStatic {
    pub file: String,
    pub name: String,
    pub arch: String,
    pub resources: Resources,
    /// Threads per block from the kernel's launch bounds (`.maxntid`), else `None`.
    pub launch_bounds: Option<u32>,
    /// Occupancy at the launch bounds' block, else at 256 threads (the grid-stride kernels'
    /// block), with static shared memory only.
    pub occupancy: Occupancy,
    /// The main loop's mix, its span in instructions, or `None` for straight-line code.
    pub main_loop: Option<(Loop, Mix)>,
    /// The whole function's mix.
    pub whole: Mix,
}

/// The block the occupancy assumes where the kernel states no launch bounds.
pub const DEFAULT_THREADS: u32 = 256;

/// The disassembler: `KILN_NVDISASM`, else `nvdisasm` on the PATH.
pub fn nvdisasm() -> PathBuf {
    std::env::var_os("KILN_NVDISASM").map(PathBuf::from).unwrap_or_else(|| "nvdisasm".into())
}

/// ptxas: `KILN_PTXAS`, else `ptxas` on the PATH.
pub fn ptxas() -> PathBuf {
    std::env::var_os("KILN_PTXAS").map(PathBuf::from).unwrap_or_else(|| "ptxas".into())
}

fn run(tool: &Path, args: &[&std::ffi::OsStr], hint: &str) -> kiln_core::Result<std::process::Output> {
    std::process::Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| kiln_core::Error::Msg(format!("{}: {e} ({hint})", tool.display())))
}

/// `.maxntid` of entry `name` in `ptx` (the x dimension times y times z).
pub fn launch_bounds(ptx: &str, name: &str) -> Option<u32> {
    let start = ptx.find(&format!(".entry {name}("))?;
    let head = &ptx[start..start + ptx[start..].find('{')?];
    let dims = head.split(".maxntid").nth(1)?.lines().next()?;
    dims.split(',').map(|d| d.trim().parse::<u32>().ok()).try_fold(1u32, |acc, d| Some(acc * d?))
}

/// Analyses one file's PTX for `arch` (`sm_80`, `sm_90a`, …): ptxas to a cubin in `work`,
/// disassembled; one [`KernelStatic`] per entry point ptxas compiled.
pub fn analyse_ptx(file: &str, ptx: &str, arch: &str, work: &Path) -> kiln_core::Result<Vec<KernelStatic>> {
    let target = arch.replace("compute_", "sm_");
    let limits = arch::limits(&target).ok_or_else(|| {
        let known: Vec<&str> = arch::ARCHS.iter().map(|a| a.arch).collect();
        kiln_core::Error::Msg(format!("no occupancy limits for {arch}: the table has {}", known.join(", ")))
    })?;
    std::fs::create_dir_all(work).map_err(|e| kiln_core::Error::Msg(format!("{}: {e}", work.display())))?;
    let stem = file.trim_end_matches(".cu");
    let (ptx_path, cubin) = (work.join(format!("{stem}.{target}.ptx")), work.join(format!("{stem}.{target}.cubin")));
    std::fs::write(&ptx_path, ptx).map_err(|e| kiln_core::Error::Msg(format!("{}: {e}", ptx_path.display())))?;
    let arch_flag = format!("-arch={target}");
    let pt = ptxas();
    let o = run(
        &pt,
        &["-v".as_ref(), arch_flag.as_ref(), "-o".as_ref(), cubin.as_os_str(), ptx_path.as_os_str()],
        "pip install nvidia-cuda-nvcc-cu12==12.9.*; set KILN_PTXAS",
    )?;
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    if !o.status.success() {
        return Err(kiln_core::Error::Msg(format!("ptxas {target} {file}: {log}")));
    }
    let nd = nvdisasm();
    let d =
        run(&nd, &["-c".as_ref(), cubin.as_os_str()], "pip install nvidia-cuda-nvdisasm==13.5.*; set KILN_NVDISASM")?;
    if !d.status.success() {
        return Err(kiln_core::Error::Msg(format!("nvdisasm {target} {file}: {}", String::from_utf8_lossy(&d.stderr))));
    }
    let functions = sass::parse(&String::from_utf8_lossy(&d.stdout));
    let mut out = Vec::new();
    for (name, resources) in arch::parse_ptxas(&log) {
        let f = functions
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| kiln_core::Error::Msg(format!("nvdisasm {target} {file}: no code for entry {name}")))?;
        let bounds = launch_bounds(ptx, &name);
        let occupancy = arch::occupancy(&limits, &resources, bounds.unwrap_or(DEFAULT_THREADS), 0);
        let main_loop = f.main_loop().map(|l| (l, Mix::of(&f.instrs[l.start..=l.end])));
        out.push(KernelStatic {
            file: file.to_string(),
            name,
            arch: target.clone(),
            resources,
            launch_bounds: bounds,
            occupancy,
            main_loop,
            whole: Mix::of(&f.instrs),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn launch_bounds_from_ptx() {
        let ptx = ".visible .entry a(\n.param .u64 p\n)\n.maxntid 128, 1, 1\n{\nret;\n}\n.visible .entry b(\n)\n{\n}\n";
        assert_eq!(super::launch_bounds(ptx, "a"), Some(128));
        assert_eq!(super::launch_bounds(ptx, "b"), None);
        assert_eq!(super::launch_bounds(ptx, "c"), None);
    }
}
