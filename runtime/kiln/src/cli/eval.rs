//! `kiln eval`: loss/perplexity and generation metrics of a model (with or without an adapter)
//! on a dataset — typically the `OUT/eval.jsonl` that training held out — optionally beside the
//! base model; and `kiln score`: the same text metrics over saved predictions.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::eval::{EvalConfig, EvalSpec, Format, LoadSpec, Metric, Progress, ScoreConfig, TextOptions, table};

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

/// Progress bars on standard error, one per phase (hidden with --json).
struct Bars {
    hidden: bool,
    bar: Option<ProgressBar>,
}

impl Progress for Bars {
    fn start(&mut self, label: &str, total: usize) {
        let pb = if self.hidden { ProgressBar::hidden() } else { ProgressBar::new(total as u64) };
        pb.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed_precise} < {eta}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_message(label.to_string());
        self.bar = Some(pb);
    }
    fn advance(&mut self, n: usize) {
        if let Some(pb) = &self.bar {
            pb.inc(n as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        }
    }
}

pub fn run(a: EvalArgs) -> Result<()> {
    let metrics = Metric::parse_list(&a.metrics)?;
    let format = match &a.format {
        None => None,
        Some(f) => Some(Format::parse(f).ok_or_else(|| anyhow!("--format {f}: unknown"))?),
    };
    let spec = EvalSpec {
        metrics,
        text: TextOptions { case_insensitive: a.case_insensitive, rouge_stemmer: a.rouge_stemmer },
        sampling: a.sampling.options()?,
        stop: a.sampling.stop,
        max_len: a.max_seq_len,
        batch: a.batch_size,
    };
    let cfg = EvalConfig {
        load: LoadSpec { model: a.model, adapter: a.adapter },
        data: a.data,
        format,
        eval_samples: a.eval_samples,
        compare_base: a.compare_base,
        template: a.template,
        spec,
        predictions_out: a.predictions_out,
        overwrite: a.overwrite,
        beta: a.beta,
    };
    let report = kiln::eval::run(&cfg, &mut Bars { hidden: a.json, bar: None })?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
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

pub fn score(a: ScoreArgs) -> Result<()> {
    let cfg = ScoreConfig {
        metrics: Metric::parse_list(&a.metrics)?,
        predictions: a.predictions,
        references: a.references,
        field: a.field,
        text: TextOptions { case_insensitive: a.case_insensitive, rouge_stemmer: a.rouge_stemmer },
    };
    let s = kiln::eval::score_files(&cfg)?;
    if a.json {
        println!("{}", s.to_json());
    } else {
        println!("{} pairs", s.n);
        print!("{}", table(None, &s));
    }
    Ok(())
}
