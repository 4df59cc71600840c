//! The CPU execution of `kernels/*.cu` (built by build.rs with the host C++ compiler against
//! `kernels/emu/kiln_emu.h`): memory is host memory, a launch runs every block on the calling
//! thread with one fiber per GPU thread. `KILN_EMU_RACECHECK=1` runs the instrumented build, which
//! reports shared- and global-memory races inside a block.

use std::ffi::{CString, c_char, c_int, c_void};

use kiln_core::{Error, Result};

use crate::exec::{DevBuf, Exec, Launch};
use crate::prof::dynamic::{LaunchProfile, ProfileOpts, RawProfile, Session};

unsafe extern "C" {
    fn kiln_emu_launch(
        name: *const c_char,
        mode: c_int,
        grid: *const u32,
        block: *const u32,
        smem: usize,
        params: *const c_void,
        params_len: usize,
        prof: *mut RawProfile,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn kiln_emu_kernels(buf: *mut c_char, len: usize) -> usize;
    fn kiln_emu_set_max_dyn_smem(name: *const c_char, bytes: usize, err: *mut c_char, err_len: usize) -> c_int;
}

/// Host memory handed to kernels as raw addresses, 256-byte aligned as `cuMemAlloc`'s are (the
/// profiler's sector counts depend on it); freed on drop.
struct HostMem {
    ptr: *mut u64,
    layout: std::alloc::Layout,
}

/// `cuMemAlloc`'s alignment.
const ALIGN: usize = 256;

// SAFETY: the allocation is owned by this value alone; kernels reach it only during launches,
// which the emulation runtime serializes.
unsafe impl Send for HostMem {}
// SAFETY: as above; no Rust reference into the memory is ever handed out.
unsafe impl Sync for HostMem {}

impl Drop for HostMem {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated in `EmuExec::alloc_filled` with exactly `layout`.
        unsafe { std::alloc::dealloc(self.ptr as *mut u8, self.layout) };
    }
}

/// The emulation as an [`Exec`].
pub struct EmuExec {
    /// Run the race-checking build (from `KILN_EMU_RACECHECK=1`, or set by tests).
    pub racecheck: std::sync::atomic::AtomicBool,
    /// Every kernel launched so far (what the tests hold against the kernel list).
    launched: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// While profiling: the options and what was recorded so far.
    profile: std::sync::Mutex<Option<(ProfileOpts, Session)>>,
    /// Launches, uploads and downloads (each a host synchronization on a GPU).
    counts: crate::exec::Counters,
}

impl Default for EmuExec {
    fn default() -> Self {
        let rc = std::env::var("KILN_EMU_RACECHECK").is_ok_and(|v| v == "1");
        EmuExec {
            racecheck: std::sync::atomic::AtomicBool::new(rc),
            launched: Default::default(),
            profile: Default::default(),
            counts: Default::default(),
        }
    }
}

