//! Writing GGUF (version 3): metadata, tensor infos in ggml dimension order, tensor data
//! aligned to `general.alignment` (32). Written to a temporary file and renamed.

use std::path::Path;

use kiln_core::quant::GgmlType;

use super::gguf::{MetaArray, MetaValue};
use crate::{KilnError, Result};

/// One tensor to write: its GGUF name, block type, row-major shape and encoded bytes.
pub struct OutTensor {
    pub name: String,
    pub ty: GgmlType,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

const ALIGN: usize = 32;

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::Str(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend(x.to_le_bytes()),
        MetaValue::I16(x) => out.extend(x.to_le_bytes()),
        MetaValue::U32(x) => out.extend(x.to_le_bytes()),
        MetaValue::I32(x) => out.extend(x.to_le_bytes()),
        MetaValue::F32(x) => out.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend(x.to_le_bytes()),
        MetaValue::I64(x) => out.extend(x.to_le_bytes()),
        MetaValue::F64(x) => out.extend(x.to_le_bytes()),
        MetaValue::Array(a) => {
            out.extend(a.item_type().to_le_bytes());
            out.extend((a.len() as u64).to_le_bytes());
            put_array(out, a);
        }
    }
}

fn put_array(out: &mut Vec<u8>, a: &MetaArray) {
    match a {
        MetaArray::U8(v) => out.extend(v),
        MetaArray::I8(v) => out.extend(v.iter().map(|&x| x as u8)),
        MetaArray::U16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I16(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::U32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::F32(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::Bool(v) => out.extend(v.iter().map(|&x| u8::from(x))),
        MetaArray::Str(v) => v.iter().for_each(|x| put_str(out, x)),
        MetaArray::U64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::I64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        MetaArray::F64(v) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
    }
}

/// Writes a GGUF file with `meta` (in order; `general.alignment` is added) and `tensors`.
pub fn write_gguf(path: &Path, meta: &[(String, MetaValue)], tensors: &[OutTensor]) -> Result<()> {
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    let meta: Vec<&(String, MetaValue)> = meta.iter().filter(|(k, _)| k != "general.alignment").collect();
    // kiln refuses to read a key twice, so it never writes one twice.
    let mut seen = std::collections::HashSet::new();
    if let Some((k, _)) = meta.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Err(KilnError::Msg(format!("{}: metadata key `{k}` would be written twice", path.display())));
    }
    head.extend((meta.len() as u64 + 1).to_le_bytes());
    for (k, v) in
        meta.iter().map(|p| (&p.0, &p.1)).chain([(&"general.alignment".to_string(), &MetaValue::U32(ALIGN as u32))])
    {
        put_str(&mut head, k);
        head.extend(type_id(v).to_le_bytes());
        put_value(&mut head, v);
    }
    let mut offset = 0usize;
    for t in tensors {
        let (bs, ts) = t.ty.block();
        let n: usize = t.shape.iter().product();
        let row = t.shape.last().copied().unwrap_or(1);
        if !row.is_multiple_of(bs) || t.data.len() != n / bs * ts {
            return Err(KilnError::Msg(format!(
                "{}: tensor `{}` {:?} as {}: {} bytes do not hold whole rows of {bs}-value blocks",
                path.display(),
                t.name,
                t.shape,
                t.ty.name(),
                t.data.len()
            )));
        }
        put_str(&mut head, &t.name);
        head.extend((t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            head.extend((d as u64).to_le_bytes());
        }
        head.extend(t.ty.id().to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset += t.data.len().next_multiple_of(ALIGN);
    }
    head.resize(head.len().next_multiple_of(ALIGN), 0);
    let mut bytes = head;
    bytes.reserve(offset);
    for t in tensors {
        bytes.extend(&t.data);
        bytes.resize(bytes.len().next_multiple_of(ALIGN), 0);
    }
    super::write_atomic(path, &bytes)
}
