//! The evaluation entry [`run`] (what `kiln eval` calls): loads the data and the model (with
//! its adapter, optionally beside the base), measures loss/perplexity and generation metrics —
//! or, for preference rows, DPO rewards — and writes the predictions; and [`score_files`]
//! (what `kiln score` calls): the text metrics of saved predictions.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::measure::{EvalSpec, Prediction, evaluate, gen_rows};
use super::{Metric, Scores, TextOptions, table};
use crate::data::dataset::{DataSpec, Dataset, LoadOptions};
use crate::data::render::Renderer;
use crate::data::{Example, Format};
use crate::model::{LoadSpec, Loaded};
use crate::train::pref::PrefStats;
use crate::{KilnError, Result};

/// Where an evaluation reports its progress (a progress bar, or nothing).
pub trait Progress {
    /// A new phase of `total` steps named `label`.
    fn start(&mut self, label: &str, total: usize);
    /// Steps done since the last call.
    fn advance(&mut self, n: usize);
    /// The phase is over.
    fn finish(&mut self);
}

/// No progress shown.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: &str, _: usize) {}
    fn advance(&mut self, _: usize) {}
    fn finish(&mut self) {}
}

/// What to evaluate and how.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// The model (`None`: the default model) and a tuned adapter on it.
    pub load: LoadSpec,
    /// Rows in any training format; `format` forces one instead of detecting it.
    pub data: PathBuf,
    pub format: Option<Format>,
    /// Score only the first rows.
    pub eval_samples: Option<usize>,
    /// Also evaluate the base model (needs an adapter), under the model's chat template or a
    /// built-in one named here.
    pub compare_base: bool,
    pub template: Option<String>,
    /// Metrics, decoding and batching.
    pub spec: EvalSpec,
    /// Each generated answer as a JSON line, replacing an existing file only with `overwrite`.
    pub predictions_out: Option<PathBuf>,
    pub overwrite: bool,
    /// Preference rows: the DPO beta the rewards are scaled by.
    pub beta: f64,
}

/// What [`run`] measured; `Display` is `kiln eval`'s text, [`EvalReport::to_json`] its JSON.
#[derive(Clone, Debug)]
pub enum EvalReport {
    /// Loss and text metrics of the model (`tuned`), and of the base when compared.
    Text { data: PathBuf, base: Option<Scores>, tuned: Scores },
    /// DPO rewards of the adapter against the base, and how often each prefers the chosen
    /// answer.
    Preference(PrefReport),
}

/// The preference half of [`EvalReport`].
#[derive(Clone, Debug)]
pub struct PrefReport {
    pub data: PathBuf,
    /// Pairs evaluated, and pairs dropped for length.
    pub pairs: usize,
    pub dropped: usize,
    pub stats: PrefStats,
    /// How often the base prefers the chosen answer.
    pub base_accuracy: f64,
    /// Whether an adapter was applied (without one, rewards are 0 by construction).
    pub tuned: bool,
    pub beta: f64,
}

impl EvalReport {
    /// `{"n", "metrics": {…}}`, or `{"base": {…}, "tuned": {…}}` when compared.
    pub fn to_json(&self) -> Value {
        match self {
            EvalReport::Text { base: Some(b), tuned, .. } => {
                serde_json::json!({"base": b.to_json(), "tuned": tuned.to_json()})
            }
            EvalReport::Text { base: None, tuned, .. } => tuned.to_json(),
            EvalReport::Preference(p) => {
                let mut m = p.stats.json_fields();
                m.insert("dpo_loss".into(), p.stats.loss.into());
                m.insert("base_policy_accuracy".into(), p.base_accuracy.into());
                serde_json::json!({"n": p.pairs, "metrics": m})
            }
        }
    }
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalReport::Text { data, base, tuned } => {
                writeln!(f, "{} rows of {}", tuned.n, data.display())?;
                write!(f, "{}", table(base.as_ref(), tuned))
            }
            EvalReport::Preference(p) => {
                let s = &p.stats;
                writeln!(f, "{} preference pairs of {} ({} dropped for length)", p.pairs, p.data.display(), p.dropped)?;
                if p.tuned {
                    writeln!(f, "reward accuracy      {:.4}  (beta {})", s.reward_accuracy, p.beta)?;
                    writeln!(
                        f,
                        "reward margin        {:.4}  (chosen {:.4}, rejected {:.4})",
                        s.margin(),
                        s.rewards_chosen,
                        s.rewards_rejected
                    )?;
                    writeln!(f, "DPO loss             {:.4}", s.loss)?;
                } else {
                    writeln!(f, "(no --adapter: rewards against the model itself are 0; showing its own preference)")?;
                }
                writeln!(
                    f,
                    "prefers chosen       base {:.4} → {} {:.4}",
                    p.base_accuracy,
                    if p.tuned { "tuned" } else { "model" },
                    s.policy_accuracy
                )
            }
        }
    }
}

