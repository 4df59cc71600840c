//! Checkpoints: `OUT/checkpoints/step-N/` holds the trainable tensors (`params.safetensors`,
//! named as PEFT / transformers name them), the AdamW moments (`optimizer.safetensors`,
//! `exp_avg.NAME` / `exp_avg_sq.NAME`) and `state.json` (step, schedule, data position, seed,
//! best evaluation). The folder is written under a temporary name and renamed, so a killed run
//! never leaves a half-written checkpoint that resume would trust.

use std::path::{Path, PathBuf};

use kiln_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::formats::{WeightStore, write_atomic, write_safetensors};
use crate::{KilnError, Result};

/// What a checkpoint records besides tensors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    /// Optimizer steps taken.
    pub step: usize,
    pub total_steps: usize,
    pub epoch: f64,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Data position: the shuffled order of epoch `data_epoch` (seeded by `seed` and the
    /// epoch), continuing after group `data_group` — the order is recomputed, not stored.
    pub data_epoch: usize,
    pub data_group: usize,
    pub seed: u64,
    /// Tokens trained on so far.
    pub tokens: usize,
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
}

/// `OUT/checkpoints`.
pub fn dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// Writes checkpoint `step-N` atomically.
pub fn save(
    out: &Path,
    state: &State,
    params: &[(String, Tensor)],
    moments: &[(String, Tensor, Tensor)],
) -> Result<PathBuf> {
    let root = dir(out);
    let fin = root.join(format!("step-{}", state.step));
    let tmp = root.join(format!(".step-{}.tmp-{}", state.step, std::process::id()));
    // Leftovers of a killed run are removed first — except a complete checkpoint moved aside
    // whose replacement never landed, which goes back in place.
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((step, _)) = name.strip_prefix(".step-").and_then(|r| r.split_once(".old-")) {
            let back = root.join(format!("step-{step}"));
            if !back.exists() && e.path().join("state.json").is_file() && std::fs::rename(e.path(), &back).is_ok() {
                continue;
            }
        }
        if name.starts_with(".step-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    std::fs::create_dir_all(&tmp).map_err(|e| KilnError::io(&tmp, e))?;
    write_safetensors(&tmp.join("params.safetensors"), params)?;
    let mut opt = Vec::with_capacity(moments.len() * 2);
    for (n, m, v) in moments {
        opt.push((format!("exp_avg.{n}"), m.clone()));
        opt.push((format!("exp_avg_sq.{n}"), v.clone()));
    }
    write_safetensors(&tmp.join("optimizer.safetensors"), &opt)?;
    let json = serde_json::to_string_pretty(state).map_err(|e| KilnError::Msg(e.to_string()))?;
    write_atomic(&tmp.join("state.json"), json.as_bytes())?;
    // Replacing a checkpoint of the same step (a resumed run passing it again): the old one is
    // moved aside first, so a kill at any moment leaves either it or the new one complete
    // (or, between the renames, only older checkpoints — never a half-written one).
    if fin.exists() {
        let old = root.join(format!(".step-{}.old-{}", state.step, std::process::id()));
        std::fs::rename(&fin, &old).map_err(|e| KilnError::io(&fin, e))?;
        std::fs::rename(&tmp, &fin).map_err(|e| KilnError::io(&fin, e))?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, &fin).map_err(|e| KilnError::io(&fin, e))?;
    }
    Ok(fin)
}

/// A loaded checkpoint.
pub struct Loaded {
    pub path: PathBuf,
    pub state: State,
    pub params: WeightStore,
    pub optimizer: WeightStore,
}

/// Opens a checkpoint folder.
pub fn load(path: &Path) -> Result<Loaded> {
    let sp = path.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| KilnError::io(&sp, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| KilnError::Config {
        path: sp.clone(),
        field: "state".into(),
        detail: e.to_string(),
    })?;
    Ok(Loaded {
        path: path.to_path_buf(),
        state,
        params: WeightStore::from_files(&[path.join("params.safetensors")])?,
        optimizer: WeightStore::from_files(&[path.join("optimizer.safetensors")])?,
    })
}

/// Complete checkpoints under `OUT/checkpoints`, oldest first, with their step.
pub fn list(out: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = std::fs::read_dir(dir(out))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            e.path().join("state.json").is_file().then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Deletes all but the newest `keep` checkpoints, sparing `best` (0 keeps all).
pub fn prune(out: &Path, keep: usize, best: Option<usize>) -> Result<()> {
    if keep == 0 {
        return Ok(());
    }
    let all = list(out);
    let n = all.len();
    for (i, (step, p)) in all.into_iter().enumerate() {
        if i + keep < n && Some(step) != best {
            std::fs::remove_dir_all(&p).map_err(|e| KilnError::io(&p, e))?;
        }
    }
    Ok(())
}
