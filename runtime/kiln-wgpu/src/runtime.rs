//! The wgpu device behind kiln's `Backend`: one adapter opened once per process, a buffer pool,
//! a pipeline cache per shader entry point, and one launch helper every op goes through. This
//! layer knows buffers, not tensors: wrapping buffers as tensors is `backend::memory`'s.
//!
//! Conventions shared with every shader (`shaders/<op>.wgsl`):
//! * binding 0 is a uniform `Params` struct mirrored by a `#[repr(C)]` bytemuck struct here;
//!   bindings 1.. are storage buffers in the order the launcher passes them, read-only (`R`) or
//!   read-write (`W`); the bind-group layout is explicit, built from that list, so an entry
//!   point need not use every binding of its file;
//! * tensors on the device are f32 or i32 (4-byte elements), contiguous, starting at element 0
//!   of their buffer (a view with an offset is copied out first);
//! * a 1-D launch of `n` threads runs `ceil(n/64)` workgroups of 64 folded into a 2-D grid of at
//!   most 65535 per dimension; shaders rebuild the linear index from `num_workgroups`.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use kiln_core::{Error, Result};
use wgpu::util::DeviceExt;

/// Threads per workgroup of the 1-D kernels (each shader declares the same).
pub const WG: u32 = 64;
const MAX_GROUPS: u32 = 65535;

/// A device buffer; dropping it returns the buffer to the pool.
pub struct WgpuBuf {
    pub(crate) buf: Option<wgpu::Buffer>,
    /// Bytes in use (the pooled buffer may be larger).
    pub(crate) bytes: u64,
}

impl WgpuBuf {
    /// The wgpu buffer (for reading it back with [`Device::read`]).
    pub fn raw(&self) -> &wgpu::Buffer {
        // `buf` is only taken in `drop`.
        self.buf.as_ref().expect("buffer present until drop")
    }
}

impl Drop for WgpuBuf {
    fn drop(&mut self) {
        if let (Some(b), Ok(dev)) = (self.buf.take(), device()) {
            dev.release(b);
        }
    }
}

/// A compiled entry point and its bind-group layout.
pub type Pipeline = (wgpu::ComputePipeline, wgpu::BindGroupLayout);

/// The opened adapter.
pub struct Device {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub shader_f16: bool,
    pub limits: wgpu::Limits,
    pipelines: Mutex<HashMap<(&'static str, &'static str), Arc<Pipeline>>>,
    /// The adapter writes GPU timestamps (benchmarks time kernels with them when on).
    pub timestamps: bool,
    /// The adapter has subgroup operations (the reductions use them where the backend instance
    /// says so: `WgpuBackend::with_subgroups`).
    pub subgroups: bool,
    /// While [`Device::timed`] runs: the kernels' GPU seconds so far.
    timing: Mutex<Option<f64>>,
    /// Free buffers by size class (powers of two from 256 bytes).
    pool: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Fill every buffer handed out (new or pooled) with NaN bytes ([`Device::set_poison`]).
    poison: std::sync::atomic::AtomicBool,
}

static DEVICE: OnceLock<std::result::Result<Device, String>> = OnceLock::new();
static CHOICE: OnceLock<String> = OnceLock::new();

thread_local! {
    /// A lower storage-binding size for the launches of this thread ([`Device::with_max_binding`]).
    static MAX_BINDING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The process's wgpu device, opened on first use: the adapter [`choose`] named, else
/// `KILN_WGPU_ADAPTER`, else the first one (`WGPU_BACKEND` limits the wgpu backends searched).
pub fn device() -> Result<&'static Device> {
    DEVICE.get_or_init(open).as_ref().map_err(|e| Error::Msg(e.clone()))
}

/// Picks the adapter before the device opens (`--device`): an index into the adapters wgpu
/// lists (as `kiln info` shows them) or part of a name. Returns false when the device is
/// already open or a choice was already made.
pub fn choose(spec: &str) -> bool {
    DEVICE.get().is_none() && CHOICE.set(spec.to_string()).is_ok()
}