/// Evaluates as `cfg` says. A predictions file is checked before anything is evaluated (so a
/// refusal costs nothing) and written once the evaluation is complete.
pub fn run(cfg: &EvalConfig, progress: &mut dyn Progress) -> Result<EvalReport> {
    if let Some(out) = &cfg.predictions_out {
        let mut inputs = crate::outdir::Inputs::default().with(&cfg.data);
        for p in [&cfg.load.model, &cfg.load.adapter].into_iter().flatten() {
            inputs = inputs.with(p);
        }
        crate::outdir::check_file(out, cfg.overwrite, &inputs)?;
    }
    if cfg.compare_base && cfg.load.adapter.is_none() {
        return Err(KilnError::Msg(
            "--compare-base needs --adapter (the tuned model is the base plus the adapter)".into(),
        ));
    }
    let opts = LoadOptions {
        format: cfg.format,
        skip_invalid: false,
        need_final_assistant: true,
        max_line_bytes: crate::data::budget::line_budget(cfg.spec.max_len),
    };
    // One file keeps its order, so `eval_samples` takes its first rows.
    let (ds, _) = Dataset::load(&[DataSpec { path: cfg.data.clone(), weight: 1.0 }], &opts, 0)?;
    let mut examples = ds.examples;
    if let Some(n) = cfg.eval_samples {
        examples.truncate(n);
    }
    if !examples.is_empty() && examples.iter().all(|e| matches!(e, Example::Preference { .. })) {
        return run_pref(cfg, &examples, progress).map(EvalReport::Preference);
    }
    let mut systems = Vec::new();
    if cfg.compare_base {
        systems.push(("base", LoadSpec { adapter: None, ..cfg.load.clone() }));
    }
    let label = if cfg.load.adapter.is_some() { "tuned" } else { "model" };
    systems.push((label, cfg.load.clone()));
    let mut results = Vec::new();
    for (label, spec_load) in systems {
        let loaded = crate::model::load(&spec_load)?;
        let (scores, preds) = measure(cfg, loaded, &examples, label, progress)?;
        results.push((scores, preds));
    }
    if let Some(out) = &cfg.predictions_out {
        write_predictions(out, &results)?;
    }
    let mut results = results.into_iter().map(|(s, _)| s);
    let (base, tuned) = match (results.next(), results.next()) {
        (Some(b), Some(t)) => (Some(b), t),
        (Some(t), None) => (None, t),
        _ => return Err(KilnError::Msg("no system evaluated".into())),
    };
    Ok(EvalReport::Text { data: cfg.data.clone(), base, tuned })
}

/// Loss and text metrics of one loaded system.
fn measure(
    cfg: &EvalConfig,
    loaded: Loaded,
    examples: &[Example],
    label: &str,
    progress: &mut dyn Progress,
) -> Result<(Scores, Vec<Prediction>)> {
    let spec = &cfg.spec;
    let template = loaded.template(cfg.template.as_deref())?;
    let rows = gen_rows(examples, template.is_some());
    let Loaded { path, model, tokenizer, lora } = loaded;
    let r = Renderer { tokenizer, template, train_on_inputs: false };
    let loss_rows =
        if spec.metrics.iter().any(|m| matches!(m, Metric::Loss | Metric::Ppl)) { examples.len() } else { 0 };
    let n_gen = if spec.metrics.iter().any(|m| m.needs_generation()) { rows.len() } else { 0 };
    progress.start(label, loss_rows + n_gen);
    let out = evaluate(&model, lora.as_ref(), &r, examples, &rows, spec, &mut |n| progress.advance(n))
        .map_err(|e| KilnError::Msg(format!("evaluating {} on {}: {e}", path.display(), cfg.data.display())))?;
    progress.finish();
    Ok(out)
}

/// The predictions as JSON lines (the last system's, with the base's beside them when
/// compared), written atomically.
fn write_predictions(out: &Path, results: &[(Scores, Vec<Prediction>)]) -> Result<()> {
    let (_, tuned) = results.last().ok_or_else(|| KilnError::Msg("no system evaluated".into()))?;
    let base = (results.len() == 2).then(|| &results[0].1);
    let mut text = String::new();
    for (i, p) in tuned.iter().enumerate() {
        let mut v = p.to_json();
        if let Some(b) = base.and_then(|b| b.get(i)) {
            v["base_prediction"] = b.prediction.clone().into();
        }
        text.push_str(&v.to_string());
        text.push('\n');
    }
    crate::formats::write_atomic(out, text.as_bytes())
        .map_err(|e| KilnError::Msg(format!("writing predictions to {}: {e}", out.display())))
}

