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
    Array(MetaArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array, stored as a typed vector: an item costs what it costs in the file (a
/// tokenizer's 150 000 token types are 600 KB, not 32 bytes each as a vector of values).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    Str(StrArray),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// Strings stored end to end in one buffer with their end offsets (no per-string allocation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StrArray {
    text: String,
    ends: Vec<usize>,
}

impl StrArray {
    /// Number of strings.
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// The `i`-th string.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)?;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start..end)
    }
    /// Every string in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
    /// Appends one string.
    pub fn push(&mut self, s: &str) {
        self.text.push_str(s);
        self.ends.push(self.text.len());
    }
}

impl<S: AsRef<str>> FromIterator<S> for StrArray {
    fn from_iter<I: IntoIterator<Item = S>>(it: I) -> StrArray {
        let mut a = StrArray::default();
        for s in it {
            a.push(s.as_ref());
        }
        a
    }
}

impl MetaArray {
    /// Number of items.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::Str(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }
    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The GGUF type id of the items.
    pub fn item_type(&self) -> u32 {
        match self {
            MetaArray::U8(_) => 0,
            MetaArray::I8(_) => 1,
            MetaArray::U16(_) => 2,
            MetaArray::I16(_) => 3,
            MetaArray::U32(_) => 4,
            MetaArray::I32(_) => 5,
            MetaArray::F32(_) => 6,
            MetaArray::Bool(_) => 7,
            MetaArray::Str(_) => 8,
            MetaArray::U64(_) => 10,
            MetaArray::I64(_) => 11,
            MetaArray::F64(_) => 12,
        }
    }
    /// The strings, when this is an array of strings.
    pub fn strs(&self) -> Option<&StrArray> {
        if let MetaArray::Str(s) = self { Some(s) } else { None }
    }
    /// Every item as an f64, when the items are numbers (`None` for strings and bools).
    pub fn to_f64s(&self) -> Option<Vec<f64>> {
        Some(match self {
            MetaArray::U8(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::I8(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::U16(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::I16(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::U32(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::I32(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::F32(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::U64(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::I64(v) => v.iter().map(|&x| x as f64).collect(),
            MetaArray::F64(v) => v.clone(),
            MetaArray::Bool(_) | MetaArray::Str(_) => return None,
        })
    }
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
    /// As a float, when it is a number (signed integers included).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v as f64),
            MetaValue::I16(v) => Some(v as f64),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        if let MetaValue::Str(s) = self { Some(s) } else { None }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&MetaArray> {
        if let MetaValue::Array(a) = self { Some(a) } else { None }
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
    /// `n` fixed-size items decoded by `f` from their little-endian bytes.
    fn items<T, const N: usize>(&mut self, n: usize, key: &str, f: fn([u8; N]) -> T) -> Result<Vec<T>> {
        let bytes = self.take(n * N, key)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect())
    }
    /// An array's item type, length (checked against the bytes left) and items.
    fn array(&mut self, key: &str) -> Result<MetaArray> {
        let item = self.u32(key)?;
        let min = match item {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => return Err(self.err(&format!("metadata `{key}`: nested arrays are not supported"))),
            _ => return Err(self.err(&format!("metadata `{key}`: unknown array item type {item}"))),
        };
        let n = self.count(&format!("metadata `{key}` array length"), min)?;
        Ok(match item {
            0 => MetaArray::U8(self.items(n, key, |[b]: [u8; 1]| b)?),
            1 => MetaArray::I8(self.items(n, key, |[b]: [u8; 1]| b as i8)?),
            2 => MetaArray::U16(self.items(n, key, u16::from_le_bytes)?),
            3 => MetaArray::I16(self.items(n, key, i16::from_le_bytes)?),
            4 => MetaArray::U32(self.items(n, key, u32::from_le_bytes)?),
            5 => MetaArray::I32(self.items(n, key, i32::from_le_bytes)?),
            6 => MetaArray::F32(self.items(n, key, f32::from_le_bytes)?),
            7 => {
                let bytes = self.take(n, key)?;
                if let Some(b) = bytes.iter().find(|&&b| b > 1) {
                    return Err(self.err(&format!("metadata `{key}`: bool byte {b}")));
                }
                MetaArray::Bool(bytes.iter().map(|&b| b == 1).collect())
            }
            8 => {
                let mut a = StrArray::default();
                a.ends.reserve(n);
                for _ in 0..n {
                    let len = self.count(key, 1)?;
                    let s = self.take(len, key)?;
                    let s = std::str::from_utf8(s)
                        .map_err(|_| self.err(&format!("metadata `{key}`: item is not UTF-8")))?;
                    a.push(s);
                }
                MetaArray::Str(a)
            }
            10 => MetaArray::U64(self.items(n, key, u64::from_le_bytes)?),
            11 => MetaArray::I64(self.items(n, key, i64::from_le_bytes)?),
            _ => MetaArray::F64(self.items(n, key, f64::from_le_bytes)?),
        })
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
                MetaValue::Array(self.array(key)?)
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
    let mut keys = std::collections::HashSet::with_capacity(n_kv);
    for _ in 0..n_kv {
        let at = c.pos;
        let key = c.string("metadata key")?;
        // A second value under one key would be ignored silently (the first wins on lookup):
        // llama.cpp refuses such files too.
        if !keys.insert(key.clone()) {
            c.pos = at;
            return Err(c.err(&format!("metadata key `{key}` appears twice")));
        }
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
    let mut names = std::collections::HashSet::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let at = c.pos;
        let name = c.string("tensor name")?;
        if !names.insert(name.clone()) {
            c.pos = at;
            return Err(c.err(&format!("tensor `{name}` appears twice")));
        }
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
    let (mut expected, mut last_end) = (0u64, 0u64);
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
        // GGUF lays the tensors' data end to end in the order of their infos, each padded to
        // the alignment (llama.cpp refuses any other offset): this catches overlaps, gaps and
        // a tensor count that disagrees with the infos (every offset would be shifted).
        if off != expected {
            return Err(bad(format!(
                "data offset {off}, expected {expected} (tensors lie end to end in the order of their infos, each padded to {alignment} bytes)"
            )));
        }
        expected = off + n_bytes.next_multiple_of(alignment as u64);
        last_end = off + n_bytes;
        tensors.push(GgufTensor { name, ty, dims, start: data_start + off as usize, n_bytes: n_bytes as usize });
    }
    // The data section ends with the last tensor (and its padding): bytes beyond it mean the
    // header describes fewer tensors than the file holds.
    if !tensors.is_empty() && data_len > expected {
        return Err(KilnError::Msg(format!(
            "{}: not a valid GGUF file: {} bytes follow the data of the last of its {} tensors (data section {last_end}, padded {expected}); is the tensor count wrong?",
            path.display(),
            data_len - last_end,
            tensors.len()
        )));
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
