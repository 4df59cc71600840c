//! Memory-mapped safetensors: one file or a sharded `model.safetensors.index.json`.
//!
//! Every header is parsed and validated (by the `safetensors` crate: offsets inside the file, no
//! overlap, sizes matching dtype × shape) before any tensor is touched, so a corrupt or
//! truncated file is an error naming the file, never an out-of-bounds read. Tensors are views of
//! the map: the page cache holds the weights once, and no second copy is made.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_core::{DType, Tensor};
use memmap2::Mmap;

use crate::{KilnError, Result};

struct Entry {
    shard: usize,
    dtype: DType,
    shape: Vec<usize>,
    start: usize,
}

struct Shard {
    path: PathBuf,
    map: Arc<Mmap>,
}

/// The tensors of a model directory, by name.
pub struct WeightStore {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
}

fn dtype_of(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::F16 => DType::F16,
        S::BF16 => DType::BF16,
        S::I32 => DType::I32,
        _ => return None,
    })
}

/// A tensor of a safetensors file: name, dtype, shape, byte offset of its data.
pub type IndexEntry = (String, DType, Vec<usize>, usize);

/// The tensors of safetensors bytes `b` (`path` names them in errors): name, dtype, shape and
/// the byte offset of the data, every size and offset checked against `b`. The fuzz target
/// `safetensors_header` (fuzz/) drives this with arbitrary bytes.
pub fn index_safetensors(b: &[u8], path: &Path) -> Result<Vec<IndexEntry>> {
    let st = safetensors::SafeTensors::deserialize(b)
        .map_err(|e| KilnError::Safetensors { path: path.to_path_buf(), detail: e.to_string() })?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = dtype_of(view.dtype()).ok_or_else(|| KilnError::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            detail: format!("dtype {:?} is not supported (f32, f64, f16, bf16, i32)", view.dtype()),
        })?;
        let start = view.data().as_ptr() as usize - b.as_ptr() as usize;
        out.push((name, dtype, view.shape().to_vec(), start));
    }
    Ok(out)
}

impl WeightStore {
    /// Opens `model.safetensors`, or the shards named by `model.safetensors.index.json`, in `dir`
    /// (or a single `.safetensors` file given directly).
    pub fn open(path: &Path) -> Result<WeightStore> {
        if path.is_file() {
            return WeightStore::from_files(&[path.to_path_buf()]);
        }
        let single = path.join("model.safetensors");
        let index = path.join("model.safetensors.index.json");
        if single.is_file() {
            return WeightStore::from_files(&[single]);
        }
        if !index.is_file() {
            return Err(KilnError::Msg(format!(
                "{}: no model.safetensors or model.safetensors.index.json",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| KilnError::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| KilnError::Config {
            path: index.clone(),
            field: "(json)".into(),
            detail: e.to_string(),
        })?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| KilnError::Config {
            path: index.clone(),
            field: "weight_map".into(),
            detail: "missing or not an object".into(),
        })?;
        let mut files: Vec<String> = Vec::new();
        for (tensor, f) in map {
            let f = f.as_str().ok_or_else(|| KilnError::Config {
                path: index.clone(),
                field: format!("weight_map.{tensor}"),
                detail: "not a file name".into(),
            })?;
            if f.contains('/') || f.contains("..") {
                return Err(KilnError::Config {
                    path: index.clone(),
                    field: format!("weight_map.{tensor}"),
                    detail: format!("shard `{f}` must be a file in the model directory"),
                });
            }
            if !files.iter().any(|x| x == f) {
                files.push(f.to_string());
            }
        }
        files.sort();
        let paths: Vec<PathBuf> = files.iter().map(|f| path.join(f)).collect();
        for (p, f) in paths.iter().zip(&files) {
            if !p.is_file() {
                return Err(KilnError::Config {
                    path: index.clone(),
                    field: "weight_map".into(),
                    detail: format!("points to missing shard {f}"),
                });
            }
        }
        let store = WeightStore::from_files(&paths)?;
        for (tensor, f) in map {
            let ok = store
                .entries
                .get(tensor)
                .is_some_and(|e| store.shards[e.shard].path.ends_with(f.as_str().unwrap_or("")));
            if !ok {
                return Err(KilnError::MissingTensor {
                    path: path.join(f.as_str().unwrap_or("?")),
                    tensor: tensor.clone(),
                });
            }
        }
        Ok(store)
    }

    /// Opens and validates the given files.
    pub fn from_files(paths: &[PathBuf]) -> Result<WeightStore> {
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for (si, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| KilnError::io(path, e))?;
            // SAFETY: the map is read-only; kiln never writes model files while they are mapped.
            // A file truncated by another process under the map is outside what we can guard.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| KilnError::io(path, e))?;
            for (name, dtype, shape, start) in index_safetensors(&map, path)? {
                if entries.contains_key(&name) {
                    return Err(KilnError::Tensor {
                        path: path.clone(),
                        tensor: name,
                        detail: "appears in two shards".into(),
                    });
                }
                entries.insert(name, Entry { shard: si, dtype, shape, start });
            }
            shards.push(Shard { path: path.clone(), map: Arc::new(map) });
        }
        Ok(WeightStore { shards, entries })
    }

    /// Every tensor's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }

    /// Every tensor's name and shape, from the headers alone.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.entries.iter().map(|(n, e)| (n.clone(), e.shape.clone())).collect()
    }

    /// Whether a tensor exists.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    fn where_(&self, name: &str) -> PathBuf {
        match self.entries.get(name) {
            Some(e) => self.shards[e.shard].path.clone(),
            None => self.shards.first().map(|s| s.path.clone()).unwrap_or_default(),
        }
    }

    /// A tensor by name, as a view of the map.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| KilnError::MissingTensor { path: self.where_(name), tensor: name.into() })?;
        let map = self.shards[e.shard].map.clone();
        Tensor::from_mmap(map, e.start, e.dtype, e.shape.clone()).map_err(|err| KilnError::Tensor {
            path: self.where_(name),
            tensor: name.into(),
            detail: err.to_string(),
        })
    }

    /// A tensor that must have `shape` and a floating dtype.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(KilnError::Tensor {
                path: self.where_(name),
                tensor: name.into(),
                detail: format!("shape {:?}, expected {:?}", t.dims(), shape),
            });
        }
        if t.dtype() == DType::I32 {
            return Err(KilnError::Tensor {
                path: self.where_(name),
                tensor: name.into(),
                detail: "dtype i32, expected a float type".into(),
            });
        }
        Ok(t)
    }
}

/// Writes tensors to a safetensors file atomically: a temp file beside it, then a rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_cpu()?;
        let dtype = match t.dtype() {
            DType::F32 => safetensors::Dtype::F32,
            DType::F64 => safetensors::Dtype::F64,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
            DType::I32 => safetensors::Dtype::I32,
            DType::Quant(q) => {
                return Err(KilnError::Tensor {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    detail: format!("{} is a GGUF block type; safetensors holds f32/f16/bf16", q.name()),
                });
            }
        };
        owned.push((name.clone(), dtype, t.dims().to_vec(), t.raw_bytes()?.to_vec()));
    }
    let mut views = Vec::with_capacity(owned.len());
    for (name, d, shape, bytes) in &owned {
        let v = safetensors::tensor::TensorView::new(*d, shape.clone(), bytes).map_err(|e| KilnError::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            detail: e.to_string(),
        })?;
        views.push((name.clone(), v));
    }
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| KilnError::Safetensors { path: path.to_path_buf(), detail: e.to_string() })?;
    crate::formats::write_atomic(path, &bytes)
}
