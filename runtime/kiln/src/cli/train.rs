//! `kiln train`: fine-tune a model on the user's data (LoRA, QLoRA or full), with evaluation,
//! checkpoints, resume, a progress bar, `metrics.jsonl`, `loss.svg` and a deployable output
//! (a PEFT adapter, or the full weights).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::train::{Event, Outcome, RunOptions, Summary, TrainConfig};
use serde::Serialize;

/// Flags; each overrides the same key of `--config` (TOML), which overrides the default. The
/// "[default: …]" of a setting's help is that of `TrainConfig::default()` (added by
/// [`show_default`]); only the defaults the configuration leaves open are described here.
#[derive(Args, Debug, Serialize)]
#[command(mut_args = show_default)]
pub struct TrainArgs {
    /// A TOML file with any of the settings below (`learning_rate = 1e-4`, `data = ["a.jsonl"]`).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Load the model and data, print the plan and the memory estimate, and exit.
    #[arg(long)]
    #[serde(skip)]
    dry_run: bool,
    /// The GPU to use: an index as `kiln info` lists the adapters, or part of its name.
    #[arg(long)]
    #[serde(skip)]
    device: Option<String>,
    /// Continue from the newest checkpoint under --out, or from the one given.
    #[arg(long, num_args = 0..=1, value_name = "CHECKPOINT")]
    #[serde(skip)]
    resume: Option<Option<PathBuf>>,
    /// Replace an earlier run in --out (a folder kiln wrote; deleted once this run completes).
    #[arg(long, conflicts_with = "resume")]
    #[serde(skip)]
    overwrite: bool,
    /// A .gguf file or an HF model directory [default: SmolLM2-135M-Instruct, fetched on first use].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<PathBuf>,
    /// Training data (JSONL, JSON or CSV), `FILE` or `FILE:WEIGHT`; repeat to mix files.
    #[arg(long)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    data: Vec<String>,
    /// Evaluation data [default: --eval-split of the training data is held out].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_data: Option<PathBuf>,
    /// Fraction held out for evaluation.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_split: Option<f64>,
    /// Output directory.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
    /// lora, qlora, full or adapter (bottleneck adapters); `dpo` or `orpo`
    /// selects that objective with LoRA, `dpo+qlora` (any pair) both.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    /// sft, dpo (direct preference optimization) or orpo (odds-ratio preference optimization);
    /// dpo and orpo train on {"prompt", "chosen", "rejected"} rows.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    objective: Option<String>,
    /// DPO: how strongly the tuned model is held to the reference; ORPO: weight of the
    /// odds-ratio term; IPO: its τ.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    beta: Option<f64>,
    /// DPO sigmoid loss: assumed probability that a preference label is flipped, in [0, 0.5)
    /// (conservative DPO).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    label_smoothing: Option<f64>,
    /// DPO loss: sigmoid or ipo.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dpo_loss: Option<String>,
    /// DPO: compute the reference log-probabilities once before training (one forward per
    /// pair) instead of at every step; always on with --method full.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    precompute_ref: Option<bool>,
    /// qlora: quantize the base's linear weights at load: nf4, nf4_dq (double-quantized NF4,
    /// 4.125 bits), q8_0, q4_0, q4_1, q5_0, q4_k, q5_k, q6_k [default:
    /// keep a GGUF's block types; nf4 for an unquantized model].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize: Option<String>,
    /// Passes over the data.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    epochs: Option<f64>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    learning_rate: Option<f64>,
    /// adamw or adamw8bit (block-wise 8-bit moments: a quarter of the optimizer memory).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    optim: Option<String>,
    /// constant, linear or cosine, after warmup.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr_scheduler: Option<String>,
    /// Linear warmup steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_accum: Option<usize>,
    /// Tokens per sequence [default: the model's context, at most 2048].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_seq_len: Option<usize>,
    /// Pack rows into full sequences.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    packing: Option<bool>,
    /// LoRA rank.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_r: Option<usize>,
    /// LoRA alpha (scale alpha/r).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_alpha: Option<f64>,
    /// Dropout on each adapter's input while training.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lora_dropout: Option<f64>,
    /// q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all-linear.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    target_modules: Option<String>,
    /// LoRA/QLoRA: also train embed_tokens (and an untied lm_head) in full, saved as PEFT's
    /// modules_to_save.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train_embeddings: Option<bool>,
    /// Special tokens to add, comma-separated (e.g. ChatML's on a base model); a grown
    /// vocabulary also trains the embeddings [default: none].
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    add_special_tokens: Vec<String>,
    /// Hidden size of the bottleneck adapters (--method adapter).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter_size: Option<usize>,
    /// rsLoRA scaling alpha/√r.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    use_rslora: Option<bool>,
    /// AdamW weight decay (not on norms and biases).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    weight_decay: Option<f64>,
    /// Clip the global gradient norm (0: off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_grad_norm: Option<f64>,
    /// Recompute each block in backward instead of keeping its activations.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    gradient_checkpointing: Option<bool>,
    /// Seed of the adapter initialization, the split and the data order.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    save_steps: Option<usize>,
    /// Keep the newest N checkpoints plus the best (0: all).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    save_total_limit: Option<usize>,
    /// Evaluate every N steps (0: before and after only).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_steps: Option<usize>,
    /// Evaluate on at most N held-out rows (0: all).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_samples: Option<usize>,
    /// Also score generated answers at each evaluation: comma-separated accuracy, bleu, rouge
    /// (on --eval-samples rows, greedy; slow, so keep the sample small) [default: none].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_metrics: Option<String>,
    /// New-token budget of those generations.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_max_new_tokens: Option<usize>,
    /// Refuse to start when the estimated peak memory exceeds this many MiB (0: the memory
    /// the system has available).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_limit_mb: Option<u64>,
    /// Skip (and count) a step whose loss or gradient is NaN/inf instead of stopping the run.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_nonfinite: Option<bool>,
    /// Force the data format: prompt-completion, messages, sharegpt, alpaca, text.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    /// Built-in chat template when the model has none: chatml, llama3, mistral, alpaca.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    /// Skip invalid rows (counted by reason) instead of stopping at the first.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_invalid: Option<bool>,
    /// Train on prompt tokens too.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    train_on_inputs: Option<bool>,
    /// auto, cpu, cuda (--device N), cuda-emu (the CUDA kernels on this CPU, slow) or wgpu.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    /// The GEMMs' arithmetic on wgpu: f32, or f16 (half the multiply cost on most GPUs; needs
    /// the adapter's SHADER_F16).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<String>,
}

