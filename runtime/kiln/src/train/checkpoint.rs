//! Checkpoints: `OUT/checkpoints/step-N/` holds the trainable tensors (`params.safetensors`,
//! named as PEFT / transformers name them), the AdamW moments (`optimizer.safetensors`,
//! `exp_avg.NAME` / `exp_avg_sq.NAME`) and `state.json` (step, schedule, data position, seed,
//! best evaluation, and what the checkpoint is of: the base model's identity, the settings, a
//! hash of the data, and a checksum of every tensor — see [`super::identity`]). The folder is
//! written under a temporary name and renamed, so a killed run never leaves a half-written
//! checkpoint that resume would trust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_core::Tensor;
use serde::{Deserialize, Serialize};

use super::identity::{FileId, checksum};
use crate::formats::{WeightStore, write_atomic, write_safetensors};
use crate::{KilnError, Result};

/// What a run is: compared field by field on resume.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    /// The base model's files (`None`: not known to the library caller).
    pub base_model: Option<Vec<FileId>>,
    pub settings: BTreeMap<String, String>,
    pub data_hash: Option<String>,
}

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
    // The fields below are absent from checkpoints written before they existed: such a
    // checkpoint resumes with a warning that they could not be checked.
    /// Optimizer steps per epoch of the run (ties `data_epoch`/`data_group` to `step`).
    #[serde(default)]
    pub steps_per_epoch: Option<usize>,
    /// The base model's files: size and sampled hash of each.
    #[serde(default)]
    pub base_model: Option<Vec<FileId>>,
    /// The settings that shape the weights (see [`super::identity::settings`]).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// Hash of the prepared training token ids.
    #[serde(default)]
    pub data_hash: Option<String>,
    /// `params.safetensors/NAME` or `optimizer.safetensors/NAME` → checksum of its bytes.
    #[serde(default)]
    pub checksums: Option<BTreeMap<String, String>>,
}

fn inconsistent(path: &Path, field: &str, detail: String) -> KilnError {
    KilnError::Config { path: path.to_path_buf(), field: field.into(), detail }
}

/// Parses and checks a `state.json`: every count in range and consistent with the others
/// (a step past its total, a data position that is not the step's, a best step in the future
/// are refused, naming the field).
pub fn parse_state(bytes: &[u8], path: &Path) -> Result<State> {
    let st: State = serde_json::from_slice(bytes).map_err(|e| inconsistent(path, "state", e.to_string()))?;
    let max = super::config::limits::STEPS;
    if st.total_steps == 0 || st.total_steps > max {
        return Err(inconsistent(path, "total_steps", format!("{} is not in [1, {max}]", st.total_steps)));
    }
    if st.step > st.total_steps {
        return Err(inconsistent(
            path,
            "step",
            format!("step {} of {} total: a checkpoint cannot be past its run's end", st.step, st.total_steps),
        ));
    }
    if !(st.epoch.is_finite() && st.epoch >= 0.0 && st.lr.is_finite() && st.lr >= 0.0) {
        return Err(inconsistent(
            path,
            "epoch/lr",
            format!("epoch {} and lr {} must be finite and ≥ 0", st.epoch, st.lr),
        ));
    }
    if let Some(spe) = st.steps_per_epoch {
        let at = st.data_epoch.checked_mul(spe).and_then(|e| e.checked_add(st.data_group));
        if spe == 0 || st.data_group >= spe || (st.step > 0 && at != Some(st.step - 1)) {
            return Err(inconsistent(
                path,
                "data_epoch/data_group",
                format!(
                    "epoch {} group {} with {spe} steps per epoch is not the position of step {}",
                    st.data_epoch, st.data_group, st.step
                ),
            ));
        }
    }
    if st.best_step.is_some() != st.best_eval_loss.is_some()
        || st.best_step.is_some_and(|b| b > st.step)
        || st.best_eval_loss.is_some_and(|l| !l.is_finite())
    {
        return Err(inconsistent(
            path,
            "best_step/best_eval_loss",
            format!("best step {:?} with loss {:?} at step {}", st.best_step, st.best_eval_loss, st.step),
        ));
    }
    for (name, sum) in st.checksums.iter().flatten() {
        if sum.len() != 16 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(inconsistent(path, "checksums", format!("{name}: `{sum}` is not 16 hex digits")));
        }
    }
    Ok(st)
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
    let mut sums = BTreeMap::new();
    for (file, list) in [(PARAMS, params), (OPTIMIZER, &opt[..])] {
        for (n, t) in list {
            sums.insert(format!("{file}/{n}"), checksum(t.to_cpu()?.raw_bytes()?));
        }
    }
    let state = State { checksums: Some(sums), ..state.clone() };
    let json = serde_json::to_string_pretty(&state).map_err(|e| KilnError::Msg(e.to_string()))?;
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

const PARAMS: &str = "params.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

/// A loaded checkpoint.
pub struct Loaded {
    pub path: PathBuf,
    pub state: State,
    pub params: WeightStore,
    pub optimizer: WeightStore,
    /// The tensor names of `params.safetensors` and `optimizer.safetensors`.
    pub param_names: Vec<String>,
    pub optimizer_names: Vec<String>,
}

