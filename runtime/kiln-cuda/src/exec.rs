//! Where kernels run: the GPU (through the CUDA driver) or the CPU emulation. The backend's ops
//! are written once against [`Exec`].

use std::any::Any;

use kiln_core::Result;

/// Device memory: the address kernels see, and whatever keeps it alive.
pub struct DevBuf {
    pub ptr: u64,
    pub bytes: usize,
    pub(crate) _keep: Box<dyn Any + Send + Sync>,
}

/// A grid launch.
#[derive(Clone, Copy, Debug)]
pub struct Launch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: usize,
}

impl Launch {
    /// A 1-D grid of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: usize, threads: u32) -> Launch {
        Launch { grid: [blocks.clamp(1, 65_535) as u32, 1, 1], block: [threads, 1, 1], smem: 0 }
    }
    /// The same grid with blocks of `threads`.
    pub fn with_block(mut self, threads: u32) -> Launch {
        self.block = [threads, 1, 1];
        self
    }
}

/// A 2-D tensor of 16-bit values for TMA loads: `dims[0]` contiguous values per row, `dims[1]`
/// rows `row_bytes` apart (a multiple of 16; `base` 16-byte aligned), read in boxes of
/// `boxes[0] × boxes[1]`, stored in shared memory with the 128-byte swizzle (`swizzle128`, which
/// wants 128-byte box rows) or plainly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorMap2d {
    pub base: u64,
    pub dims: [u64; 2],
    pub row_bytes: u64,
    pub boxes: [u32; 2],
    pub swizzle128: bool,
    /// f16 rather than bf16 (the values are copied as bits either way).
    pub f16: bool,
}

/// Why the driver would refuse `t` (cuTensorMapEncodeTiled's rules for a 2-D map of 16-bit
/// values), or None: the emulation holds its maps to the same rules.
pub fn tensor_map_unfit(t: &TensorMap2d) -> Option<&'static str> {
    let row = 2 * u64::from(t.boxes[0]);
    if !t.base.is_multiple_of(16) {
        Some("the base is not 16-byte aligned")
    } else if !t.row_bytes.is_multiple_of(16) || t.row_bytes >= 1 << 40 {
        Some("the row stride is not a multiple of 16 bytes below 2^40")
    } else if t.dims.iter().any(|&d| d == 0 || d > 1 << 32) {
        Some("a dimension is outside 1 … 2^32")
    } else if t.boxes.iter().any(|&b| b == 0 || b > 256) || !row.is_multiple_of(16) {
        Some("a box extent is outside 1 … 256 or its rows are not whole 16-byte units")
    } else if t.swizzle128 && row > 128 {
        Some("a 128-byte-swizzled box's rows are wider than 128 bytes")
    } else {
        None
    }
}

/// The emulation's encoding of a tensor map (kernels/emu/kiln_emu.h `TmaMap`); the driver's
/// rules apply ([`tensor_map_unfit`]).
pub fn emulated_tensor_map(t: &TensorMap2d) -> Result<[u64; 16]> {
    if let Some(why) = tensor_map_unfit(t) {
        return Err(kiln_core::Error::Msg(format!("tensor map {t:?}: {why}")));
    }
    let mut w = [0u64; 16];
    w[0] = 0x5041_4d41_4d54_4e4c; // kTmaMagic
    w[1] = t.base;
    w[2] = t.dims[0];
    w[3] = t.dims[1];
    w[4] = t.row_bytes;
    w[5] = u64::from(t.boxes[0]) | u64::from(t.boxes[1]) << 32;
    w[6] = 2 | if t.swizzle128 { 3u64 << 32 } else { 0 };
    Ok(w)
}

