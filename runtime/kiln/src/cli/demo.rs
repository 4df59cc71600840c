//! `kiln demo`: the whole path on a model the tool creates itself — write a random Llama,
//! LoRA-fine-tune it on the bundled text (byte-level tokens), report held-out loss before and
//! after, save the adapter in PEFT layout and the metrics as JSON lines.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::adapters::{LoraConfig, LoraSet};
use kiln::core::rng::Rng;
use kiln::core::{Tape, Tensor};
use kiln::model::init::{TinySpec, create_random_llama};
use kiln::model::{Inputs, Llama, default_positions, shift_targets};
use kiln::train::AdamW;

const DEMO_TEXT: &str = include_str!("../../../../data/demo.txt");

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory (model/, adapter/, metrics.jsonl).
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Optimizer steps.
    #[arg(long, default_value_t = 80)]
    steps: usize,
    /// Rows per batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 96)]
    seq_len: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    /// Seed for the model, the adapter and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn batch(tokens: &[i32], starts: &[usize], t: usize) -> Result<(Tensor, Tensor)> {
    let b = starts.len();
    let mut ids = Vec::with_capacity(b * t);
    for &s in starts {
        ids.extend_from_slice(&tokens[s..s + t]);
    }
    let targets = shift_targets(&ids, b, t, None);
    Ok((Tensor::from_vec(ids, [b, t])?, Tensor::from_vec(targets, [b, t])?))
}

fn eval_loss(model: &Llama, lora: &LoraSet, tokens: &[i32], t: usize) -> Result<f64> {
    let starts: Vec<usize> = (0..tokens.len().saturating_sub(t + 1)).step_by(t).collect();
    let (ids, targets) = batch(tokens, &starts, t)?;
    let pos = default_positions(starts.len(), t)?;
    let tape = Tape::no_grad();
    let ce = model.loss(&tape, &Inputs { ids: &ids, pos: &pos, seg: None }, &targets, Some(lora), false)?;
    Ok(ce.loss.value().item()?)
}

pub fn run(a: DemoArgs) -> Result<()> {
    if a.steps == 0 || a.batch_size == 0 || a.seq_len < 2 {
        bail!("--steps and --batch-size must be positive and --seq-len at least 2");
    }
    let tokens: Vec<i32> = DEMO_TEXT.bytes().map(i32::from).collect();
    let split = tokens.len() * 9 / 10;
    let (train, held_out) = tokens.split_at(split);
    if train.len() <= a.seq_len + 1 || held_out.len() <= a.seq_len + 1 {
        bail!("--seq-len {} is too long for the {}-byte demo text", a.seq_len, tokens.len());
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
    let lcfg = LoraConfig { r: a.lora_r, alpha: 2.0 * a.lora_r as f64, ..Default::default() };
    let mut lora = LoraSet::new(&model.config, lcfg, a.seed + 1)?;
    eprintln!(
        "demo: random Llama ({} params) in {}, LoRA r={} ({} trainable), {} train / {} held-out bytes",
        model.config.num_params(),
        model_dir.display(),
        a.lora_r,
        lora.num_params(),
        train.len(),
        held_out.len()
    );
    let before = eval_loss(&model, &lora, held_out, a.seq_len)?;
    let mut opt = AdamW::new(a.lr);
    let mut rng = Rng::new(a.seed + 2);
    let metrics_path = a.out.join("metrics.jsonl");
    let mut metrics =
        std::fs::File::create(&metrics_path).with_context(|| format!("creating {}", metrics_path.display()))?;
    writeln!(
        metrics,
        "{}",
        serde_json::json!({"kind": "eval", "step": 0, "eval_loss": before, "eval_ppl": before.exp()})
    )?;
    let pb = ProgressBar::new(a.steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let pos = default_positions(a.batch_size, a.seq_len)?;
    let t0 = Instant::now();
    let mut seen = 0usize;
    let mut last = f64::NAN;
    for step in 1..=a.steps {
        let starts: Vec<usize> = (0..a.batch_size).map(|_| rng.below(train.len() - a.seq_len)).collect();
        let (ids, targets) = batch(train, &starts, a.seq_len)?;
        let tape = Tape::new();
        let ce = model.loss(&tape, &Inputs { ids: &ids, pos: &pos, seg: None }, &targets, Some(&lora), false)?;
        let grads = tape.backward(&ce.loss)?;
        // Linear warmup over the first 10% of steps, then constant.
        opt.lr = a.lr * (step as f64 / (a.steps as f64 * 0.1).max(1.0)).min(1.0);
        let gn = opt.step(lora.params_mut(), &grads, Some(1.0))?;
        last = ce.loss.value().item()?;
        seen += a.batch_size * a.seq_len;
        let el = t0.elapsed().as_secs_f64();
        writeln!(
            metrics,
            "{}",
            serde_json::json!({"kind": "train", "step": step, "epoch": seen as f64 / train.len() as f64,
            "loss": last, "lr": opt.lr, "grad_norm": gn, "tokens": seen, "tokens_per_s": seen as f64 / el, "elapsed_s": el})
        )?;
        pb.set_message(format!("loss {last:.3}"));
        pb.inc(1);
    }
    pb.finish_and_clear();
    let after = eval_loss(&model, &lora, held_out, a.seq_len)?;
    writeln!(
        metrics,
        "{}",
        serde_json::json!({"kind": "eval", "step": a.steps, "eval_loss": after, "eval_ppl": after.exp()})
    )?;
    let adapter = a.out.join("adapter");
    let tensors: Vec<(String, Tensor)> =
        lora.named_params().into_iter().map(|(n, v)| (format!("base_model.model.{n}"), v.value().clone())).collect();
    kiln::formats::write_safetensors(&adapter.join("adapter_model.safetensors"), &tensors)?;
    let acfg = serde_json::json!({"peft_type": "LORA", "r": a.lora_r, "lora_alpha": 2 * a.lora_r, "use_rslora": false,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "lora_dropout": 0.0, "bias": "none",
        "task_type": "CAUSAL_LM", "base_model_name_or_path": model_dir.display().to_string()});
    kiln::formats::write_atomic(&adapter.join("adapter_config.json"), serde_json::to_string_pretty(&acfg)?.as_bytes())?;
    let el = t0.elapsed().as_secs_f64();
    println!(
        "demo: {} steps in {:.1}s ({:.0} tokens/s); last train loss {:.3}; held-out loss {:.3} → {:.3}; adapter in {}",
        a.steps,
        el,
        seen as f64 / el,
        last,
        before,
        after,
        adapter.display()
    );
    if after.is_nan() || after >= before {
        bail!("held-out loss did not improve ({before:.3} → {after:.3})");
    }
    Ok(())
}
