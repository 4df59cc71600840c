//! `kiln eval`: loss/perplexity and generation metrics of a model (with or without an adapter)
//! on a dataset — typically the `OUT/eval.jsonl` that training held out — optionally beside the
//! base model; and `kiln score`: the same text metrics over saved predictions.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::data::dataset::{DataSpec, Dataset, LoadOptions};
use kiln::data::example::Format;
use kiln::data::render::Renderer;
use kiln::eval::run::{EvalSpec, evaluate, gen_rows};
use kiln::eval::{Metric, Scores, TextOptions, table};

use super::generate::SamplingArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A .gguf file or a model directory [default: SmolLM2 from the model cache].
    #[arg(long)]
    model: Option<PathBuf>,
    /// A tuned adapter (PEFT LoRA or kiln bottleneck) applied to the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// JSONL/JSON/CSV rows in any training format (e.g. OUT/eval.jsonl).
    #[arg(long)]
    data: PathBuf,
    /// Force the data format instead of detecting it.
    #[arg(long)]
    format: Option<String>,
    /// Comma-separated: loss, ppl, accuracy, bleu, rouge.
    #[arg(long, default_value = "loss,ppl,accuracy,bleu,rouge")]
    metrics: String,
    /// Score only the first N rows.
    #[arg(long)]
    eval_samples: Option<usize>,
    /// Exact match ignores case.
    #[arg(long)]
    case_insensitive: bool,
    /// ROUGE with the Porter stemmer (rouge-score's use_stemmer=True).
    #[arg(long)]
    rouge_stemmer: bool,
    /// Also evaluate the base model (without --adapter) and print base, tuned and the difference.
    #[arg(long)]
    compare_base: bool,
    /// Chat template by name (chatml, llama3, mistral, alpaca) instead of the model's own.
    #[arg(long)]
    template: Option<String>,
    /// Tokens per row for the loss (longer rows are truncated).
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Rows per forward pass for the loss.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Write each generated answer as a JSON line {"prompt", "reference", "prediction",
    /// "new_tokens", "stop"} (with --compare-base also "base_prediction").
    #[arg(long)]
    predictions_out: Option<PathBuf>,
    /// Replace an existing --predictions-out file (atomically, once the new one is complete).
    #[arg(long)]
    overwrite: bool,
    /// Print JSON only: {"n", "metrics": {…}} or, with --compare-base, {"base": {…}, "tuned": {…}}.
    /// Preference rows: {"n", "metrics": {"reward_accuracy", "reward_margin", "rewards_chosen",
    /// "rewards_rejected", "dpo_loss", "policy_accuracy", "base_policy_accuracy"}}.
    #[arg(long)]
    json: bool,
    /// Preference rows: the DPO beta the rewards are scaled by.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
}

/// Preference rows ({"prompt", "chosen", "rejected"}): DPO rewards of the adapter against the
/// base (the same weights with the adapter off), and how often each prefers the chosen answer.
fn run_pref(a: &EvalArgs, examples: &[kiln::data::Example]) -> Result<()> {
    use kiln::train::pref::{PairStats, PrefSpec, evaluate_pairs, precompute_refs, tokenize_pair};
    use kiln::train::{Objective, PrefLoss};
    if !(a.beta > 0.0 && a.beta.is_finite()) {
        bail!("--beta {}: must be a positive number", a.beta);
    }
    let path = kiln::models::resolve(a.model.as_deref())?;
    let (model, tok, lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    let template = kiln::data::template::ChatTemplate::choose_for(
        a.template.as_deref(),
        tok.chat_template.as_deref(),
        Some(&path),
    )?;
    let pad = tok.pad_id();
    let r = Renderer { tokenizer: tok, template, train_on_inputs: false };
    let mut st = PairStats::default();
    let mut pairs = Vec::new();
    for e in examples {
        pairs.extend(tokenize_pair(&r, e, a.max_seq_len, &mut st)?);
    }
    if pairs.is_empty() {
        bail!("{}: no preference pair has an answer token within --max-seq-len {}", a.data.display(), a.max_seq_len);
    }
    let pb = bar(pairs.len(), "reference", a.json);
    let refs = precompute_refs(&model, &pairs, pad, a.batch_size, &mut |n| pb.set_position(n as u64))?;
    pb.finish_and_clear();
    let spec = PrefSpec { objective: Objective::Dpo, loss: PrefLoss::Sigmoid, beta: a.beta, label_smoothing: 0.0 };
    let s = evaluate_pairs(&model, lora.as_ref(), &pairs, Some(&refs), &spec, pad, a.batch_size)?
        .ok_or_else(|| anyhow!("no pairs evaluated"))?;
    let base_acc = refs.iter().filter(|(c, r)| c > r).count() as f64 / refs.len() as f64;
    let mut m = s.json_fields();
    m.insert("dpo_loss".into(), s.loss.into());
    m.insert("base_policy_accuracy".into(), base_acc.into());
    if a.json {
        println!("{}", serde_json::json!({"n": pairs.len(), "metrics": m}));
        return Ok(());
    }
    println!("{} preference pairs of {} ({} dropped for length)", pairs.len(), a.data.display(), st.dropped);
    if lora.is_some() {
        println!("reward accuracy      {:.4}  (beta {})", s.reward_accuracy, a.beta);
        println!(
            "reward margin        {:.4}  (chosen {:.4}, rejected {:.4})",
            s.margin(),
            s.rewards_chosen,
            s.rewards_rejected
        );
        println!("DPO loss             {:.4}", s.loss);
    } else {
        println!("(no --adapter: rewards against the model itself are 0; showing its own preference)");
    }
    println!(
        "prefers chosen       base {:.4} → {} {:.4}",
        base_acc,
        if lora.is_some() { "tuned" } else { "model" },
        s.policy_accuracy
    );
    Ok(())
}

fn bar(n: usize, label: &str, hidden: bool) -> ProgressBar {
    let pb = if hidden { ProgressBar::hidden() } else { ProgressBar::new(n as u64) };
    pb.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed_precise} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(label.to_string());
    pb
}

