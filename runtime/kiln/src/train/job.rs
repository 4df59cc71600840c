//! A whole training run from a resolved [`TrainConfig`]: what `kiln train` (and anything else
//! that trains, such as a Python binding or a server) calls. It claims the output folder,
//! opens the backend, plans the run from the model's config and the data before any tensor
//! is loaded (refusing one that cannot fit), loads and readies the model, trains (resuming if
//! asked) and writes the deployable output and the loss curve.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::checkpoint;
use super::config::{Method, TrainConfig};
use super::events::{Event, Summary};
use super::plan::{BaseModel, Plan, check_memory, plan_text};
use super::prepare::{Prepared, prepare, prepare_tokenizer, prepare_weights, write_eval_rows};
use super::trainer::Trainer;
use crate::backend_select::{self, Auto};
use crate::data::tokenizer::TextTokenizer;
use crate::model::Llama;
use crate::{KilnError, Result};

/// How to run, beside the settings.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// The TOML file the settings came from (named when the plan is refused).
    pub config_file: Option<PathBuf>,
    /// Plan and estimate only: load nothing, train nothing.
    pub dry_run: bool,
    /// The GPU: an index as `kiln info` lists the adapters, or part of its name.
    pub device: Option<String>,
    /// Continue from a checkpoint: `Some(None)` the newest under `cfg.out`, `Some(Some(p))` `p`.
    pub resume: Option<Option<PathBuf>>,
    /// Replace an earlier run in `cfg.out`.
    pub overwrite: bool,
    /// SIGINT, SIGTERM and SIGHUP finish the current step, save a checkpoint and return
    /// [`Outcome::Interrupted`]; a second signal exits at once.
    pub handle_signals: bool,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// `dry_run`: the plan was reported and nothing trained.
    Planned,
    /// Stopped by `signal` after step `step` of `total`, with its checkpoint saved.
    Interrupted { step: usize, total: usize, checkpoint: PathBuf, signal: i32 },
    /// Trained: what was measured, what was saved (`"PEFT adapter in OUT/adapter"`) and the
    /// output folder (metrics.jsonl, loss.svg).
    Finished { summary: Summary, saved: String, out: PathBuf },
}

/// Runs `cfg` to the end (or to a signal), reporting progress and notes to `on`.
pub fn run(mut cfg: TrainConfig, opts: &RunOptions, on: &mut dyn FnMut(Event<'_>)) -> Result<Outcome> {
    // --out is checked, locked and marked before anything loads (the rules: crate::outdir).
    let inputs = crate::outdir::Inputs::default().with_data_specs(&cfg.data);
    let inputs = [cfg.model.as_deref(), cfg.eval_data.as_deref()].into_iter().flatten().fold(inputs, |i, p| i.with(p));
    let out_dir = crate::outdir::claim_train(&cfg.out, &inputs, opts.resume.is_some(), opts.overwrite)?;
    let backend = backend_select::open(&cfg.backend, opts.device.as_deref(), &cfg.precision, Auto::BestGpu)?;
    let path = crate::model::resolve(cfg.model.as_deref())?;
    // Config and tokenizer only: the plan and the memory check come before any tensor.
    let base = BaseModel::open(&path)?;
    let seq = cfg.max_seq_len.unwrap_or(base.facts.config.max_position_embeddings.min(2048));
    cfg.max_seq_len = Some(seq);
    cfg.validate()?;
    let (data, vocab) = prepare_data(&mut cfg, &base, seq, on)?;
    let tok_out = data.renderer.tokenizer.clone();
    let plan = Plan::new(&cfg, &base.facts, &data, seq, vocab)?;
    on(Event::Note(plan_text(&cfg, &plan, &data, seq, &path.display().to_string()).trim_end()));
    let fits = check_memory(&cfg, &plan, &base.facts, &path, opts.config_file.as_deref());
    if opts.dry_run {
        if let Err(e) = fits {
            on(Event::Note(&format!("note: this run would be refused: {e}")));
        }
        return Ok(Outcome::Planned);
    }
    fits?;
    let model = load_model(&mut cfg, base, vocab, backend, on)?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| KilnError::Msg(format!("creating {}: {e}", cfg.out.display())))?;
    let mut t = Trainer::new(cfg.clone(), model, data)?;
    t.identity.base_model = Some(super::identity::model_identity(&path)?);
    if let Some(r) = &opts.resume {
        let ck = match r {
            Some(p) => p.clone(),
            None => checkpoint::list(&cfg.out).pop().map(|c| c.1).ok_or_else(|| {
                KilnError::Msg(format!("--resume: no checkpoint under {}", checkpoint::dir(&cfg.out).display()))
            })?,
        };
        let step = t.resume(&ck)?;
        for n in &t.resume_notes {
            on(Event::Note(n));
        }
        on(Event::Note(&format!("resumed from {} (step {step} of {})", ck.display(), t.total_steps)));
    }
    // Written once a resume has been accepted: a refused one leaves the run's files as they were.
    crate::formats::write_atomic(&cfg.out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    if let Some(d) = t.data() {
        write_eval_rows(&cfg.out.join("eval.jsonl"), &d.eval_examples)?;
    }
    let which = if opts.handle_signals { Some(handle_signals(&mut t)?) } else { None };
    let summary = t.run(on)?;
    if summary.interrupted {
        // The run saved a checkpoint of the step it stopped after: the newest one.
        let (step, checkpoint) = checkpoint::list(&cfg.out).pop().unwrap_or_default();
        let sig = which.map_or(0, |w| w.load(Ordering::SeqCst) as i32);
        out_dir.interrupted()?;
        return Ok(Outcome::Interrupted { step, total: t.total_steps, checkpoint, signal: sig });
    }
    let saved = save_output(&cfg, &mut t, &path, &tok_out)?;
    crate::formats::write_atomic(
        &cfg.out.join("loss.svg"),
        super::plot::loss_svg_with(&summary.losses, &summary.evals, &summary.eval_rewards).as_bytes(),
    )?;
    out_dir.finish()?;
    Ok(Outcome::Finished { summary, saved, out: cfg.out })
}

/// SIGINT (Ctrl-C), SIGTERM (kill, SLURM) and SIGHUP (a closed terminal): finish the current
/// step, save a checkpoint, stop; a second signal exits at once with 128+n. Returns where the
/// number of the signal received is kept.
fn handle_signals(t: &mut Trainer) -> Result<Arc<AtomicUsize>> {
    let stop = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        // The shutdown first: it sees the flag the first signal set only from the second one on.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, stop.clone())
            .and_then(|_| signal_hook::flag::register_usize(sig, which.clone(), sig as usize))
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()))
            .map_err(|e| KilnError::Msg(format!("installing the signal handlers: {e}")))?;
    }
    t.stop = Some(stop);
    Ok(which)
}