/// An executor's running counts ([`Exec::counters`]): each increment is one relaxed atomic add.
#[derive(Default)]
pub struct Counters {
    launches: std::sync::atomic::AtomicU64,
    uploads: std::sync::atomic::AtomicU64,
    host_syncs: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub fn launch(&self) {
        self.launches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn upload(&self) {
        self.uploads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn host_sync(&self) {
        self.host_syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn read(&self) -> kiln_core::backend::DeviceCounters {
        let r = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        kiln_core::backend::DeviceCounters {
            launches: r(&self.launches),
            uploads: r(&self.uploads),
            host_syncs: r(&self.host_syncs),
        }
    }
}

/// Memory and launches on one device.
pub trait Exec: Send + Sync {
    /// "cuda" or "cuda-emu".
    fn name(&self) -> &'static str;
    /// Uninitialized memory (the emulation fills it with NaN bytes, so an output element no
    /// kernel wrote cannot pass a comparison).
    fn alloc(&self, bytes: usize) -> Result<DevBuf>;
    /// Memory set to zero.
    fn alloc_zeroed(&self, bytes: usize) -> Result<DevBuf>;
    /// Copies host bytes into a new buffer.
    fn upload(&self, bytes: &[u8]) -> Result<DevBuf>;
    /// Copies `len` bytes at `offset` back to the host.
    fn download(&self, buf: &DevBuf, offset: usize, len: usize) -> Result<Vec<u8>>;
    /// Runs `kernel` with its parameter struct's bytes.
    fn launch(&self, kernel: &str, cfg: Launch, params: &[u8]) -> Result<()>;
    /// Waits for every launch so far.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    /// Seconds `run` takes on the device (events on a GPU; the host clock in the emulation).
    fn elapsed(&self, run: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let t = std::time::Instant::now();
        run()?;
        self.synchronize()?;
        Ok(t.elapsed().as_secs_f64())
    }
    /// Evicts the device's L2 cache (between timed repeats), where there is one.
    fn flush_l2(&self) -> Result<()> {
        Ok(())
    }
    /// Fill new allocations with NaN bytes (the parity suite's poisoned outputs).
    fn set_poison(&self, _on: bool) {}
    /// The device in words.
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// The most device memory live tensors have held, where the backend counts it.
    fn peak_memory(&self) -> Option<usize> {
        None
    }
    /// Device-to-device copy bandwidth in GB/s (bytes read + written), where it means something.
    fn copy_bandwidth(&self) -> Result<Option<f64>> {
        Ok(None)
    }
    /// The emulation's race checker on or off (nothing elsewhere).
    fn set_racecheck(&self, _on: bool) {}
    /// Launches, uploads and host synchronizations so far (a download is one synchronization;
    /// an upload is queued on the stream and is not).
    fn counters(&self) -> kiln_core::backend::DeviceCounters {
        Default::default()
    }
    /// The kernels launched so far, where the backend keeps count (the emulation).
    fn launched(&self) -> Vec<String> {
        Vec::new()
    }
    /// Profile every launch from now on (`Some`), or stop (`None`); false where the backend
    /// cannot (only the emulation sees each access).
    fn set_profile(&self, _opts: Option<crate::prof::dynamic::ProfileOpts>) -> bool {
        false
    }
    /// What was profiled since `set_profile` or the last take.
    fn take_profile(&self) -> crate::prof::dynamic::Session {
        Default::default()
    }
    /// The most shared memory one block may use here (static and dynamic, after opting in):
    /// kernels that need more take another path. The emulation has Hopper's 227 KiB.
    fn max_block_smem(&self) -> usize {
        227 * 1024
    }
    /// Whether the `wgmma` kernels run here: a Hopper GPU (compute capability 9.0) whose GEMM
    /// module is built for sm_90a, or the emulation (which implements the instruction).
    fn has_wgmma(&self) -> bool {
        false
    }
    /// A TMA tensor map of `t` in the device's encoding (the driver's on a GPU).
    fn tensor_map_2d(&self, t: &TensorMap2d) -> Result<[u64; 16]> {
        emulated_tensor_map(t)
    }
}
