//! The records of `OUT/metrics.jsonl`, one JSON object a line, and the file that holds them.
//! These structs are the only definition of the keys: `kiln train`, `kiln demo` and anything
//! else that logs a step serializes them (docs/metrics.md lists the keys; a test compares).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::pref::PrefStats;
use crate::{KilnError, Result};

/// One applied optimizer step (`"kind": "train"`).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename = "train")]
pub struct StepLog {
    /// The optimizer step, 1-based.
    pub step: usize,
    /// Steps of the whole run (not written: every line would repeat it).
    #[serde(skip)]
    pub total: usize,
    /// Passes over the training data so far.
    pub epoch: f64,
    /// Mean loss over every trained token of the step's micro-batches.
    pub loss: f64,
    /// Learning rate of this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (padding included) processed by the run so far.
    pub tokens: usize,
    /// Tokens per second since this process started stepping.
    pub tokens_per_s: f64,
    /// Seconds since this process started stepping.
    pub elapsed_s: f64,
    /// Preference runs: the step's rewards and reward accuracy.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pref: Option<PrefLog>,
    /// Device backends (CUDA): the step's kernel launches, copies to the device and host
    /// synchronizations (waits for the device: read-backs), the optimizer update included.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceLog>,
}

/// What a step asked of the device ([`StepLog::device`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceLog {
    pub launches: u64,
    pub uploads: u64,
    pub host_syncs: u64,
}

/// The preference metrics of a step or an evaluation (means over its pairs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PrefLog {
    /// β·(log π − log π_ref) of the chosen answers.
    pub rewards_chosen: f64,
    /// The same of the rejected answers.
    pub rewards_rejected: f64,
    /// `rewards_chosen − rewards_rejected`.
    pub reward_margin: f64,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub reward_accuracy: f64,
    /// Fraction of pairs whose chosen answer the model finds more likely (no reference).
    pub policy_accuracy: f64,
}

impl From<&PrefStats> for PrefLog {
    fn from(p: &PrefStats) -> PrefLog {
        PrefLog {
            rewards_chosen: p.rewards_chosen,
            rewards_rejected: p.rewards_rejected,
            reward_margin: p.margin(),
            reward_accuracy: p.reward_accuracy,
            policy_accuracy: p.policy_accuracy,
        }
    }
}

/// One evaluation on the held-out data (`"kind": "eval"`).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename = "eval")]
pub struct EvalLog {
    /// The step evaluated after (0: before training).
    pub step: usize,
    /// Token-weighted mean loss; preference runs: the mean preference loss.
    pub eval_loss: f64,
    /// Perplexity: `exp(eval_loss)`; preference runs: of the chosen answers' tokens.
    pub eval_ppl: f64,
    /// Preference runs: rewards and reward accuracy on the held-out pairs.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub pref: Option<PrefLog>,
    /// `eval_metrics`: the generation scores, by the names `kiln eval` reports them under.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub scores: Option<serde_json::Map<String, serde_json::Value>>,
}

impl EvalLog {
    /// The record of an evaluation at `step` with held-out `loss`.
    pub fn new(step: usize, loss: f64, pref: Option<&PrefStats>, scores: Option<&crate::eval::Scores>) -> EvalLog {
        // A preference run's perplexity is that of the chosen answers.
        let eval_ppl = pref.map_or(loss, PrefStats::chosen_loss).exp();
        let scores = scores.and_then(|s| match s.metrics_json() {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        });
        EvalLog { step, eval_loss: loss, eval_ppl, pref: pref.map(PrefLog::from), scores }
    }
}

/// A step skipped for a non-finite loss or gradient (`"kind": "skip"`, `skip_nonfinite`).
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename = "skip")]
pub struct SkipLog {
    pub step: usize,
    /// What was not finite.
    pub reason: String,
}

/// An open `metrics.jsonl`, appended to one record a line.
pub struct MetricsFile {
    file: std::fs::File,
    path: PathBuf,
}

impl MetricsFile {
    /// Opens `path` for a run starting after `step`: a fresh run truncates it; a resumed run
    /// keeps the records up to its checkpoint and drops those of the abandoned steps after
    /// it. Returns the records kept.
    pub fn open(path: &Path, step: usize) -> Result<(MetricsFile, Vec<serde_json::Value>)> {
        let kept: Vec<serde_json::Value> = if step == 0 {
            Vec::new()
        } else {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["step"].as_u64().is_some_and(|s| s as usize <= step))
                .collect()
        };
        let text: String = kept.iter().map(|v| format!("{v}\n")).collect();
        crate::formats::write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| KilnError::io(path, e))?;
        Ok((MetricsFile { file, path: path.to_path_buf() }, kept))
    }

    /// Appends one record. Written through a `Value`, whose keys are sorted, so a line's
    /// bytes do not depend on the order of the struct's fields. The line goes out in one
    /// `write` call: `writeln!` on a `File` issues one per formatting piece, and a reader
    /// tailing the file (a dashboard, `tail -f`) would see half a record.
    pub fn write(&mut self, record: &impl Serialize) -> Result<()> {
        let v = serde_json::to_value(record).map_err(|e| KilnError::Msg(format!("metrics: {e}")))?;
        let line = format!("{v}\n");
        self.file.write_all(line.as_bytes()).map_err(|e| KilnError::io(&self.path, e))
    }
}
