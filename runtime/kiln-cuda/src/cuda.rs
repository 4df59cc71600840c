//! The GPU side of [`Exec`]: the CUDA driver through cudarc (loaded at run time).
//!
//! * one context (the device's primary) and one stream per device; events time kernels;
//! * a caching allocator: freed buffers return to per-size free lists and are reused, so steady
//!   state makes no cuMemAlloc call; on out-of-memory the cache is released and the allocation
//!   retried once, then the error names the requested and free bytes;
//! * kernels load per file on first use, from PTX found in this order: `KILN_PTX_DIR` (compiled
//!   ahead by `kiln kernels build`, for machines with only a driver), the on-disk cache
//!   (`~/.cache/kiln/ptx/…`, keyed by a hash of the source, the arch and NVRTC's version), NVRTC.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{result, sys};
use kiln_core::{Error, Result};

use crate::exec::{DevBuf, Exec, Launch};
use crate::kernels::{SOURCES, entry_points, expanded};

fn err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Msg(format!("cuda {what}: {e:?}"))
}

/// Raw driver handles of one device.
struct Handles {
    ctx: sys::CUcontext,
    stream: sys::CUstream,
}

// SAFETY: a CUDA context and stream may be used from any host thread once the context is made
// current there, which every entry point below does first.
unsafe impl Send for Handles {}
// SAFETY: as above; the driver API is thread-safe.
unsafe impl Sync for Handles {}

/// Free device memory by size class.
#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<u64>>,
    cached: usize,
    live: usize,
    peak: usize,
}

/// `KILN_CUDA_SYNC=1`: synchronize after every launch (read once).
fn sync_each_launch() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("KILN_CUDA_SYNC").is_ok_and(|v| v == "1"))
}

/// Rounds a request up to its size class: 512 B steps to 1 MiB, then 2 MiB steps.
fn size_class(bytes: usize) -> usize {
    let b = bytes.max(1);
    if b <= 1 << 20 { b.div_ceil(512) * 512 } else { b.div_ceil(2 << 20) * (2 << 20) }
}

/// Returns a buffer to the pool when its tensor goes away.
struct Pooled {
    ptr: u64,
    class: usize,
    pool: Arc<Mutex<Pool>>,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        p.free.entry(self.class).or_default().push(self.ptr);
        p.cached += self.class;
        p.live -= self.class;
    }
}

/// One CUDA device.
pub struct CudaExec {
    /// The driver's CUDA version, e.g. (12, 4): which PTX it can load.
    pub driver: (i32, i32),
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_mem: usize,
    h: Handles,
    pool: Arc<Mutex<Pool>>,
    modules: Mutex<HashMap<String, usize>>,
    /// The architecture each loaded module's PTX was built for.
    module_arch: Mutex<HashMap<String, String>>,
    /// [`Exec::has_wgmma`], decided once (it is asked on every v5 GEMM launch).
    wgmma: std::sync::OnceLock<bool>,
    funcs: Mutex<HashMap<String, usize>>,
    poison: std::sync::atomic::AtomicBool,
    l2: Mutex<Option<DevBuf>>,
    counts: crate::exec::Counters,
}