fn open() -> std::result::Result<Device, String> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    if let Ok(b) = std::env::var("WGPU_BACKEND") {
        desc.backends = wgpu::Backends::from_comma_list(&b);
    }
    let instance = wgpu::Instance::new(desc);
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    let want = CHOICE.get().cloned().or_else(|| std::env::var("KILN_WGPU_ADAPTER").ok());
    let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
    let adapter = adapters
        .into_iter()
        .enumerate()
        .find(|(i, a)| {
            want.as_deref()
                .is_none_or(|w| w.parse::<usize>().map_or_else(|_| a.get_info().name.contains(w), |n| n == *i))
        })
        .map(|(_, a)| a)
        .ok_or_else(|| match &want {
            Some(w) => format!("wgpu: no adapter {w:?} (--device or KILN_WGPU_ADAPTER; adapters here: {names:?})"),
            None => "wgpu: no adapter (install a Vulkan driver, e.g. mesa-vulkan-drivers for lavapipe)".to_string(),
        })?;
    let info = adapter.get_info();
    let shader_f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
    let timestamps = adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY);
    let subgroups = adapter.features().contains(wgpu::Features::SUBGROUP);
    let al = adapter.limits();
    // Ask for the adapter's own storage limits: the defaults (128 MiB bindings) are too small
    // for an embedding table.
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: al.max_storage_buffer_binding_size,
        max_buffer_size: al.max_buffer_size,
        max_storage_buffers_per_shader_stage: al.max_storage_buffers_per_shader_stage.min(8),
        max_compute_workgroup_storage_size: al.max_compute_workgroup_storage_size,
        ..wgpu::Limits::default()
    };
    let dd = wgpu::DeviceDescriptor {
        label: Some("kiln"),
        required_features: (if timestamps { wgpu::Features::TIMESTAMP_QUERY } else { wgpu::Features::empty() })
            | (if subgroups { wgpu::Features::SUBGROUP } else { wgpu::Features::empty() })
            | (if shader_f16 { wgpu::Features::SHADER_F16 } else { wgpu::Features::empty() }),
        required_limits: limits.clone(),
        ..Default::default()
    };
    let (device, queue) =
        pollster::block_on(adapter.request_device(&dd)).map_err(|e| format!("wgpu: opening {}: {e}", info.name))?;
    Ok(Device {
        device,
        queue,
        info,
        shader_f16,
        limits,
        pipelines: Mutex::new(HashMap::new()),
        pool: Mutex::new(HashMap::new()),
        timestamps,
        subgroups,
        timing: Mutex::new(None),
        poison: std::sync::atomic::AtomicBool::new(false),
    })
}

fn class(bytes: u64) -> u64 {
    bytes.max(256).next_power_of_two()
}