/// Names and checksums of the tensors of a safetensors file (its data bytes as stored).
fn tensor_sums(path: &Path) -> Result<Vec<(String, String)>> {
    let file = std::fs::File::open(path).map_err(|e| KilnError::io(path, e))?;
    // SAFETY: the map is read-only and kiln never writes a checkpoint file in place (a new
    // checkpoint is written under a temporary name and renamed).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| KilnError::io(path, e))?;
    let mut out = Vec::new();
    for (name, dtype, shape, start) in crate::formats::safetensors::index_safetensors(&map, path)? {
        let n = dtype.bytes(shape.iter().product());
        let bytes = start.checked_add(n).and_then(|end| map.get(start..end)).ok_or_else(|| KilnError::Tensor {
            path: path.to_path_buf(),
            tensor: name.clone(),
            detail: "data outside the file".into(),
        })?;
        out.push((name, checksum(bytes)));
    }
    Ok(out)
}

/// Opens a checkpoint folder: `state.json` parsed and checked, and every tensor's bytes
/// checked against the checksum recorded for it (a flipped byte, a renamed, missing or extra
/// tensor is refused by name).
pub fn load(path: &Path) -> Result<Loaded> {
    let sp = path.join("state.json");
    let bytes = std::fs::read(&sp).map_err(|e| KilnError::io(&sp, e))?;
    let state = parse_state(&bytes, &sp)?;
    let mut names = [Vec::new(), Vec::new()];
    let mut found = BTreeMap::new();
    for (i, file) in [PARAMS, OPTIMIZER].into_iter().enumerate() {
        for (n, sum) in tensor_sums(&path.join(file))? {
            found.insert(format!("{file}/{n}"), sum);
            names[i].push(n);
        }
    }
    if let Some(rec) = &state.checksums {
        for (key, sum) in &found {
            match rec.get(key) {
                None => {
                    return Err(KilnError::Msg(format!(
                        "{}: tensor {key} is not one the checkpoint recorded (renamed or added after it was written)",
                        path.display()
                    )));
                }
                Some(r) if r != sum => {
                    return Err(KilnError::Msg(format!(
                        "{}: tensor {key} fails its checksum (recorded {r}, found {sum}): the file is corrupted",
                        path.display()
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(key) = rec.keys().find(|k| !found.contains_key(*k)) {
            return Err(KilnError::Msg(format!(
                "{}: tensor {key} is missing (the checkpoint recorded it)",
                path.display()
            )));
        }
    }
    let [param_names, optimizer_names] = names;
    Ok(Loaded {
        path: path.to_path_buf(),
        state,
        params: WeightStore::from_files(&[path.join(PARAMS)])?,
        optimizer: WeightStore::from_files(&[path.join(OPTIMIZER)])?,
        param_names,
        optimizer_names,
    })
}

/// Compares a checkpoint with the run resuming it. Returns notes (a checkpoint from before
/// identities were recorded); refuses any difference, naming each field with both values.
pub fn compare(path: &Path, st: &State, now: &Identity) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let mut diffs = Vec::new();
    if st.settings.is_empty() && st.base_model.is_none() && st.data_hash.is_none() {
        notes.push(format!(
            "warning: {} was written before checkpoints recorded their base model, settings and data: they cannot be checked (only the seed is)",
            path.display()
        ));
        let seed = now.settings.get("seed").cloned().unwrap_or_default();
        if !seed.is_empty() && seed != st.seed.to_string() {
            diffs.push(format!("seed: {} in the checkpoint, {seed} now", st.seed));
        }
    }
    if let (Some(old), Some(new)) = (&st.base_model, &now.base_model)
        && old != new
    {
        let show = |v: &[FileId]| {
            v.iter()
                .map(|f| format!("{} ({} bytes, sample hash {})", f.name, f.bytes, f.sample_hash))
                .collect::<Vec<_>>()
                .join(", ")
        };
        diffs.push(format!("base model: {} in the checkpoint, {} now", show(old), show(new)));
    }
    if !st.settings.is_empty() {
        let keys: std::collections::BTreeSet<&String> = st.settings.keys().chain(now.settings.keys()).collect();
        for k in keys {
            let (a, b) = (st.settings.get(k), now.settings.get(k));
            if a != b {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(not recorded)".into());
                diffs.push(format!("{k}: {} in the checkpoint, {} now", show(a), show(b)));
            }
        }
    }
    if let (Some(a), Some(b)) = (&st.data_hash, &now.data_hash)
        && a != b
    {
        diffs.push(format!(
            "data: the prepared training tokens differ (hash {a} in the checkpoint, {b} now: other data files, template or tokenizer)"
        ));
    }
    if !diffs.is_empty() {
        return Err(KilnError::Msg(format!(
            "{}: cannot resume: this run differs from the checkpoint — {} (only --max-steps, --epochs and the save/eval/log intervals may change)",
            path.display(),
            diffs.join("; ")
        )));
    }
    Ok(notes)
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