impl EmuExec {
    fn alloc_filled(&self, bytes: usize, fill: u64) -> Result<DevBuf> {
        let words = bytes.div_ceil(8).max(1);
        let layout = std::alloc::Layout::from_size_align(words * 8, ALIGN)
            .map_err(|e| Error::Msg(format!("cuda-emu: allocation of {bytes} bytes: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) } as *mut u64;
        if ptr.is_null() {
            return Err(Error::Msg(format!("cuda-emu: out of host memory allocating {bytes} bytes")));
        }
        // SAFETY: `ptr` holds `words` u64s (just allocated, aligned to 256 ≥ 8).
        unsafe { std::slice::from_raw_parts_mut(ptr, words) }.fill(fill);
        Ok(DevBuf { ptr: ptr as u64, bytes, _keep: Box::new(HostMem { ptr, layout }) })
    }

    /// Launches with the race checker on or off regardless of the setting.
    pub fn launch_checked(&self, kernel: &str, cfg: Launch, params: &[u8], racecheck: bool) -> Result<()> {
        self.launch_mode(kernel, cfg, params, racecheck as c_int, std::ptr::null_mut())
    }

    /// Launches the profiling build over at most `opts.max_ctas` CTAs; the counters.
    pub fn launch_profiled(&self, kernel: &str, cfg: Launch, params: &[u8], opts: ProfileOpts) -> Result<RawProfile> {
        let mut raw = RawProfile { max_ctas: opts.max_ctas, wave: opts.wave, ..Default::default() };
        self.launch_mode(kernel, cfg, params, 2, &mut raw)?;
        Ok(raw)
    }

    fn lock_profile(&self) -> std::sync::MutexGuard<'_, Option<(ProfileOpts, Session)>> {
        self.profile.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn launch_mode(&self, kernel: &str, cfg: Launch, params: &[u8], mode: c_int, prof: *mut RawProfile) -> Result<()> {
        if cfg.smem > 48 * 1024 {
            // As the GPU path does (cuda.rs): the emulation refuses more than 48 KiB otherwise.
            self.grant_dyn_smem(kernel, cfg.smem)?;
        }
        self.launch_raw(kernel, cfg, params, mode, prof)
    }

    /// `cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)` for `kernel`.
    pub fn grant_dyn_smem(&self, kernel: &str, bytes: usize) -> Result<()> {
        let name = CString::new(kernel).map_err(|_| Error::Msg(format!("kernel name {kernel:?}")))?;
        let mut err = vec![0u8; 1024];
        // SAFETY: the name is NUL-terminated and `err` has the capacity passed.
        let rc = unsafe { kiln_emu_set_max_dyn_smem(name.as_ptr(), bytes, err.as_mut_ptr() as *mut c_char, err.len()) };
        if rc == 0 {
            return Ok(());
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        Err(Error::Msg(format!("cuda-emu: {kernel}: {}", String::from_utf8_lossy(&err[..end]))))
    }

    /// A plain launch without granting dynamic shared memory above 48 KiB first (what a bare
    /// `cuLaunchKernel` does: refused).
    pub fn launch_without_grant(&self, kernel: &str, cfg: Launch, params: &[u8]) -> Result<()> {
        self.launch_raw(kernel, cfg, params, 0, std::ptr::null_mut())
    }

    /// `mode`: 0 plain, 1 race check, 2 profile (`prof` then points at the counters to fill).
    fn launch_raw(&self, kernel: &str, cfg: Launch, params: &[u8], mode: c_int, prof: *mut RawProfile) -> Result<()> {
        let name = CString::new(kernel).map_err(|_| Error::Msg(format!("kernel name {kernel:?}")))?;
        let mut err = vec![0u8; 8192];
        // SAFETY: every pointer is valid for the call: the name is NUL-terminated, grid and block
        // hold three u32 each, `params` is the kernel's parameter struct (its size is checked on
        // the C++ side), `prof` is null or a live RawProfile (the C struct's mirror) used only
        // during the call, and `err` has the capacity passed.
        let rc = unsafe {
            kiln_emu_launch(
                name.as_ptr(),
                mode,
                cfg.grid.as_ptr(),
                cfg.block.as_ptr(),
                cfg.smem,
                params.as_ptr() as *const c_void,
                params.len(),
                prof,
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        Err(Error::Msg(format!("cuda-emu launch: {}", String::from_utf8_lossy(&err[..end]))))
    }
}

/// The kernels compiled into the emulation.
pub fn kernel_names() -> Vec<String> {
    let mut buf = vec![0u8; 1 << 16];
    // SAFETY: `buf` has the capacity passed; the callee writes a NUL-terminated string.
    unsafe { kiln_emu_kernels(buf.as_mut_ptr() as *mut c_char, buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let mut v: Vec<String> = String::from_utf8_lossy(&buf[..end]).lines().map(str::to_string).collect();
    v.sort();
    v
}

impl Exec for EmuExec {
    fn name(&self) -> &'static str {
        "cuda-emu"
    }
    fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        self.alloc_filled(bytes, u64::MAX)
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<DevBuf> {
        self.alloc_filled(bytes, 0)
    }
    fn upload(&self, bytes: &[u8]) -> Result<DevBuf> {
        self.counts.upload();
        if let Some((_, s)) = self.lock_profile().as_mut() {
            s.uploads += 1;
        }
        let b = self.alloc_filled(bytes.len(), 0)?;
        // SAFETY: the new buffer holds at least `bytes.len()` bytes and nothing else refers to it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), b.ptr as *mut u8, bytes.len()) };
        Ok(b)
    }
    fn download(&self, buf: &DevBuf, offset: usize, len: usize) -> Result<Vec<u8>> {
        self.counts.host_sync();
        if let Some((_, s)) = self.lock_profile().as_mut() {
            s.downloads += 1;
        }
        if offset + len > buf.bytes {
            return Err(Error::Msg(format!(
                "cuda-emu: read of {len} bytes at {offset} from a {}-byte buffer",
                buf.bytes
            )));
        }
        let mut v = vec![0u8; len];
        // SAFETY: the range lies inside the buffer (checked above); no launch runs concurrently
        // on this buffer because launches are synchronous.
        unsafe { std::ptr::copy_nonoverlapping((buf.ptr as *const u8).add(offset), v.as_mut_ptr(), len) };
        Ok(v)
    }
    fn launch(&self, kernel: &str, cfg: Launch, params: &[u8]) -> Result<()> {
        self.counts.launch();
        let rc = self.racecheck.load(std::sync::atomic::Ordering::Relaxed);
        self.launched.lock().unwrap_or_else(|e| e.into_inner()).insert(kernel.to_string());
        let opts = self.lock_profile().as_ref().map(|(o, _)| *o);
        if let Some(opts) = opts {
            let raw = self.launch_profiled(kernel, cfg, params, opts)?;
            let p =
                LaunchProfile { kernel: kernel.to_string(), grid: cfg.grid, block: cfg.block, dyn_smem: cfg.smem, raw };
            if let Some((_, s)) = self.lock_profile().as_mut() {
                s.launches.push(p);
            }
            return Ok(());
        }
        self.launch_checked(kernel, cfg, params, rc)
    }
    fn set_profile(&self, opts: Option<ProfileOpts>) -> bool {
        *self.lock_profile() = opts.map(|o| (o, Session::default()));
        true
    }
    fn take_profile(&self) -> Session {
        self.lock_profile().as_mut().map(|(_, s)| std::mem::take(s)).unwrap_or_default()
    }
    fn has_wgmma(&self) -> bool {
        true
    }
    fn synchronize(&self) -> Result<()> {
        // Launches run to completion here; counted as on a GPU.
        self.counts.host_sync();
        Ok(())
    }
    fn counters(&self) -> kiln_core::backend::DeviceCounters {
        self.counts.read()
    }
    fn launched(&self) -> Vec<String> {
        self.launched.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }
    fn set_racecheck(&self, on: bool) {
        self.racecheck.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}