impl CudaExec {
    /// Opens device `ordinal`: errors say why (no driver, no such device).
    pub fn new(ordinal: usize) -> Result<CudaExec> {
        let probe = crate::probe();
        if let Some(why) = &probe.unavailable {
            return Err(Error::Msg(format!("cuda: {why}")));
        }
        let Some(info) = probe.devices.get(ordinal) else {
            let names: Vec<String> = probe.devices.iter().map(|d| format!("{}: {}", d.ordinal, d.name)).collect();
            return Err(Error::Msg(format!(
                "--device {ordinal}: this machine has {} ({})",
                names.len(),
                names.join(", ")
            )));
        };
        let dev = result::device::get(ordinal as i32).map_err(|e| err("cuDeviceGet", e))?;
        // SAFETY: `dev` is a valid device (probed above); the primary context is retained for the
        // life of the process (backends are never dropped).
        let ctx = unsafe { result::primary_ctx::retain(dev) }.map_err(|e| err("cuDevicePrimaryCtxRetain", e))?;
        // SAFETY: `ctx` was just retained.
        unsafe { result::ctx::set_current(ctx) }.map_err(|e| err("cuCtxSetCurrent", e))?;
        let stream =
            result::stream::create(result::stream::StreamKind::Default).map_err(|e| err("cuStreamCreate", e))?;
        let mut v = 0i32;
        // SAFETY: the driver library is loaded (probed above); the out-pointer is valid.
        unsafe { sys::cuDriverGetVersion(&mut v) }.result().map_err(|e| err("cuDriverGetVersion", e))?;
        Ok(CudaExec {
            driver: (v / 1000, (v % 1000) / 10),
            ordinal,
            name: info.name.clone(),
            compute_capability: info.compute_capability,
            total_mem: info.total_mem_bytes,
            h: Handles { ctx, stream },
            pool: Arc::default(),
            modules: Mutex::default(),
            module_arch: Mutex::default(),
            wgmma: std::sync::OnceLock::new(),
            funcs: Mutex::default(),
            poison: false.into(),
            l2: Mutex::default(),
            counts: Default::default(),
        })
    }

    fn current(&self) -> Result<()> {
        // SAFETY: the context stays retained while `self` lives.
        unsafe { result::ctx::set_current(self.h.ctx) }.map_err(|e| err("cuCtxSetCurrent", e))
    }

    /// The architecture name NVRTC targets for this device, e.g. `sm_86`; Hopper (9.0) gets
    /// `sm_90a`, whose arch-specific instructions (wgmma) the v5 GEMM uses.
    pub fn arch(&self) -> String {
        let (maj, min) = self.compute_capability;
        if (maj, min) == (9, 0) { "sm_90a".into() } else { format!("sm_{maj}{min}") }
    }

    fn raw_alloc(&self, class: usize) -> Result<u64> {
        // SAFETY: the context is current (callers call `current` first).
        match unsafe { result::malloc_sync(class) } {
            Ok(p) => Ok(p),
            Err(_) => {
                // Release the cache and retry once.
                let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
                for (_, v) in pool.free.drain() {
                    for p in v {
                        // SAFETY: `p` came from cuMemAlloc and is not referenced by any tensor.
                        let _ = unsafe { result::free_sync(p) };
                    }
                }
                pool.cached = 0;
                drop(pool);
                // SAFETY: as above.
                unsafe { result::malloc_sync(class) }.map_err(|e| {
                    let (free, total) = result::mem_get_info().unwrap_or((0, 0));
                    Error::Msg(format!(
                        "cuda out of memory on device {} ({}): requested {class} bytes, {free} of {total} bytes free ({e:?})",
                        self.ordinal, self.name
                    ))
                })
            }
        }
    }

    /// Bytes held by live tensors, in the pool's cache, and the peak of the first.
    pub fn memory(&self) -> (usize, usize, usize) {
        let p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        (p.live, p.cached, p.peak)
    }

    /// A cubin for `file` in `KILN_PTX_DIR` this device runs (`kiln kernels build --cubin`): its
    /// own architecture's, else the newest of the same major version and a lower minor (binary
    /// compatible; the `a` builds only on their own architecture); the bytes and a label.
    fn cubin(&self, file: &str) -> Result<Option<(Vec<u8>, String)>> {
        let Some(dir) = std::env::var_os("KILN_PTX_DIR").map(PathBuf::from) else { return Ok(None) };
        let stem = file.trim_end_matches(".cu");
        let (maj, min) = self.compute_capability;
        let mut candidates = vec![self.arch()];
        candidates.extend((0..=min).rev().map(|m| format!("sm_{maj}{m}")));
        for a in candidates {
            let p = dir.join(format!("{stem}.{a}.cubin"));
            if p.is_file() {
                let bytes = std::fs::read(&p).map_err(|e| Error::Msg(format!("{}: {e}", p.display())))?;
                return Ok(Some((bytes, format!("{a} (cubin)"))));
            }
        }
        Ok(None)
    }