/// The usages of every pooled buffer (any buffer can be an op's input or output, or be read).
const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl Device {
    /// A buffer of at least `bytes` (contents undefined), from the pool when one is free.
    pub fn alloc(&self, bytes: u64) -> Result<WgpuBuf> {
        let limit = self.limits.max_buffer_size;
        let padded = bytes.max(4).div_ceil(4) * 4;
        if padded > limit {
            return Err(Error::Msg(format!(
                "wgpu: a {bytes}-byte tensor exceeds {}'s buffer size limit of {limit} bytes",
                self.info.name
            )));
        }
        // Pooled sizes are powers of two; a tensor whose class would pass the limit gets a
        // buffer of its own size (its class is then its exact size).
        let size = if class(bytes) > limit { padded } else { class(bytes) };
        let reused = self.pool.lock().ok().and_then(|mut p| p.get_mut(&size).and_then(Vec::pop));
        let buf = reused.unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: USAGE,
                mapped_at_creation: false,
            })
        });
        if self.poison.load(std::sync::atomic::Ordering::Relaxed) {
            // Queued before any launch that writes it: an element no kernel writes stays NaN.
            self.queue.write_buffer(&buf, 0, &vec![0xFF; size as usize]);
        }
        Ok(WgpuBuf { buf: Some(buf), bytes })
    }

    /// Whether buffers are handed out filled with NaN bytes (0xFF), new and pooled alike, so
    /// that an output element a kernel forgets to write cannot inherit a correct value from an
    /// earlier op (the parity tests and `kiln selftest` turn it on; it costs a write per buffer).
    pub fn set_poison(&self, on: bool) {
        self.poison.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn release(&self, b: wgpu::Buffer) {
        if let Ok(mut p) = self.pool.lock() {
            p.entry(b.size()).or_default().push(b);
        }
    }

    /// A compute pipeline for `entry` of `src` with storage bindings `writable` (compiled once;
    /// `name` and `entry` key the cache: an entry point is always launched with the same list).
    pub fn pipeline(
        &self,
        name: &'static str,
        src: &'static str,
        entry: &'static str,
        writable: &[bool],
    ) -> Result<Arc<Pipeline>> {
        if let Some(p) = self.pipelines.lock().ok().and_then(|c| c.get(&(name, entry)).cloned()) {
            return Ok(p);
        }
        let entry_of = |binding: u32, ty: wgpu::BufferBindingType| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
            count: None,
        };
        let mut le = vec![entry_of(0, wgpu::BufferBindingType::Uniform)];
        for (i, &w) in writable.iter().enumerate() {
            le.push(entry_of(i as u32 + 1, wgpu::BufferBindingType::Storage { read_only: !w }));
        }
        if std::env::var("KILN_DEBUG").is_ok_and(|v| v.split(',').any(|x| x == "wgsl")) {
            eprintln!("// shaders/{name}.wgsl, entry {entry}\n{src}");
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        });
        let bgl =
            self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(entry), entries: &le });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(&bgl)],
            immediate_size: 0,
        });
        let p = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Msg(format!("wgpu: shaders/{name}.wgsl ({entry}): {e}")));
        }
        let p = Arc::new((p, bgl));
        if let Ok(mut c) = self.pipelines.lock() {
            c.insert((name, entry), p.clone());
        }
        Ok(p)
    }

    /// Runs `entry` over `groups` workgroups with `params` at binding 0 and `bufs` at 1.., and
    /// submits it.
    pub fn launch<P: bytemuck::Pod>(
        &self,
        (name, src): (&'static str, &'static str),
        entry: &'static str,
        params: &P,
        bufs: &[Bind<'_>],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let writable: Vec<bool> = bufs.iter().map(Bind::writable).collect();
        let pipe = self.pipeline(name, src, entry, &writable)?;
        let uni = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uni.as_entire_binding() }];
        for (i, b) in bufs.iter().enumerate() {
            let (buf, offset, size) = b.range();
            if size > self.max_binding() {
                return Err(Error::Msg(format!(
                    "wgpu {entry} (shaders/{name}.wgsl): binding {} is {size} bytes, over {}'s storage binding limit of {} bytes, and this op does not split its tensors yet",
                    i + 1,
                    self.info.name,
                    self.max_binding()
                )));
            }
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: buf.raw(),
                    offset,
                    size: std::num::NonZeroU64::new(size),
                }),
            });
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.1,
            entries: &entries,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(entry) });
        let timed = self.timestamps && self.timing.lock().is_ok_and(|t| t.is_some());
        let qs = timed.then(|| {
            self.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("kiln timing"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            })
        });
        {
            let tw = qs.as_ref().map(|q| wgpu::ComputePassTimestampWrites {
                query_set: q,
                beginning_of_pass_write_index: Some(0),
                end_of_pass_write_index: Some(1),
            });
            let mut pass =
                enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(entry), timestamp_writes: tw });
            pass.set_pipeline(&pipe.0);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups.0.max(1), groups.1.max(1), groups.2.max(1));
        }
        let resolved = qs.as_ref().map(|q| {
            let b = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kiln timing"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            enc.resolve_query_set(q, 0..2, &b, 0);
            b
        });
        self.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Msg(format!("wgpu: launching {entry} (shaders/{name}.wgsl): {e}")));
        }
        if let Some(b) = resolved {
            let raw = self.read(&b, 0, 16)?;
            let t: Vec<u64> = bytemuck::pod_collect_to_vec(&raw);
            let secs = t[1].saturating_sub(t[0]) as f64 * self.queue.get_timestamp_period() as f64 * 1e-9;
            if let Ok(mut g) = self.timing.lock()
                && let Some(acc) = g.as_mut()
            {
                *acc += secs;
            }
        }
        Ok(())
    }

    /// The largest storage binding kiln makes, in bytes: the adapter's limit unless lowered for
    /// this thread by [`Device::with_max_binding`]. Tensors may be larger (up to
    /// `max_buffer_size`); the ops that bind one split their launches (all but attention, which
    /// says so).
    pub fn max_binding(&self) -> u64 {
        let adapter = self.limits.max_storage_buffer_binding_size;
        MAX_BINDING.with(Cell::get).map_or(adapter, |b| b.min(adapter))
    }

    /// Runs `f` with the binding size kiln uses lowered to `bytes` for the launches made on this
    /// thread, so the splitting of large tensors is exercised at small shapes on any adapter
    /// (tests); other threads, and this one afterwards, keep the adapter's.
    pub fn with_max_binding<R>(&self, bytes: u64, f: impl FnOnce() -> R) -> R {
        let floor = 4 * u64::from(self.limits.min_storage_buffer_offset_alignment);
        let v = bytes.clamp(floor, self.limits.max_storage_buffer_binding_size) / 4 * 4;
        /// Puts the previous value back, also when `f` panics.
        struct Restore(Option<u64>);
        impl Drop for Restore {
            fn drop(&mut self) {
                MAX_BINDING.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(MAX_BINDING.with(|c| c.replace(Some(v))));
        f()
    }

    /// Runs `f` and returns, with its result, the GPU time of the kernels it launched (from
    /// timestamp queries; `None` where the adapter has none). Each timed launch waits for its
    /// kernel, so this is for benchmarks only.
    pub fn timed<R>(&self, f: impl FnOnce() -> R) -> (R, Option<f64>) {
        if !self.timestamps {
            return (f(), None);
        }
        if let Ok(mut t) = self.timing.lock() {
            *t = Some(0.0);
        }
        let r = f();
        let secs = self.timing.lock().ok().and_then(|mut t| t.take());
        (r, secs)
    }

    /// A grid of `ceil(n / WG)` workgroups folded into two dimensions.
    pub fn grid(n: usize) -> (u32, u32, u32) {
        let g = (n as u64).div_ceil(WG as u64).max(1);
        let x = g.min(MAX_GROUPS as u64) as u32;
        (x, g.div_ceil(x as u64) as u32, 1)
    }

    /// Copies `bytes` from `src` into a new buffer.
    pub fn copy(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<WgpuBuf> {
        let dst = self.alloc(bytes)?;
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy") });
        enc.copy_buffer_to_buffer(src, offset, dst.raw(), 0, bytes.div_ceil(4) * 4);
        self.queue.submit([enc.finish()]);
        Ok(dst)
    }

    /// Reads `bytes` at `offset` of `src` back to the host.
    pub fn read(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let padded = bytes.div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read"),
            size: padded.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read") });
        if padded > 0 {
            enc.copy_buffer_to_buffer(src, offset, &staging, 0, padded);
        }
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| Error::Msg(format!("wgpu: waiting for the device: {e}")))?;
        rx.recv()
            .map_err(|e| Error::Msg(format!("wgpu: reading back: {e}")))?
            .map_err(|e| Error::Msg(format!("wgpu: mapping a buffer: {e}")))?;
        let view =
            staging.get_mapped_range(..).map_err(|e| Error::Msg(format!("wgpu: reading a mapped buffer: {e}")))?;
        let out = view[..bytes as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Uploads raw bytes into a new buffer.
    pub fn write(&self, bytes: &[u8]) -> Result<WgpuBuf> {
        let b = self.alloc(bytes.len() as u64)?;
        if !bytes.is_empty() {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4) * 4, 0);
            self.queue.write_buffer(b.raw(), 0, &padded);
        }
        Ok(b)
    }
}

/// A storage binding: read-only or read-write, of a whole buffer or of `size` bytes from
/// `offset` (a multiple of the adapter's `min_storage_buffer_offset_alignment`).
#[derive(Clone, Copy)]
pub enum Bind<'a> {
    R(&'a WgpuBuf),
    W(&'a WgpuBuf),
    RAt(&'a WgpuBuf, u64, u64),
    WAt(&'a WgpuBuf, u64, u64),
}

impl Bind<'_> {
    fn writable(&self) -> bool {
        matches!(self, Bind::W(_) | Bind::WAt(..))
    }

    /// The buffer, offset and size bound (sizes padded to whole 4-byte words).
    fn range(&self) -> (&WgpuBuf, u64, u64) {
        match *self {
            Bind::R(b) | Bind::W(b) => (b, 0, b.bytes.max(4).div_ceil(4) * 4),
            Bind::RAt(b, o, s) | Bind::WAt(b, o, s) => (b, o, s.max(4).div_ceil(4) * 4),
        }
    }
}

/// One binding of a launch split by rows ([`Device::launch_rows`]).
#[derive(Clone, Copy)]
pub enum Part<'a> {
    /// Bound whole in every launch (a norm's weight, RoPE's frequencies).
    Whole(Bind<'a>),
    /// `row` 4-byte elements per row, read-only: each launch binds its rows.
    R(&'a WgpuBuf, usize),
    /// Likewise, written.
    W(&'a WgpuBuf, usize),
}

impl Device {
    /// Launches `entry` over `rows` independent rows, as one launch when every per-row buffer fits
    /// a storage binding, else as several over runs of rows, each binding its rows of the
    /// `Part::R`/`Part::W` buffers. `params(first, rows)` and `groups(rows)` give a launch's
    /// parameters and grid for its rows: the kernels need not know they were split (a reduction
    /// over rows accumulates after the first launch, `first > 0`). A run that starts off the
    /// adapter's offset alignment goes through a copy (in, and back out for `Part::W`).
    pub fn launch_rows<P: bytemuck::Pod>(
        &self,
        src: (&'static str, &'static str),
        entry: &'static str,
        parts: &[Part<'_>],
        rows: usize,
        params: impl Fn(usize, usize) -> P,
        groups: impl Fn(usize) -> (u32, u32, u32),
    ) -> Result<()> {
        let align = u64::from(self.limits.min_storage_buffer_offset_alignment).max(4);
        let mut per = rows.max(1) as u64;
        for part in parts {
            if let Part::R(_, e) | Part::W(_, e) = *part {
                per = per.min(self.max_binding().saturating_sub(align) / (e.max(1) * 4) as u64);
            }
        }
        if per == 0 {
            return Err(Error::Msg(format!(
                "wgpu {entry}: one row is larger than {}'s storage binding limit of {} bytes",
                self.info.name,
                self.max_binding()
            )));
        }
        let chunk = per as usize;
        for r0 in (0..rows.max(1)).step_by(chunk) {
            let n = chunk.min(rows - r0.min(rows));
            // (range, temporary copy) per part.
            let mut staged: Vec<(u64, u64, Option<WgpuBuf>)> = Vec::with_capacity(parts.len());
            for part in parts {
                staged.push(match *part {
                    Part::Whole(_) => (0, 0, None),
                    Part::R(b, e) | Part::W(b, e) => {
                        let e = (e * 4) as u64;
                        let off = (r0 as u64 * e).min(b.bytes);
                        let size = (n as u64 * e).min(b.bytes - off);
                        let copy = if off % align != 0 { Some(self.copy(b.raw(), off, size)?) } else { None };
                        (off, size, copy)
                    }
                });
            }
            let binds: Vec<Bind<'_>> = parts
                .iter()
                .zip(&staged)
                .map(|(part, (off, size, copy))| match (*part, copy) {
                    (Part::Whole(b), _) => b,
                    (Part::R(..), Some(c)) => Bind::R(c),
                    (Part::W(..), Some(c)) => Bind::W(c),
                    (Part::R(b, _), None) => Bind::RAt(b, *off, *size),
                    (Part::W(b, _), None) => Bind::WAt(b, *off, *size),
                })
                .collect();
            self.launch(src, entry, &params(r0, n), &binds, groups(n))?;
            for (part, (off, size, copy)) in parts.iter().zip(&staged) {
                if let (Part::W(b, _), Some(c)) = (part, copy) {
                    let mut enc = self
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("copy back") });
                    enc.copy_buffer_to_buffer(c.raw(), 0, b.raw(), *off, size.div_ceil(4) * 4);
                    self.queue.submit([enc.finish()]);
                }
            }
        }
        Ok(())
    }
}

/// A sub-range of a buffer to bind: elements `start .. start + len` (of `elem` bytes each) as a
/// binding that starts at an aligned offset, and the element offset of `start` inside it.
pub fn sub_range(dev: &Device, start: u64, len: u64, elem: u64) -> (u64, u64, u32) {
    let align = u64::from(dev.limits.min_storage_buffer_offset_alignment).max(4);
    let offset = start * elem / align * align;
    let size = (start + len) * elem - offset;
    (offset, size, ((start * elem - offset) / elem) as u32)
}