/// Preference rows ({"prompt", "chosen", "rejected"}): DPO rewards of the adapter against the
/// base (the same weights with the adapter off), and how often each prefers the chosen answer.
fn run_pref(cfg: &EvalConfig, examples: &[Example], progress: &mut dyn Progress) -> Result<PrefReport> {
    use crate::train::pref::{PairStats, PrefSpec, evaluate_pairs, precompute_refs, tokenize_pair};
    use crate::train::{Objective, PrefLoss};
    if !(cfg.beta > 0.0 && cfg.beta.is_finite()) {
        return Err(KilnError::Msg(format!("--beta {}: must be a positive number", cfg.beta)));
    }
    let loaded = crate::model::load(&cfg.load)?;
    let template = loaded.template(cfg.template.as_deref())?;
    let Loaded { model, tokenizer, lora, .. } = loaded;
    let pad = tokenizer.pad_id();
    let r = Renderer { tokenizer, template, train_on_inputs: false };
    let mut st = PairStats::default();
    let mut pairs = Vec::new();
    for e in examples {
        pairs.extend(tokenize_pair(&r, e, cfg.spec.max_len, &mut st)?);
    }
    if pairs.is_empty() {
        return Err(KilnError::Msg(format!(
            "{}: no preference pair has an answer token within --max-seq-len {}",
            cfg.data.display(),
            cfg.spec.max_len
        )));
    }
    progress.start("reference", pairs.len());
    let mut done = 0;
    let refs = precompute_refs(&model, &pairs, pad, cfg.spec.batch, &mut |n| {
        progress.advance(n.saturating_sub(done));
        done = n;
    })?;
    progress.finish();
    let spec = PrefSpec { objective: Objective::Dpo, loss: PrefLoss::Sigmoid, beta: cfg.beta, label_smoothing: 0.0 };
    let stats = evaluate_pairs(&model, lora.as_ref(), &pairs, Some(&refs), &spec, pad, cfg.spec.batch)?
        .ok_or_else(|| KilnError::Msg("no pairs evaluated".into()))?;
    let base_accuracy = refs.iter().filter(|(c, r)| c > r).count() as f64 / refs.len() as f64;
    Ok(PrefReport {
        data: cfg.data.clone(),
        pairs: pairs.len(),
        dropped: st.dropped,
        stats,
        base_accuracy,
        tuned: lora.is_some(),
        beta: cfg.beta,
    })
}

/// What `kiln score` compares: predictions and references, plain text (one per line) or JSON
/// lines with the text in `field`.
#[derive(Clone, Debug)]
pub struct ScoreConfig {
    pub predictions: PathBuf,
    pub references: PathBuf,
    pub metrics: Vec<Metric>,
    pub field: String,
    pub text: TextOptions,
}

/// The largest predictions or references file [`score_files`] reads (it holds them whole).
const MAX_SCORE_BYTES: usize = 256 << 20;

/// The text metrics of saved predictions against references.
pub fn score_files(cfg: &ScoreConfig) -> Result<Scores> {
    if let Some(m) = cfg.metrics.iter().find(|m| !m.needs_generation()) {
        return Err(KilnError::Msg(format!(
            "--metrics: {m:?} needs a model (kiln eval); kiln score computes accuracy, bleu and rouge"
        )));
    }
    let preds = read_texts(&cfg.predictions, &cfg.field)?;
    let refs = read_texts(&cfg.references, &cfg.field)?;
    if preds.len() != refs.len() {
        return Err(KilnError::Msg(format!(
            "{} has {} predictions but {} has {} references: they must pair up line by line",
            cfg.predictions.display(),
            preds.len(),
            cfg.references.display(),
            refs.len()
        )));
    }
    let p: Vec<&str> = preds.iter().map(String::as_str).collect();
    let r: Vec<&str> = refs.iter().map(String::as_str).collect();
    Scores::of_texts(&p, &r, &cfg.metrics, cfg.text).map_err(|e| {
        KilnError::Msg(format!("scoring {} against {}: {e}", cfg.predictions.display(), cfg.references.display()))
    })
}

/// The texts of a predictions/references file: JSON lines with `field` when the file's first
/// non-empty line is a JSON object, else one text per line.
fn read_texts(path: &Path, field: &str) -> Result<Vec<String>> {
    let text = crate::data::read::read_text(path, MAX_SCORE_BYTES, "the most `kiln score` reads from one file")?;
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(&text).split('\n').collect();
    let jsonl = lines.iter().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_start().starts_with('{'));
    if text.trim().is_empty() {
        return Err(KilnError::Msg(format!("{}: empty file", path.display())));
    }
    if !jsonl {
        return Ok(lines.iter().map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect());
    }
    let at = |i: usize| format!("{}:{}", path.display(), i + 1);
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value =
                serde_json::from_str(l).map_err(|e| KilnError::Msg(format!("{}: invalid JSON: {e}", at(i))))?;
            v.get(field)
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| KilnError::Msg(format!("{}: {field}: missing or not a string", at(i))))
        })
        .collect()
}