    /// PTX for `file` on this device, and the architecture it was built for.
    fn ptx(&self, file: &str, source: &str) -> Result<(String, String)> {
        let stem = file.trim_end_matches(".cu");
        let arch = self.arch();
        if let Some(dir) = std::env::var_os("KILN_PTX_DIR").map(PathBuf::from) {
            let exact = dir.join(format!("{stem}.{arch}.ptx"));
            if exact.is_file() {
                let ptx =
                    std::fs::read_to_string(&exact).map_err(|e| Error::Msg(format!("{}: {e}", exact.display())))?;
                return Ok((ptx, arch));
            }
            // Else the newest older generic one (PTX is compiled forward by the driver; an
            // arch-specific `a` build runs only on its own architecture).
            let cc = self.compute_capability.0 * 10 + self.compute_capability.1;
            let mut best: Option<(i32, PathBuf)> = None;
            for e in std::fs::read_dir(&dir).map_err(|e| Error::Msg(format!("KILN_PTX_DIR {}: {e}", dir.display())))? {
                let p = e.map_err(|e| Error::Msg(format!("KILN_PTX_DIR: {e}")))?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
                let Some(a) = name.strip_prefix(&format!("{stem}.sm_")).and_then(|r| r.strip_suffix(".ptx")) else {
                    continue;
                };
                if let Ok(v) = a.parse::<i32>()
                    && v <= cc
                    && best.as_ref().is_none_or(|(b, _)| v > *b)
                {
                    best = Some((v, p));
                }
            }
            if let Some((v, p)) = best {
                let ptx = std::fs::read_to_string(&p).map_err(|e| Error::Msg(format!("{}: {e}", p.display())))?;
                return Ok((ptx, format!("sm_{v}")));
            }
            if !crate::nvrtc::available() {
                return Err(Error::Msg(format!(
                    "KILN_PTX_DIR {} has no {stem}.sm_XX.ptx for {arch} or older, and NVRTC is not available",
                    dir.display()
                )));
            }
        }
        if !crate::nvrtc::available() {
            return Err(Error::Msg(
                "cuda: neither NVRTC (libnvrtc) nor ahead-compiled PTX (KILN_PTX_DIR, from `kiln kernels build`) \
                 is available"
                    .into(),
            ));
        }
        let (maj, min) = crate::nvrtc::version()?;
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (expanded(source), &arch, maj, min).hash(&mut h);
            h.finish()
        };
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("kiln/ptx"));
        let cached = cache.as_ref().map(|c| c.join(format!("{stem}-{arch}-nvrtc{maj}.{min}-{key:016x}.ptx")));
        if let Some(p) = &cached
            && let Ok(s) = std::fs::read_to_string(p)
        {
            return Ok((s, arch));
        }
        let inc = crate::nvrtc::include_dirs(None);
        let c = crate::nvrtc::compile(file, source, &arch, &inc)?;
        if let (Some(dir), Some(p)) = (&cache, &cached) {
            // Written whole, then renamed: a concurrent reader never sees half a file.
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, &c.ptx).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
        Ok((c.ptx, arch))
    }

    fn function(&self, kernel: &str) -> Result<sys::CUfunction> {
        if let Some(&f) = self.funcs.lock().unwrap_or_else(|e| e.into_inner()).get(kernel) {
            return Ok(f as sys::CUfunction);
        }
        let (file, src) = SOURCES
            .iter()
            .find(|(_, s)| entry_points(s).iter().any(|n| n == kernel))
            .ok_or_else(|| Error::Msg(format!("cuda: no kernel named {kernel} in kernels/*.cu")))?;
        let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        let module = match mods.get(*file) {
            Some(&m) => m as sys::CUmodule,
            None => {
                let (image, arch) = match self.cubin(file)? {
                    Some(c) => c,
                    None => {
                        let (ptx, arch) = self.ptx(file, src)?;
                        if let Some(why) = crate::ptxver::too_new(file, &ptx, self.driver) {
                            return Err(Error::Msg(why));
                        }
                        let ptx = CString::new(ptx).map_err(|_| Error::Msg(format!("{file}: PTX with NUL")))?;
                        (ptx.into_bytes_with_nul(), arch)
                    }
                };
                self.module_arch.lock().unwrap_or_else(|e| e.into_inner()).insert(file.to_string(), arch);
                // SAFETY: the context is current; `image` is a cubin or a NUL-terminated PTX image,
                // alive for the call.
                let m = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }
                    .map_err(|e| err(&format!("loading {file} for {}", self.arch()), e))?;
                mods.insert(file.to_string(), m as usize);
                m
            }
        };
        let name = CString::new(kernel).map_err(|_| Error::Msg("kernel name".into()))?;
        // SAFETY: `module` is loaded and never unloaded; `name` is NUL-terminated.
        let f =
            unsafe { result::module::get_function(module, name) }.map_err(|e| err(&format!("function {kernel}"), e))?;
        self.funcs.lock().unwrap_or_else(|e| e.into_inner()).insert(kernel.to_string(), f as usize);
        Ok(f)
    }

    /// Device-to-device copy bandwidth (GB/s, bytes read + written), measured with events.
    fn measure_bandwidth(&self) -> Result<f64> {
        let bytes = (self.total_mem / 16).min(1 << 30);
        let (a, b) = (self.alloc(bytes)?, self.alloc(bytes)?);
        let mut run = || -> Result<()> {
            // SAFETY: both buffers hold `bytes` bytes; the copy is ordered on our stream.
            unsafe { result::memcpy_dtod_async(b.ptr, a.ptr, bytes, self.h.stream) }.map_err(|e| err("memcpy", e))
        };
        run()?;
        let mut best = f64::MAX;
        for _ in 0..5 {
            best = best.min(self.elapsed(&mut run)?);
        }
        Ok(2.0 * bytes as f64 / best / 1e9)
    }
}

