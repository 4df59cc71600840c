//! GGUF (llama.cpp's model format), memory-mapped and validated before use.
//!
//! Layout: magic `GGUF`, version (2 or 3), tensor count (u64), metadata count (u64), metadata
//! key/values, tensor infos (name, dims in ggml order — fastest first —, type, offset), padding
//! to `general.alignment` (default 32), tensor data. Every count is checked against the bytes
//! left before anything is allocated, every string is UTF-8, every tensor's type is known, its
//! offset aligned and its data inside the file — a corrupt file is an error naming what is
//! wrong, never a panic, a huge allocation or an out-of-bounds read.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_core::Tensor;
use kiln_core::quant::{GgmlType, dequantize};
use memmap2::Mmap;

use crate::{KilnError, Result};

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// As an unsigned integer, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) if v >= 0 => Some(v as u64),
            MetaValue::I16(v) if v >= 0 => Some(v as u64),
            MetaValue::I32(v) if v >= 0 => Some(v as u64),
            MetaValue::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    /// As a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        if let MetaValue::Str(s) = self { Some(s) } else { None }
    }
}

/// One tensor's description.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: `dims[0]` is the fastest-varying (a row's length).
    pub dims: Vec<u64>,
    /// Absolute byte offset in the file.
    pub start: usize,
    pub n_bytes: usize,
}

impl GgufTensor {
    /// Number of values.
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Shape in row-major (PyTorch/safetensors) order.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
    pub alignment: usize,
    map: Arc<Mmap>,
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

const MAX_DIMS: u32 = 4;

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> KilnError {
        KilnError::Msg(format!("{}: not a valid GGUF file: {what} (at byte {})", self.path.display(), self.pos))
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| self.err(&format!("truncated while reading {what}")))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }
    /// A count that must fit in the bytes left at `min_size` bytes per item.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize> {
        let n = self.u64(what)?;
        if n > (self.left() / min_size.max(1)) as u64 {
            return Err(self.err(&format!("{what} {n} cannot fit in the {} bytes left", self.left())));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let s = self.take(n, what)?;
        std::str::from_utf8(s).map(str::to_string).map_err(|_| self.err(&format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>(key)?[0]),
            1 => MetaValue::I8(self.arr::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => match self.arr::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.err(&format!("metadata `{key}`: bool byte {b}"))),
            },
            8 => MetaValue::Str(self.string(key)?),
            9 => {
                if depth > 0 {
                    return Err(self.err(&format!("metadata `{key}`: nested arrays are not supported")));
                }
                let item = self.u32(key)?;
                let min = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    _ => return Err(self.err(&format!("metadata `{key}`: unknown array item type {item}"))),
                };
                let n = self.count(&format!("metadata `{key}` array length"), min)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(item, key, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr(key)?)),
            other => return Err(self.err(&format!("metadata `{key}`: unknown value type {other}"))),
        })
    }
}

/// The validated header of a GGUF file: every count, size and offset checked against `b`.
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Vec<(String, MetaValue)>,
    pub tensors: Vec<GgufTensor>,
    pub alignment: usize,
}

