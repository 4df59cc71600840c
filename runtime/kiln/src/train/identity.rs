//! What a checkpoint is a checkpoint of: the base model's identity (file sizes and a hash of
//! each file's header and a sample of its tensor bytes — cheap, not the whole file), the
//! settings that shape the trained weights, the data (a hash of the prepared token ids), and a
//! 64-bit checksum per stored tensor. `--resume` compares them and refuses a mismatch by name.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::prepare::Prepared;
use crate::{KilnError, Result};

/// A streaming 64-bit hash over 8-byte words (FxHash's step, then a final avalanche). Not
/// cryptographic: it detects corruption. Each word step is a bijection of the state, so a
/// change confined to one word always changes the result.
#[derive(Clone, Copy, Debug)]
pub struct Hasher {
    h: u64,
    len: u64,
    tail: [u8; 8],
    n_tail: usize,
}

const K: u64 = 0x517c_c1b7_2722_0a95;

impl Default for Hasher {
    fn default() -> Self {
        Hasher { h: 0xcbf2_9ce4_8422_2325, len: 0, tail: [0; 8], n_tail: 0 }
    }
}

impl Hasher {
    fn word(&mut self, w: u64) {
        self.h = (self.h.rotate_left(5) ^ w).wrapping_mul(K);
    }

    /// Adds bytes.
    pub fn update(&mut self, mut b: &[u8]) {
        self.len = self.len.wrapping_add(b.len() as u64);
        if self.n_tail > 0 {
            let take = (8 - self.n_tail).min(b.len());
            self.tail[self.n_tail..self.n_tail + take].copy_from_slice(&b[..take]);
            self.n_tail += take;
            b = &b[take..];
            if self.n_tail < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.tail));
            self.n_tail = 0;
        }
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.n_tail = rest.len();
    }

    /// Adds the values of `v` (little-endian), with their count.
    pub fn update_i32s(&mut self, v: &[i32]) {
        self.update(&(v.len() as u64).to_le_bytes());
        for x in v {
            self.update(&x.to_le_bytes());
        }
    }

    /// The hash so far.
    pub fn finish(&self) -> u64 {
        let mut s = *self;
        if s.n_tail > 0 {
            let mut w = [0u8; 8];
            w[..s.n_tail].copy_from_slice(&s.tail[..s.n_tail]);
            s.word(u64::from_le_bytes(w) ^ (0x80 << (8 * s.n_tail.min(7))));
        }
        s.word(s.len);
        // splitmix64's finalizer.
        let mut z = s.h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The checksum of `bytes` as written in `state.json` (16 hex digits).
pub fn checksum(bytes: &[u8]) -> String {
    let mut h = Hasher::default();
    h.update(bytes);
    format!("{:016x}", h.finish())
}

/// One file of the base model.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileId {
    /// The file name (the folder may move; its contents must not change).
    pub name: String,
    pub bytes: u64,
    /// Hash of the first MiB (the header) and 16 samples of 64 KiB spread over the file.
    pub sample_hash: String,
}

/// Bytes hashed at the start of each file, and per sample.
const HEAD: u64 = 1 << 20;
const SAMPLE: u64 = 1 << 16;
const SAMPLES: u64 = 16;