/// The tokenizer readied for the run (special tokens added) and the data prepared with it;
/// returns the data and the vocabulary size the model needs.
fn prepare_data(
    cfg: &mut TrainConfig,
    base: &BaseModel,
    seq: usize,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<(Prepared, usize)> {
    let mut tok = base.tokenizer.clone();
    let (log, vocab) = prepare_tokenizer(cfg, &mut tok, base.facts.config.vocab_size)?;
    for line in log {
        on(Event::Note(&line));
    }
    Ok((prepare(cfg, tok, seq)?, vocab))
}

/// Loads the weights once the plan has been accepted, readies them for the method (QLoRA
/// quantization, a grown vocabulary) and moves them to the backend.
fn load_model(
    cfg: &mut TrainConfig,
    base: BaseModel,
    vocab: usize,
    backend: &'static dyn kiln_core::Backend,
    on: &mut dyn FnMut(Event<'_>),
) -> Result<Llama> {
    let mut model = base.load(cfg.method == Method::Full)?;
    for line in prepare_weights(cfg, &mut model, vocab)? {
        on(Event::Note(&line));
    }
    if backend.name() != "cpu" {
        model
            .to_backend(backend)
            .map_err(|e| KilnError::Msg(format!("moving the model to {}: {e}", backend.name())))?;
    }
    Ok(model)
}

/// Writes the deployable output: the PEFT adapter (with fully trained modules and a grown
/// tokenizer), the bottleneck adapters, or the full weights with config and tokenizer.
/// Returns what was written where.
fn save_output(cfg: &TrainConfig, t: &mut Trainer, base: &Path, tok: &TextTokenizer) -> Result<String> {
    let out = &cfg.out;
    // Fully trained modules beside LoRA (--train-embeddings), saved as PEFT's modules_to_save.
    let extra: Vec<(String, kiln_core::Tensor)> = if t.lora.is_some() {
        t.params().into_iter().filter(|(n, _)| !n.contains(".lora_")).collect()
    } else {
        Vec::new()
    };
    Ok(match &t.lora {
        None if cfg.method == Method::Adapter => {
            let dir = out.join("adapter");
            crate::adapters::bottleneck::save(&t.params(), cfg.adapter_size, &base.display().to_string(), &dir)?;
            format!("bottleneck adapter in {}", dir.display())
        }
        Some(l) => {
            let dir = out.join("adapter");
            l.save_peft(&dir, &base.display().to_string(), cfg.lora_dropout, &extra)?;
            if !cfg.add_special_tokens.is_empty() {
                // The grown tokenizer travels with the adapter (PEFT users resize the base
                // model's embeddings to len(tokenizer) before loading it).
                tok.save_hf(&dir)?;
            }
            format!("PEFT adapter in {}", dir.display())
        }
        None => {
            let dir = out.join("model");
            // Written in transformers' layout (Gemma's norms without the 1 kiln folds in).
            let c = t.model.config.clone();
            let mut weights = t
                .params()
                .into_iter()
                .map(|(n, w)| Ok((n.clone(), crate::model::gemma::to_hf_layout(&c, &n, w)?)))
                .collect::<Result<Vec<_>>>()?;
            if c.arch == crate::model::Arch::Phi3 {
                // Phi-3 leaves kiln with its fused q/k/v and gate/up matrices.
                weights = crate::model::phi3::fuse_named(&c, weights)?;
            }
            crate::formats::write_safetensors(&dir.join("model.safetensors"), &weights)?;
            // A vision-language config does not describe the text model written here.
            let multimodal = c.gemma.as_ref().is_some_and(|g| g.multimodal);
            if !cfg.add_special_tokens.is_empty() || !base.is_dir() || multimodal {
                // A grown vocabulary or a GGUF source: config and tokenizer written afresh.
                let text = serde_json::to_string_pretty(&t.model.config.to_hf_json())
                    .map_err(|e| KilnError::Msg(format!("config.json: {e}")))?;
                crate::formats::write_atomic(&dir.join("config.json"), text.as_bytes())?;
                tok.save_hf(&dir)?;
            } else {
                for f in [
                    "config.json",
                    "generation_config.json",
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "chat_template.jinja",
                    "special_tokens_map.json",
                ] {
                    let src = base.join(f);
                    if src.is_file() {
                        std::fs::copy(&src, dir.join(f))
                            .map_err(|e| KilnError::Msg(format!("copying {}: {e}", src.display())))?;
                    }
                }
            }
            format!("weights in {}", dir.display())
        }
    })
}