/// Parses and validates the header of the GGUF bytes `b` (`path` names them in errors). The
/// fuzz target `gguf_header` (fuzz/) drives this with arbitrary bytes.
pub fn parse_header(b: &[u8], path: &Path) -> Result<GgufHeader> {
    let mut c = Cursor { b, pos: 0, path };
    if c.take(4, "magic").ok() != Some(b"GGUF".as_slice()) {
        return Err(KilnError::Msg(format!("{}: not a GGUF file (magic is not `GGUF`)", path.display())));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(c.err(&format!("version {version} is not supported (2, 3)")));
    }
    // Minimal sizes: a tensor info is ≥ 24 bytes, a key/value ≥ 13.
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.count("metadata count", 13)?;
    let mut metadata = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let v = c.value(ty, &key, 0)?;
        metadata.push((key, v));
    }
    if n_tensors > (c.left() / 24) as u64 {
        return Err(c.err(&format!("tensor count {n_tensors} cannot fit in the {} bytes left", c.left())));
    }
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => 32,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => return Err(c.err(&format!("general.alignment {v:?} must be a power of two"))),
        },
    };
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let nd = c.u32(&name)?;
        if nd == 0 || nd > MAX_DIMS {
            return Err(c.err(&format!("tensor `{name}`: {nd} dimensions (1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(c.u64(&name)?);
        }
        let tid = c.u32(&name)?;
        let ty = GgmlType::from_id(tid).ok_or_else(|| c.err(&format!("tensor `{name}`: unknown type id {tid}")))?;
        let off = c.u64(&name)?;
        infos.push((name, dims, ty, off));
    }
    let data_start = c.pos.div_ceil(alignment) * alignment;
    // Even an empty tensor's offset must lie inside the file (found by the fuzz target: a
    // zero-sized tensor past the end passed the size check, and slicing it would panic).
    if !infos.is_empty() && data_start > b.len() {
        return Err(c.err(&format!("tensor data would start at byte {data_start}, past the end of the file")));
    }
    let data_len = b.len().saturating_sub(data_start) as u64;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ty, off) in infos {
        let bad = |what: String| KilnError::Msg(format!("{}: tensor `{name}`: {what}", path.display()));
        let numel = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
        if dims[0] % ty.block().0 as u64 != 0 {
            return Err(bad(format!(
                "row length {} is not a multiple of the {} block size {}",
                dims[0],
                ty.name(),
                ty.block().0
            )));
        }
        let n_bytes =
            ty.bytes_for(numel).ok_or_else(|| bad(format!("{numel} values of {} do not fit in a file", ty.name())))?;
        if off % alignment as u64 != 0 {
            return Err(bad(format!("data offset {off} is not aligned to {alignment}")));
        }
        if off.checked_add(n_bytes).is_none_or(|e| e > data_len) {
            return Err(bad(format!("data {off}+{n_bytes} lies outside the file's {data_len} data bytes")));
        }
        tensors.push(GgufTensor { name, ty, dims, start: data_start + off as usize, n_bytes: n_bytes as usize });
    }
    Ok(GgufHeader { version, metadata, tensors, alignment })
}

impl GgufFile {
    /// Opens and validates a GGUF file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| KilnError::io(path, e))?;
        // SAFETY: read-only map of a model file kiln does not modify while it is open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| KilnError::io(path, e))?;
        let GgufHeader { version, metadata, tensors, alignment } = parse_header(&map, path)?;
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, alignment, map: Arc::new(map) })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A tensor's description by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's raw bytes (a view of the map).
    pub fn bytes(&self, t: &GgufTensor) -> &[u8] {
        &self.map[t.start..t.start + t.n_bytes]
    }

    /// A tensor as a view of the map, in row-major shape, with the given dtype.
    pub fn view(&self, t: &GgufTensor, dtype: kiln_core::DType) -> Result<Tensor> {
        Tensor::from_mmap(self.map.clone(), t.start, dtype, t.shape()).map_err(|e| KilnError::Tensor {
            path: self.path.clone(),
            tensor: t.name.clone(),
            detail: e.to_string(),
        })
    }

    /// A tensor dequantized to f32, in row-major shape.
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensor(name)
            .ok_or_else(|| KilnError::MissingTensor { path: self.path.clone(), tensor: name.into() })?;
        let mut out = vec![0f32; t.numel() as usize];
        dequantize(t.ty, self.bytes(t), &mut out).map_err(|e| KilnError::Tensor {
            path: self.path.clone(),
            tensor: name.into(),
            detail: e.to_string(),
        })?;
        Ok(Tensor::from_vec(out, t.shape())?)
    }

    /// File size in bytes.
    pub fn file_bytes(&self) -> usize {
        self.map.len()
    }
}