fn file_id(path: &Path) -> Result<FileId> {
    let mut f = std::fs::File::open(path).map_err(|e| KilnError::io(path, e))?;
    let bytes = f.metadata().map_err(|e| KilnError::io(path, e))?.len();
    let mut h = Hasher::default();
    let mut buf = vec![0u8; HEAD.min(bytes) as usize];
    f.read_exact(&mut buf).map_err(|e| KilnError::io(path, e))?;
    h.update(&buf);
    if bytes > HEAD {
        let mut buf = vec![0u8; SAMPLE as usize];
        for k in 0..SAMPLES {
            let at = HEAD + (bytes - HEAD) / SAMPLES * k;
            let n = SAMPLE.min(bytes - at) as usize;
            f.seek(SeekFrom::Start(at)).map_err(|e| KilnError::io(path, e))?;
            f.read_exact(&mut buf[..n]).map_err(|e| KilnError::io(path, e))?;
            h.update(&buf[..n]);
        }
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(FileId { name, bytes, sample_hash: format!("{:016x}", h.finish()) })
}

/// The identity of a base model: a `.gguf` file, or a folder's `config.json` and
/// `*.safetensors` (sorted by name).
pub fn model_identity(path: &Path) -> Result<Vec<FileId>> {
    if path.is_file() {
        return Ok(vec![file_id(path)?]);
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(path)
        .map_err(|e| KilnError::io(path, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "safetensors") || p.file_name().is_some_and(|n| n == "config.json")
        })
        .collect();
    files.sort();
    files.iter().map(|p| file_id(p)).collect()
}

/// Hash of the prepared training units' token ids (and their labels and layout), so a resume on
/// other data — or the same files prepared differently — is caught.
pub fn data_hash(d: &Prepared) -> String {
    let mut h = Hasher::default();
    for s in &d.train {
        h.update_i32s(&s.ids);
        h.update_i32s(&s.labels);
        h.update_i32s(&s.seg);
    }
    for p in &d.pairs {
        h.update_i32s(&p.ids);
        h.update_i32s(&p.targets);
        h.update_i32s(&p.seg);
    }
    format!("{:016x}", h.finish())
}

/// The settings that shape the trained weights, as `key → value` in the configuration's own
/// spelling. Everything but the run length (`max_steps`, `epochs`), the save/eval/log
/// intervals and where the run happens must match on resume.
pub fn settings(cfg: &TrainConfig) -> BTreeMap<String, String> {
    // In the model's order and short names, so `v_proj,q_proj` and `q_proj,v_proj` agree.
    let targets = match cfg.targets() {
        Ok(t) => crate::adapters::Target::ALL
            .iter()
            .filter(|a| t.contains(a))
            .map(|a| a.module().rsplit('.').next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join(","),
        Err(_) => cfg.target_modules.clone(),
    };
    let pairs: [(&str, String); 24] = [
        ("method", format!("{:?}", cfg.method).to_lowercase()),
        ("objective", cfg.objective.name().into()),
        ("lora_r", cfg.lora_r.to_string()),
        ("lora_alpha", cfg.lora_alpha.to_string()),
        ("lora_dropout", cfg.lora_dropout.to_string()),
        ("target_modules", targets),
        ("use_rslora", cfg.use_rslora.to_string()),
        ("train_embeddings", cfg.train_embeddings.to_string()),
        ("add_special_tokens", format!("{:?}", cfg.add_special_tokens)),
        ("adapter_size", cfg.adapter_size.to_string()),
        ("quantize", cfg.quantize.clone().unwrap_or_else(|| "none".into())),
        ("learning_rate", cfg.learning_rate.to_string()),
        ("lr_scheduler", format!("{:?}", cfg.lr_scheduler).to_lowercase()),
        ("warmup_steps", cfg.warmup_steps.to_string()),
        ("optim", format!("{:?}", cfg.optim).to_lowercase()),
        ("weight_decay", cfg.weight_decay.to_string()),
        ("max_grad_norm", cfg.max_grad_norm.to_string()),
        ("batch_size", cfg.batch_size.to_string()),
        ("grad_accum", cfg.grad_accum.to_string()),
        ("max_seq_len", cfg.max_seq_len.map_or("default".into(), |t| t.to_string())),
        ("packing", cfg.packing.to_string()),
        ("seed", cfg.seed.to_string()),
        ("beta", cfg.beta.to_string()),
        ("dpo_loss", format!("{:?}/{}", cfg.dpo_loss, cfg.label_smoothing).to_lowercase()),
    ];
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_streams_and_sees_every_byte() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = checksum(&bytes);
        // Fed in uneven pieces, the same hash.
        let mut h = Hasher::default();
        for piece in bytes.chunks(3).chain(std::iter::once(&[][..])) {
            h.update(piece);
        }
        assert_eq!(format!("{:016x}", h.finish()), whole);
        // Any single flipped bit, and a trailing zero byte, change it.
        for at in [0, 5, 8, 499, 999] {
            let mut b = bytes.clone();
            b[at] ^= 1;
            assert_ne!(checksum(&b), whole, "bit flip at {at}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_ne!(checksum(&longer), whole);
        assert_ne!(checksum(b""), checksum(&[0]));
    }
}