/// Appends the configuration's default to a setting's help, as clap shows a default value
/// (the flags themselves stay unset unless given, so they override `--config` only then).
fn show_default(arg: clap::Arg) -> clap::Arg {
    let Some(v) = TrainConfig::default_shown(arg.get_id().as_str()) else { return arg };
    let add = |h: &clap::builder::StyledStr| format!("{h} [default: {v}]");
    let (help, long) = (arg.get_help().map(add), arg.get_long_help().map(add));
    let arg = match help {
        Some(h) => arg.help(h),
        None => arg,
    };
    match long {
        Some(h) => arg.long_help(h),
        None => arg,
    }
}

/// Splits `--method dpo`, `dpo+qlora` or `qlora+dpo` into the objective and the method.
fn split_method(a: &mut TrainArgs) -> Result<()> {
    let Some(m) = a.method.take() else { return Ok(()) };
    let mut method = None;
    for part in m.split('+').map(str::trim) {
        if ["sft", "dpo", "orpo"].contains(&part) {
            if let Some(o) = a.objective.as_deref().filter(|o| *o != part) {
                bail!("--method {m} and --objective {o} disagree");
            }
            a.objective = Some(part.to_string());
        } else if method.replace(part.to_string()).is_some() {
            bail!("--method {m}: at most one of lora, qlora, full, adapter (with dpo, orpo or sft)");
        }
    }
    a.method = method;
    Ok(())
}