impl Exec for CudaExec {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        self.current()?;
        let class = size_class(bytes);
        let reused = {
            let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            let r = p.free.get_mut(&class).and_then(Vec::pop);
            if r.is_some() {
                p.cached -= class;
            }
            r
        };
        let ptr = match reused {
            Some(p) => p,
            None => self.raw_alloc(class)?,
        };
        {
            let mut p = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            p.live += class;
            p.peak = p.peak.max(p.live);
        }
        if self.poison.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: `ptr` holds `class` bytes; the memset is ordered on our stream.
            unsafe { result::memset_d8_async(ptr, 0xff, class, self.h.stream) }.map_err(|e| err("memset", e))?;
        }
        Ok(DevBuf { ptr, bytes, _keep: Box::new(Pooled { ptr, class, pool: self.pool.clone() }) })
    }
    fn alloc_zeroed(&self, bytes: usize) -> Result<DevBuf> {
        let b = self.alloc(bytes)?;
        // SAFETY: the buffer holds at least `bytes` bytes; ordered on our stream.
        unsafe { result::memset_d8_async(b.ptr, 0, bytes.max(1), self.h.stream) }.map_err(|e| err("memset", e))?;
        Ok(b)
    }
    fn upload(&self, bytes: &[u8]) -> Result<DevBuf> {
        let b = self.alloc(bytes.len())?;
        self.counts.upload();
        // Queued on our stream, so it follows every kernel that used this pooled memory before
        // and precedes every later one: kiln no longer waits for the device itself. `bytes` is
        // pageable memory (kiln never page-locks host memory), which the driver stages before
        // the call returns, so the slice may be dropped at once; while staging, the driver may
        // still wait for the stream (CUDA's documented behaviour for pageable memory) — a ring
        // of page-locked staging buffers would remove that wait.
        // SAFETY: the buffer holds `bytes.len()` bytes; the stream is valid for the life of `self`.
        unsafe { result::memcpy_htod_async(b.ptr, bytes, self.h.stream) }.map_err(|e| err("upload", e))?;
        Ok(b)
    }
    fn download(&self, buf: &DevBuf, offset: usize, len: usize) -> Result<Vec<u8>> {
        if offset + len > buf.bytes {
            return Err(Error::Msg(format!("cuda: read of {len} bytes at {offset} from a {}-byte buffer", buf.bytes)));
        }
        self.synchronize()?;
        let mut v = vec![0u8; len];
        // SAFETY: the range lies inside the buffer and every kernel writing it has finished.
        unsafe { result::memcpy_dtoh_sync(&mut v, buf.ptr + offset as u64) }.map_err(|e| err("download", e))?;
        Ok(v)
    }
    fn launch(&self, kernel: &str, cfg: Launch, params: &[u8]) -> Result<()> {
        self.current()?;
        self.counts.launch();
        let f = self.function(kernel)?;
        let mut words = vec![0u64; params.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..params.len()].copy_from_slice(params);
        let mut args = [words.as_mut_ptr() as *mut c_void];
        let g = (cfg.grid[0], cfg.grid[1], cfg.grid[2]);
        let b = (cfg.block[0], cfg.block[1], cfg.block[2]);
        if cfg.smem > 48 * 1024 {
            // Above 48 KiB a block's dynamic shared memory must be granted to the function first
            // (the driver refuses the launch otherwise; the emulation has no such default cap).
            let attr = sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            // SAFETY: `f` is a function of a module this context loaded and never unloads.
            unsafe { result::function::set_function_attribute(f, attr, cfg.smem as i32) }
                .map_err(|e| err(&format!("{kernel}: {} bytes of dynamic shared memory", cfg.smem), e))?;
        }
        // SAFETY: `f` is a loaded kernel whose one parameter is the struct in `words` (mirrored in
        // kernels.rs); every address inside points to live device memory held by the caller
        // until the stream passes this launch (later frees only return memory to the pool).
        unsafe { result::launch_kernel(f, g, b, cfg.smem as u32, self.h.stream, &mut args) }
            .map_err(|e| err(&format!("launch {kernel} grid {g:?} block {b:?}"), e))?;
        if sync_each_launch() {
            // A fault surfaces at the next synchronizing call, usually far from the kernel that
            // caused it: KILN_CUDA_SYNC=1 waits here and names the launch.
            // SAFETY: our stream is valid for the life of `self`.
            unsafe { result::stream::synchronize(self.h.stream) }.map_err(|e| {
                err(
                    &format!(
                        "kernel {kernel} (grid {g:?}, block {b:?}, {} bytes of dynamic shared memory, {} bytes of parameters) failed (KILN_CUDA_SYNC=1)",
                        cfg.smem,
                        params.len()
                    ),
                    e,
                )
            })?;
        }
        Ok(())
    }
    fn counters(&self) -> kiln_core::backend::DeviceCounters {
        self.counts.read()
    }
    fn synchronize(&self) -> Result<()> {
        self.current()?;
        self.counts.host_sync();
        // SAFETY: our stream is valid for the life of `self`.
        unsafe { result::stream::synchronize(self.h.stream) }.map_err(|e| err("kernel execution", e))
    }
    fn elapsed(&self, run: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.current()?;
        let flags = sys::CUevent_flags::CU_EVENT_DEFAULT;
        let (a, b) = (result::event::create(flags), result::event::create(flags));
        let (a, b) = (a.map_err(|e| err("event", e))?, b.map_err(|e| err("event", e))?);
        // SAFETY: both events were just created and are destroyed below; the stream is ours.
        let ms = unsafe {
            let r = (|| {
                result::event::record(a, self.h.stream).map_err(|e| err("event", e))?;
                run()?;
                result::event::record(b, self.h.stream).map_err(|e| err("event", e))?;
                result::event::synchronize(b).map_err(|e| err("kernel execution", e))?;
                result::event::elapsed(a, b).map_err(|e| err("event", e))
            })();
            let _ = result::event::destroy(a);
            let _ = result::event::destroy(b);
            r?
        };
        Ok(ms as f64 / 1e3)
    }
    fn flush_l2(&self) -> Result<()> {
        let mut l2 = self.l2.lock().unwrap_or_else(|e| e.into_inner());
        if l2.is_none() {
            // SAFETY: valid device handle from the probe.
            let size = unsafe {
                result::device::get_attribute(
                    result::device::get(self.ordinal as i32).map_err(|e| err("cuDeviceGet", e))?,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE,
                )
            }
            .unwrap_or(64 << 20);
            *l2 = Some(self.alloc((size.max(1 << 20) as usize) * 2)?);
        }
        let b = l2.as_ref().map(|b| (b.ptr, b.bytes)).unwrap_or((0, 0));
        // SAFETY: the flush buffer holds `b.1` bytes; ordered on our stream.
        unsafe { result::memset_d8_async(b.0, 0x5a, b.1, self.h.stream) }.map_err(|e| err("memset", e))
    }
    fn peak_memory(&self) -> Option<usize> {
        Some(self.memory().2)
    }
    fn copy_bandwidth(&self) -> Result<Option<f64>> {
        self.measure_bandwidth().map(Some)
    }
    fn set_poison(&self, on: bool) {
        self.poison.store(on, std::sync::atomic::Ordering::Relaxed);
    }
    fn max_block_smem(&self) -> usize {
        // The CUDA programming guide's table (maximum shared memory per block, opted in).
        let kib = match self.compute_capability {
            (7, 0) | (7, 2) => 96,
            (7, 5) => 64,
            (8, 0) | (8, 7) => 163,
            (9, _) | (10, _) => 227,
            (8, _) | (11, _) | (12, _) => 99,
            _ => 48,
        };
        kib * 1024
    }
    fn has_wgmma(&self) -> bool {
        // Loads the GEMM module (NVRTC or KILN_PTX_DIR), then asks what it was built for: a
        // generic sm_90 PTX from an older build dir has no wgmma.
        *self.wgmma.get_or_init(|| {
            self.compute_capability == (9, 0)
                && self.current().is_ok()
                && self.function(crate::GemmVariant::V5.kernel(kiln_core::DType::BF16)).is_ok()
                && self
                    .module_arch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get("matmul.cu")
                    .is_some_and(|a| a == "sm_90a" || a == "sm_90a (cubin)")
        })
    }
    fn tensor_map_2d(&self, t: &crate::exec::TensorMap2d) -> Result<[u64; 16]> {
        use sys::{
            CUtensorMapDataType_enum as Ty, CUtensorMapFloatOOBfill_enum as Oob, CUtensorMapInterleave_enum as Il,
            CUtensorMapL2promotion_enum as L2, CUtensorMapSwizzle_enum as Sw,
        };
        self.current()?;
        let mut map = sys::CUtensorMap { opaque: [0; 16] };
        let dims = t.dims;
        let strides = [t.row_bytes];
        let boxes = t.boxes;
        let elem_strides = [1u32, 1];
        let ty = if t.f16 { Ty::CU_TENSOR_MAP_DATA_TYPE_FLOAT16 } else { Ty::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 };
        let sw = if t.swizzle128 { Sw::CU_TENSOR_MAP_SWIZZLE_128B } else { Sw::CU_TENSOR_MAP_SWIZZLE_NONE };
        // SAFETY: every pointer names a live local array of the length rank 2 implies; the
        // driver writes only `map`. The global address is device memory the caller keeps alive
        // for the launches that use the map.
        unsafe {
            sys::cuTensorMapEncodeTiled(
                &mut map,
                ty,
                2,
                t.base as *mut std::ffi::c_void,
                dims.as_ptr(),
                strides.as_ptr(),
                boxes.as_ptr(),
                elem_strides.as_ptr(),
                Il::CU_TENSOR_MAP_INTERLEAVE_NONE,
                sw,
                L2::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                Oob::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
            )
        }
        .result()
        .map_err(|e| err(&format!("cuTensorMapEncodeTiled {t:?}"), e))?;
        Ok(map.opaque)
    }
    fn describe(&self) -> String {
        let (c0, c1) = self.compute_capability;
        format!(
            "{} (device {}, sm_{c0}{c1}, {:.1} GiB, driver CUDA {}.{})",
            self.name,
            self.ordinal,
            self.total_mem as f64 / (1u64 << 30) as f64,
            self.driver.0,
            self.driver.1
        )
    }
}