pub fn run(a: EvalArgs) -> Result<()> {
    let metrics = Metric::parse_list(&a.metrics)?;
    if let Some(out) = &a.predictions_out {
        // Checked before the evaluation, so a refusal costs nothing.
        let mut inputs = kiln::outdir::Inputs::default().with(&a.data);
        for p in [&a.model, &a.adapter].into_iter().flatten() {
            inputs = inputs.with(p);
        }
        kiln::outdir::check_file(out, a.overwrite, &inputs)?;
    }
    if a.compare_base && a.adapter.is_none() {
        bail!("--compare-base needs --adapter (the tuned model is the base plus the adapter)");
    }
    let format = match &a.format {
        None => None,
        Some(f) => Some(Format::parse(f).ok_or_else(|| anyhow!("--format {f}: unknown"))?),
    };
    let sampling = a.sampling.options()?;
    let opts = LoadOptions {
        format,
        skip_invalid: false,
        need_final_assistant: true,
        max_line_bytes: kiln::data::budget::line_budget(a.max_seq_len),
    };
    let spec = DataSpec { path: a.data.clone(), weight: 1.0 };
    // One file keeps its order, so --eval-samples takes its first rows.
    let (ds, _) = Dataset::load(&[spec], &opts, 0)?;
    let mut examples = ds.examples;
    if let Some(n) = a.eval_samples {
        examples.truncate(n);
    }
    if !examples.is_empty() && examples.iter().all(|e| matches!(e, kiln::data::Example::Preference { .. })) {
        return run_pref(&a, &examples);
    }
    let spec = EvalSpec {
        metrics: metrics.clone(),
        text: TextOptions { case_insensitive: a.case_insensitive, rouge_stemmer: a.rouge_stemmer },
        sampling,
        stop: a.sampling.stop.clone(),
        max_len: a.max_seq_len,
        batch: a.batch_size,
    };
    let path = kiln::models::resolve(a.model.as_deref())?;
    let mut systems = Vec::new();
    if a.compare_base {
        let (model, tok) = kiln::models::load_with_tokenizer(&path, false)?;
        systems.push(("base", model, tok, None));
    }
    let (model, tok, lora) = kiln::models::load_with_adapter(&path, a.adapter.as_deref())?;
    systems.push((if a.adapter.is_some() { "tuned" } else { "model" }, model, tok, lora));
    let mut results = Vec::new();
    for (label, model, tok, lora) in systems {
        let template = kiln::data::template::ChatTemplate::choose_for(
            a.template.as_deref(),
            tok.chat_template.as_deref(),
            Some(&path),
        )?;
        let rows = gen_rows(&examples, template.is_some());
        let r = Renderer { tokenizer: tok, template, train_on_inputs: false };
        let loss_rows =
            if metrics.iter().any(|m| matches!(m, Metric::Loss | Metric::Ppl)) { examples.len() } else { 0 };
        let n_gen = if metrics.iter().any(|m| m.needs_generation()) { rows.len() } else { 0 };
        let pb = bar(loss_rows + n_gen, label, a.json);
        let (scores, preds) = evaluate(&model, lora.as_ref(), &r, &examples, &rows, &spec, &mut |n| pb.inc(n as u64))
            .with_context(|| format!("evaluating {} on {}", path.display(), a.data.display()))?;
        pb.finish_and_clear();
        results.push((label, scores, preds));
    }
    if let Some(out) = &a.predictions_out {
        let (_, _, tuned) = results.last().ok_or_else(|| anyhow!("no system evaluated"))?;
        let base = (results.len() == 2).then(|| &results[0].2);
        let mut text = String::new();
        for (i, p) in tuned.iter().enumerate() {
            let mut v = p.to_json();
            if let Some(b) = base.and_then(|b| b.get(i)) {
                v["base_prediction"] = b.prediction.clone().into();
            }
            text.push_str(&v.to_string());
            text.push('\n');
        }
        kiln::formats::write_atomic(out, text.as_bytes())
            .with_context(|| format!("writing predictions to {}", out.display()))?;
    }
    let (tuned, base) = match results.as_slice() {
        [(_, b, _), (_, t, _)] => (t, Some(b)),
        [(_, t, _)] => (t, None),
        _ => bail!("no system evaluated"),
    };
    if a.json {
        let v = match base {
            Some(b) => serde_json::json!({"base": b.to_json(), "tuned": tuned.to_json()}),
            None => tuned.to_json(),
        };
        println!("{v}");
    } else {
        println!("{} rows of {}", tuned.n, a.data.display());
        print!("{}", table(base, tuned));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Predictions: plain text (one per line) or JSONL (a `text` field, or --field).
    #[arg(long)]
    predictions: PathBuf,
    /// References, in the same form and order.
    #[arg(long)]
    references: PathBuf,
    /// Comma-separated: accuracy, bleu, rouge.
    #[arg(long, default_value = "accuracy,bleu,rouge")]
    metrics: String,
    /// The JSONL field holding the text [default: text].
    #[arg(long, default_value = "text")]
    field: String,
    #[arg(long)]
    case_insensitive: bool,
    #[arg(long)]
    rouge_stemmer: bool,
    /// Print JSON only: {"n", "metrics": {…}}.
    #[arg(long)]
    json: bool,
}

/// The largest predictions or references file `kiln score` reads (it holds them whole).
const MAX_SCORE_BYTES: usize = 256 << 20;

/// The texts of a predictions/references file: JSON lines with `field` when the file's first
/// non-empty line is a JSON object, else one text per line.
fn read_texts(path: &std::path::Path, field: &str) -> Result<Vec<String>> {
    let text = super::generate::read_bounded(path, MAX_SCORE_BYTES, "the most `kiln score` reads from one file")?;
    let lines: Vec<&str> = text.strip_suffix('\n').unwrap_or(&text).split('\n').collect();
    let jsonl = lines.iter().find(|l| !l.trim().is_empty()).is_some_and(|l| l.trim_start().starts_with('{'));
    if text.trim().is_empty() {
        bail!("{}: empty file", path.display());
    }
    if !jsonl {
        return Ok(lines.iter().map(|l| l.strip_suffix('\r').unwrap_or(l).to_string()).collect());
    }
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| anyhow!("{}:{}: invalid JSON: {e}", path.display(), i + 1))?;
            v.get(field)
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| anyhow!("{}:{}: {field}: missing or not a string", path.display(), i + 1))
        })
        .collect()
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let metrics = Metric::parse_list(&a.metrics)?;
    if let Some(m) = metrics.iter().find(|m| !m.needs_generation()) {
        bail!("--metrics: {m:?} needs a model (kiln eval); kiln score computes accuracy, bleu and rouge");
    }
    let preds = read_texts(&a.predictions, &a.field)?;
    let refs = read_texts(&a.references, &a.field)?;
    if preds.len() != refs.len() {
        bail!(
            "{} has {} predictions but {} has {} references: they must pair up line by line",
            a.predictions.display(),
            preds.len(),
            a.references.display(),
            refs.len()
        );
    }
    let p: Vec<&str> = preds.iter().map(String::as_str).collect();
    let r: Vec<&str> = refs.iter().map(String::as_str).collect();
    let o = TextOptions { case_insensitive: a.case_insensitive, rouge_stemmer: a.rouge_stemmer };
    let s = Scores::of_texts(&p, &r, &metrics, o)
        .with_context(|| format!("scoring {} against {}", a.predictions.display(), a.references.display()))?;
    if a.json {
        println!("{}", s.to_json());
    } else {
        println!("{} pairs", s.n);
        print!("{}", table(None, &s));
    }
    Ok(())
}