pub fn run(mut a: TrainArgs) -> Result<()> {
    split_method(&mut a)?;
    let flags = toml::Table::try_from(&a).context("reading the flags")?;
    let cfg = TrainConfig::resolve(a.config.as_deref(), flags)?;
    let opts = RunOptions {
        config_file: a.config.clone(),
        dry_run: a.dry_run,
        device: a.device.clone(),
        resume: a.resume.clone(),
        overwrite: a.overwrite,
        handle_signals: true,
    };
    let mut progress = Progress::default();
    let outcome = kiln::train::run(cfg, &opts, &mut |e| progress.on(e));
    progress.finish();
    match outcome? {
        Outcome::Planned => Ok(()),
        Outcome::Interrupted { step, total, checkpoint, signal } => {
            eprintln!(
                "interrupted at step {step} of {total} ({}): checkpoint {}; continue with the same command and --resume",
                signal_name(signal),
                checkpoint.display()
            );
            std::process::exit(128 + if signal > 0 { signal } else { signal_hook::consts::SIGINT });
        }
        Outcome::Finished { summary, saved, out } => {
            report(&summary, &saved, &out);
            Ok(())
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "SIGINT",
    }
}

/// The progress bar of the steps (on a terminal), or a plain line about 20 times per run and
/// at every evaluation; notes above it.
#[derive(Default)]
struct Progress {
    bar: Option<ProgressBar>,
    tty: bool,
    every: usize,
}

impl Progress {
    /// A log line above the bar, or on stderr when the bar is hidden or not yet there.
    fn say(&self, msg: &str) {
        match &self.bar {
            Some(pb) if !pb.is_hidden() => pb.println(msg),
            _ => eprintln!("{msg}"),
        }
    }

    fn on(&mut self, e: Event<'_>) {
        match e {
            Event::Note(n) => self.say(n),
            Event::Start { total } => {
                self.tty = std::io::stderr().is_terminal();
                self.every = total.div_ceil(20).max(1);
                let pb = ProgressBar::new(total as u64);
                if self.tty {
                    pb.set_style(
                        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise} < {eta}]")
                            .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                } else {
                    pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
                }
                self.bar = Some(pb);
            }
            Event::Step(s) => {
                let pref = s
                    .pref
                    .map_or(String::new(), |p| format!(" acc {:.2} margin {:.3}", p.reward_accuracy, p.reward_margin));
                let msg = format!("loss {:.4}{pref} lr {:.2e} {:.0} tok/s", s.loss, s.lr, s.tokens_per_s);
                if let Some(pb) = &self.bar {
                    pb.set_position(s.step as u64);
                }
                match &self.bar {
                    Some(pb) if self.tty => pb.set_message(msg),
                    _ if s.step % self.every.max(1) == 0 || s.step == s.total => {
                        eprintln!(
                            "step {}/{}: {msg} epoch {:.2} grad norm {:.3}",
                            s.step, s.total, s.epoch, s.grad_norm
                        )
                    }
                    _ => {}
                }
            }
            Event::Eval { step, loss, scores, pref } => {
                let extra: String =
                    scores.map_or(String::new(), |s| s.rows().iter().map(|(k, v)| format!(", {k} {v:.2}")).collect());
                self.say(&match pref {
                    Some(p) => format!(
                        "eval @ step {step}: loss {loss:.4}, reward accuracy {:.3} (model prefers chosen {:.3}), rewards chosen {:.4} rejected {:.4} margin {:.4}, chosen ppl {:.2}{extra}",
                        p.reward_accuracy,
                        p.policy_accuracy,
                        p.rewards_chosen,
                        p.rewards_rejected,
                        p.margin(),
                        p.chosen_loss().exp()
                    ),
                    None => format!("eval @ step {step}: loss {loss:.4}, ppl {:.2}{extra}", loss.exp()),
                });
            }
            Event::Reference { done, total } => {
                let hidden = self.bar.as_ref().is_none_or(ProgressBar::is_hidden);
                if done == total || hidden && done % 256 == 0 {
                    self.say(&format!("reference log-probabilities: {done}/{total} pairs"));
                } else if let Some(pb) = &self.bar {
                    pb.set_message(format!("reference log-probabilities {done}/{total}"));
                }
            }
            Event::Saved { step, path } => self.say(&format!("checkpoint @ step {step}: {}", path.display())),
            Event::Skipped { step, reason } => self.say(&format!("step {step} skipped: {reason}")),
        }
    }

    fn finish(&self) {
        if let Some(pb) = &self.bar {
            pb.finish_and_clear();
        }
    }
}

/// Prints the summary of a finished run.
fn report(s: &Summary, saved: &str, out: &std::path::Path) {
    if !s.skipped.is_empty() {
        eprintln!("{} steps skipped for a non-finite loss or gradient: {:?}", s.skipped.len(), s.skipped);
    }
    let first = s.evals.first().map(|e| e.1);
    let last = s.evals.last().map(|e| e.1);
    if let (Some(a), Some(b)) = (s.eval_rewards.first(), s.eval_rewards.last()) {
        println!("held-out reward accuracy {:.3} (step {}) → {:.3} (step {})", a.1, a.0, b.1, b.0);
    }
    println!(
        "trained {} steps{} in {:.1}s ({:.0} tokens/s), peak memory {}; eval loss {} → {}{}; {saved}; metrics.jsonl, loss.svg in {}",
        s.steps,
        s.resumed_from.map(|r| format!(" (resumed at {r})")).unwrap_or_default(),
        s.secs,
        s.tokens as f64 / s.secs.max(1e-9),
        kiln::info::peak_rss_mb().map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "unknown".into()),
        first.map(|l| format!("{l:.4}")).unwrap_or_else(|| "–".into()),
        last.map(|l| format!("{l:.4}")).unwrap_or_else(|| "–".into()),
        s.best_eval.map(|(st, l)| format!(" (best {l:.4} at step {st})")).unwrap_or_default(),
        out.display()
    );
}
