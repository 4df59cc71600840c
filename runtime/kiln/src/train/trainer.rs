//! The training loop: micro-batches accumulated into optimizer steps, AdamW with a warmup
//! schedule and clipping, periodic evaluation and checkpoints, exact resume.
//!
//! The loss of a step is the mean over every unmasked token of all its micro-batches: each
//! micro-batch's mean loss is weighted by its share of the step's target tokens before
//! backward, so `batch_size 4` and `batch_size 1 × grad_accum 4` give the same gradients (the
//! accumulation bug Unsloth and transformers fixed in 2024 was averaging per-micro-batch means).
//!
//! The data order is a function of (seed, epoch): each epoch shuffles the packed sequences,
//! groups `batch_size × grad_accum` of them per step and splits each group into micro-batches.
//! A checkpoint therefore only needs the step count to resume the data stream.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_core::{Grads, Tape, Tensor, Var};

use super::AdamW;
use super::checkpoint::{self, Identity, State};
use super::config::{Method, Optim, TrainConfig};
use super::pref::{self, PrefSpec, PrefStats};
use super::prepare::Prepared;
use super::schedule::lr_at;
use crate::adapters::LoraSet;
use crate::data::batch::{Batch, to_batch};
use crate::data::dataset::shuffle;
use crate::model::{Inputs, Llama};
use crate::{KilnError, Result};

/// What the loop reports as it goes.
pub enum Event<'a> {
    Step(&'a StepLog),
    /// Held-out loss, and the generation metrics when `eval_metrics` asks for them.
    Eval {
        step: usize,
        loss: f64,
        scores: Option<&'a crate::eval::Scores>,
        /// Preference runs: rewards and reward accuracy on the held-out pairs.
        pref: Option<&'a PrefStats>,
    },
    /// Reference log-probabilities computed so far (`precompute_ref`).
    Reference {
        done: usize,
        total: usize,
    },
    Saved {
        step: usize,
        path: &'a Path,
    },
    /// A step skipped for a non-finite loss or gradient.
    Skipped {
        step: usize,
        reason: &'a str,
    },
}

/// One optimizer step.
#[derive(Clone, Debug)]
pub struct StepLog {
    pub step: usize,
    pub total: usize,
    pub epoch: f64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub elapsed_s: f64,
    /// Preference runs: the step's rewards and reward accuracy.
    pub pref: Option<PrefStats>,
}

/// What a finished run measured.
#[derive(Clone, Debug)]
pub struct Summary {
    pub steps: usize,
    pub secs: f64,
    pub tokens: usize,
    pub losses: Vec<(usize, f64)>,
    pub evals: Vec<(usize, f64)>,
    pub best_eval: Option<(usize, f64)>,
    pub resumed_from: Option<usize>,
    /// Steps skipped for a non-finite loss or gradient (`skip_nonfinite`).
    pub skipped: Vec<usize>,
    /// Stopped early by the stop flag (Ctrl-C), after saving a checkpoint.
    pub interrupted: bool,
    /// Preference runs: held-out reward accuracy by step.
    pub eval_rewards: Vec<(usize, f64)>,
}

/// What one step did.
enum StepResult {
    Applied {
        loss: f64,
        grad_norm: f64,
        tokens: usize,
        lr: f64,
        pref: Option<PrefStats>,
    },
    /// Not applied: what was not finite.
    NonFinite(String),
}

/// The parameters `cfg`'s method trains, with their saved names. A free function over the
/// fields (not a method) so callers can hold the optimizer mutably at the same time.
fn trainable<'a>(cfg: &TrainConfig, model: &'a mut Llama, lora: &'a mut Option<LoraSet>) -> Vec<(String, &'a mut Var)> {
    if cfg.method == Method::Adapter {
        return model.bottleneck_params_mut();
    }
    match lora {
        Some(l) => {
            let names: Vec<String> = l.named_params().into_iter().map(|(n, _)| n).collect();
            let mut v: Vec<(String, &mut Var)> = names.into_iter().zip(l.params_mut()).collect();
            if cfg.train_embeddings {
                // PEFT's modules_to_save: the embedding (and an untied LM head) in full.
                v.push(("model.embed_tokens.weight".into(), &mut model.embed));
                if let Some(h) = &mut model.lm_head {
                    v.push(("lm_head.weight".into(), h));
                }
            }
            v
        }
        None => {
            let names: Vec<String> = model.named_weights().into_iter().map(|(n, _)| n).collect();
            names.into_iter().zip(model.weights_mut()).collect()
        }
    }
}

/// A run in progress.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Llama,
    pub lora: Option<LoraSet>,
    pub data: Prepared,
    opt: AdamW,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    step: usize,
    tokens: usize,
    best: Option<(usize, f64)>,
    out: PathBuf,
    resumed_from: Option<usize>,
    /// When set (Ctrl-C), the run saves a checkpoint after the current step and returns.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Preference tuning: the loss, and the reference log-probabilities of the training and
    /// held-out pairs when precomputed.
    pref: Option<PrefSpec>,
    refs: Option<Vec<(f64, f64)>>,
    eval_refs: Option<Vec<(f64, f64)>>,
    /// What checkpoints record and `resume` compares: settings and data hash from `new`, the
    /// base model's files when the caller sets them.
    pub identity: Identity,
    /// What `resume` found worth saying (an old checkpoint, a re-planned schedule).
    pub resume_notes: Vec<String>,
}

/// `(name, tensor)` of the trainable parameters, or the moments by name.
type Named = Vec<(String, Tensor)>;

impl Trainer {
    /// Sets up adapters (or trainable weights), the optimizer and the step plan.
    pub fn new(cfg: TrainConfig, mut model: Llama, data: Prepared) -> Result<Trainer> {
        if data.train_len() == 0 {
            return Err(KilnError::Msg(format!(
                "data: no training row has a token to learn ({} of {} rows had nothing trainable left within max_seq_len {}; raise --max-seq-len)",
                data.stats.dropped,
                data.stats.rows,
                cfg.max_seq_len.unwrap_or(0)
            )));
        }
        // The step plan first: a setting it refuses never gets to allocate adapters.
        let (steps_per_epoch, total_steps) = super::plan::steps(&cfg, data.train_len())?;
        let mut lora = match cfg.method {
            Method::Full => None,
            Method::Adapter => {
                model.add_bottlenecks(cfg.adapter_size, cfg.seed)?;
                None
            }
            Method::Lora | Method::Qlora => {
                if cfg.train_embeddings {
                    model.embed = Var::leaf(model.embed.value().to_dtype(kiln_core::DType::F32)?.to_cpu()?, true);
                    if let Some(h) = &mut model.lm_head {
                        *h = Var::leaf(h.value().to_dtype(kiln_core::DType::F32)?.to_cpu()?, true);
                    }
                }
                Some(LoraSet::new(&model.config, cfg.lora()?, cfg.seed)?)
            }
        };
        // Adapters are created on the host: they join the model's backend.
        let be = model.backend();
        if be.name() != "cpu" {
            model.to_backend(be)?;
            if let Some(l) = &mut lora {
                l.to_backend(be)?;
            }
        }
        let mut opt = AdamW::new(cfg.learning_rate);
        opt.weight_decay = cfg.weight_decay;
        opt.eight_bit = cfg.optim == Optim::Adamw8bit;
        let out = cfg.out.clone();
        let pref = PrefSpec::of(&cfg);
        let identity = Identity {
            base_model: None,
            settings: super::identity::settings(&cfg),
            data_hash: Some(super::identity::data_hash(&data)),
        };
        let mut t = Trainer {
            cfg,
            model,
            lora,
            data,
            opt,
            total_steps,
            steps_per_epoch,
            step: 0,
            tokens: 0,
            best: None,
            out,
            resumed_from: None,
            stop: None,
            pref,
            refs: None,
            eval_refs: None,
            identity,
            resume_notes: Vec::new(),
        };
        // Norm weights and biases are not decayed (transformers' Trainer does the same).
        for (n, v) in trainable(&t.cfg, &mut t.model, &mut t.lora) {
            if n.contains("norm") || n.ends_with(".bias") {
                t.opt.exclude_from_decay(v);
            }
        }
        Ok(t)
    }

    /// Trainable parameters with their saved names.
    fn params_mut(&mut self) -> Vec<(String, &mut Var)> {
        trainable(&self.cfg, &mut self.model, &mut self.lora)
    }

    /// Trainable parameters' current values by name.
    pub fn params(&mut self) -> Named {
        self.params_mut().into_iter().map(|(n, v)| (n, v.value().clone())).collect()
    }

    /// Number of trainable parameters.
    pub fn num_trainable(&mut self) -> usize {
        self.params_mut().iter().map(|(_, v)| v.value().numel()).sum()
    }

    /// The micro-batches of optimizer step `step` (1-based), as sequence indices.
    fn plan(&self, step: usize) -> Vec<Vec<usize>> {
        let n = self.data.train_len();
        let (epoch, group) = ((step - 1) / self.steps_per_epoch, (step - 1) % self.steps_per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, self.cfg.seed.wrapping_add(epoch as u64 * 0x9e37_79b9));
        let per = self.cfg.batch_size * self.cfg.grad_accum;
        let mut idx = order[group * per..((group + 1) * per).min(n)].to_vec();
        if !self.cfg.packing || self.pref.is_some() {
            // Bucketing: within a step's rows, similar lengths share a micro-batch (less
            // padding); the step's rows, and so its gradient, do not change.
            idx.sort_by_key(|&i| self.data.unit_tokens(i));
        }
        idx.chunks(self.cfg.batch_size).map(<[usize]>::to_vec).collect()
    }

    fn batch(&self, idx: &[usize]) -> Result<Batch> {
        let seqs: Vec<_> = idx.iter().map(|&i| self.data.train[i].clone()).collect();
        to_batch(&seqs, self.data.pad)
    }

    /// Token-weighted mean loss over the held-out sequences (`None` without any); preference
    /// runs: the mean preference loss over the held-out pairs, with their metrics.
    pub fn evaluate(&self) -> Result<Option<(f64, Option<PrefStats>)>> {
        let (model, lora) = (&self.model, self.lora.as_ref());
        if let Some(spec) = &self.pref {
            let (pairs, refs) = (&self.data.eval_pairs, self.eval_refs.as_deref());
            let st = pref::evaluate_pairs(model, lora, pairs, refs, spec, self.data.pad, self.cfg.batch_size)?;
            return Ok(st.map(|s| (s.loss, Some(s))));
        }
        let l = crate::eval::measure::sequences_loss(
            model,
            lora,
            &self.data.eval,
            self.data.pad,
            self.cfg.batch_size,
            &mut |_| {},
        )?;
        Ok(l.map(|l| (l, None)))
    }

    /// Whether the reference log-probabilities are computed once up front: asked for, or full
    /// fine-tuning (whose reference, the initial weights, would otherwise need a second copy).
    pub fn precomputes_reference(&self) -> bool {
        self.pref.is_some_and(|p| p.needs_reference()) && (self.cfg.precompute_ref || self.cfg.method == Method::Full)
    }

    /// Computes the reference log-probabilities of every pair when they are precomputed
    /// (before any step changes the weights; the base does not change, so a resumed run
    /// computes the same values).
    fn reference(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        if !self.precomputes_reference() || self.refs.is_some() {
            return Ok(());
        }
        let total = self.data.pairs.len() + self.data.eval_pairs.len();
        let (pad, bs) = (self.data.pad, self.cfg.batch_size);
        let train = pref::precompute_refs(&self.model, &self.data.pairs, pad, bs, &mut |done| {
            on(Event::Reference { done, total })
        })?;
        let n = train.len();
        let eval = pref::precompute_refs(&self.model, &self.data.eval_pairs, pad, bs, &mut |done| {
            on(Event::Reference { done: n + done, total })
        })?;
        self.refs = Some(train);
        self.eval_refs = Some(eval);
        Ok(())
    }

    /// Preference step: forward/backward over each micro-batch of pairs, each weighted by its
    /// share of the step's pairs.
    fn pref_grads(&mut self, step: usize, micro: &[Vec<usize>]) -> Result<(Grads, f64, usize, PrefStats)> {
        let Some(spec) = self.pref else { return Err(KilnError::Msg("not a preference run".into())) };
        let scope = pref::Scope {
            pairs: micro.iter().map(Vec::len).sum(),
            chosen_tokens: micro.iter().flatten().map(|&i| self.data.pairs[i].n_chosen).sum(),
        };
        let (mut grads, mut tokens, mut all, mut loss) = (Grads::default(), 0, PrefStats::default(), 0.0);
        for (mi, m) in micro.iter().enumerate() {
            let b = pref::pair_batch(&m.iter().map(|&i| &self.data.pairs[i]).collect::<Vec<_>>(), self.data.pad)?;
            let refs = pref::batch_refs(&self.model, &b, self.refs.as_deref(), m, &spec)?;
            if let Some(l) = &mut self.lora {
                l.reseed_dropout(self.cfg.seed ^ ((step as u64) << 20) ^ mi as u64);
            }
            let tape = Tape::new();
            let ckpt = self.cfg.gradient_checkpointing;
            let model = &self.model;
            let (part, st) = pref::pair_forward(&tape, model, self.lora.as_ref(), &b, &refs, &spec, Some(scope), ckpt)?;
            tokens += b.ids.numel();
            all.merge(&st);
            loss += part.value().item()?;
            grads.merge(tape.backward(&part)?)?;
        }
        // The step's loss is the sum of its parts (exact for ORPO's token-mean NLL too).
        all.loss = loss;
        Ok((grads, loss, tokens, all))
    }

    /// One optimizer step: forward/backward over each micro-batch, gradients weighted by
    /// token share, clipped, applied — unless the loss or a gradient is not finite, in which
    /// case nothing is applied and the step says what was found.
    fn train_step(&mut self, step: usize) -> Result<StepResult> {
        let micro = self.plan(step);
        let (grads, loss, tokens, pref) = if self.pref.is_some() {
            let (g, l, t, st) = self.pref_grads(step, &micro)?;
            (g, l, t, Some(st))
        } else {
            let (g, l, t) = self.sft_grads(step, &micro)?;
            (g, l, t, None)
        };
        let lr = lr_at(self.cfg.lr_scheduler, self.cfg.learning_rate, step, self.cfg.warmup_steps, self.total_steps);
        self.opt.lr = lr;
        if !loss.is_finite() {
            return Ok(StepResult::NonFinite(format!("the loss is {loss}")));
        }
        let gn = {
            let params: Vec<&mut Var> =
                trainable(&self.cfg, &mut self.model, &mut self.lora).into_iter().map(|(_, v)| v).collect();
            AdamW::grad_norm(&params, &grads)?
        };
        if !gn.is_finite() {
            // Name the first parameter whose gradient holds a NaN or an infinity.
            let named = trainable(&self.cfg, &mut self.model, &mut self.lora);
            for (name, v) in named {
                if let Some(g) = grads.get(v)
                    && !g.backend().sum_squares(g)?.is_finite()
                {
                    return Ok(StepResult::NonFinite(format!("the gradient of {name} is not finite (loss {loss})")));
                }
            }
            return Ok(StepResult::NonFinite(format!("the gradient norm is {gn}")));
        }
        let clip = (self.cfg.max_grad_norm > 0.0).then_some(self.cfg.max_grad_norm);
        let params = trainable(&self.cfg, &mut self.model, &mut self.lora).into_iter().map(|(_, v)| v).collect();
        self.opt.step_with_norm(params, &grads, clip, gn)?;
        Ok(StepResult::Applied { loss, grad_norm: gn, tokens, lr, pref })
    }

    /// Supervised step: the micro-batches' gradients weighted by token share.
    fn sft_grads(&mut self, step: usize, micro: &[Vec<usize>]) -> Result<(Grads, f64, usize)> {
        let batches = micro.iter().map(|m| self.batch(m)).collect::<Result<Vec<_>>>()?;
        let n_total: usize = batches.iter().map(|b| b.n_targets).sum();
        let mut grads = Grads::default();
        let (mut loss, mut tokens) = (0.0, 0);
        for (mi, b) in batches.iter().enumerate().filter(|(_, b)| b.n_targets > 0) {
            if let Some(l) = &mut self.lora {
                l.reseed_dropout(self.cfg.seed ^ ((step as u64) << 20) ^ mi as u64);
            }
            let tape = Tape::new();
            let inp = Inputs { ids: &b.ids, pos: &b.pos, seg: Some(&b.seg), shared_prefix: false, base_only: false };
            let ce = self.model.loss(&tape, &inp, &b.targets, self.lora.as_ref(), self.cfg.gradient_checkpointing)?;
            let w = ce.n_valid as f64 / n_total as f64;
            loss += ce.loss.value().item()? * w;
            tokens += b.ids.numel();
            let lv = ce.loss.value();
            let seed = lv.backend().upload(&Tensor::from_vec(vec![w as f32], lv.dims().to_vec())?)?;
            grads.merge(tape.backward_from(vec![(ce.loss.id(), seed)])?)?;
        }
        Ok((grads, loss, tokens))
    }

    fn state(&self, lr: f64) -> State {
        // The step just taken was group `(step − 1) % steps_per_epoch` of its epoch.
        let last = self.step.saturating_sub(1);
        let (epoch, group) = (last / self.steps_per_epoch, last % self.steps_per_epoch);
        State {
            step: self.step,
            total_steps: self.total_steps,
            epoch: self.step as f64 / self.steps_per_epoch as f64,
            lr,
            data_epoch: epoch,
            data_group: group,
            seed: self.cfg.seed,
            tokens: self.tokens,
            best_eval_loss: self.best.map(|b| b.1),
            best_step: self.best.map(|b| b.0),
            steps_per_epoch: Some(self.steps_per_epoch),
            base_model: self.identity.base_model.clone(),
            settings: self.identity.settings.clone(),
            data_hash: self.identity.data_hash.clone(),
            checksums: None,
        }
    }

    /// Writes checkpoint `step-N` and prunes old ones.
    pub fn save_checkpoint(&mut self, lr: f64) -> Result<PathBuf> {
        let state = self.state(lr);
        let params = self.params();
        let mut moments = Vec::new();
        for (n, v) in trainable(&self.cfg, &mut self.model, &mut self.lora) {
            if let Some((m, s)) = self.opt.moments(v)? {
                moments.push((n, m, s));
            }
        }
        let p = checkpoint::save(&self.out, &state, &params, &moments)?;
        checkpoint::prune(&self.out, self.cfg.save_total_limit, self.best.map(|b| b.0))?;
        Ok(p)
    }

    /// Restores parameters, optimizer moments and the step from a checkpoint folder, after
    /// checking that it is intact (checksums) and of this run (base model, settings, data).
    /// Only the run's length may differ: the schedule is then re-planned, with a note.
    pub fn resume(&mut self, path: &Path) -> Result<usize> {
        let ck = checkpoint::load(path)?;
        let refuse = |what: String| Err(KilnError::Msg(format!("{}: cannot resume: {what}", path.display())));
        self.resume_notes = checkpoint::compare(path, &ck.state, &self.identity)?;
        if ck.state.step > self.total_steps {
            return refuse(format!(
                "the checkpoint is at step {}, past this run's {} steps (raise --max-steps or --epochs)",
                ck.state.step, self.total_steps
            ));
        }
        if let Some(spe) = ck.state.steps_per_epoch
            && spe != self.steps_per_epoch
        {
            return refuse(format!("{spe} steps per epoch in the checkpoint, {} now", self.steps_per_epoch));
        }
        if ck.state.total_steps != self.total_steps {
            self.resume_notes.push(format!(
                "note: the checkpoint was made for {} steps; this run has {}: the learning-rate schedule is re-planned for {} steps from step {}",
                ck.state.total_steps, self.total_steps, self.total_steps, ck.state.step
            ));
        }
        let names: Vec<String> = self.params_mut().into_iter().map(|(n, _)| n).collect();
        if let Some(n) = ck.param_names.iter().find(|n| !names.contains(n)) {
            return refuse(format!("params.safetensors holds {n}, which this run does not train"));
        }
        // Every optimizer tensor must be a moment of a trained parameter, in pairs: a renamed
        // or missing one would otherwise silently reset that parameter's moments.
        let param_of =
            |n: &str| n.strip_prefix("exp_avg.").or_else(|| n.strip_prefix("exp_avg_sq.")).map(str::to_string);
        if let Some(n) = ck.optimizer_names.iter().find(|n| param_of(n).is_none_or(|p| !names.contains(&p))) {
            return refuse(format!("optimizer.safetensors holds {n}, not a moment of a trained parameter"));
        }
        for n in &ck.optimizer_names {
            let p = param_of(n).unwrap_or_default();
            let pair = if n.starts_with("exp_avg.") { format!("exp_avg_sq.{p}") } else { format!("exp_avg.{p}") };
            if !ck.optimizer_names.contains(&pair) {
                return refuse(format!("optimizer.safetensors holds {n} but not {pair}"));
            }
        }
        if !ck.optimizer_names.is_empty()
            && let Some(n) = names.iter().find(|n| !ck.optimizer_names.contains(&format!("exp_avg.{n}")))
        {
            return refuse(format!("optimizer.safetensors has no moments for {n} (exp_avg.{n})"));
        }
        let steps = ck.state.step as u64;
        for (name, v) in trainable(&self.cfg, &mut self.model, &mut self.lora) {
            let t = ck.params.get_shaped(&name, v.value().dims())?;
            v.set_value(t.to_dtype(kiln_core::DType::F32)?);
            let m = format!("exp_avg.{name}");
            if ck.optimizer.contains(&m) {
                let mm = ck.optimizer.get_shaped(&m, v.value().dims())?.to_dtype(kiln_core::DType::F32)?;
                let ss = ck.optimizer.get_shaped(&format!("exp_avg_sq.{name}"), v.value().dims())?;
                self.opt.restore(v, mm, ss.to_dtype(kiln_core::DType::F32)?, steps)?;
            }
        }
        self.opt.set_steps(steps);
        self.step = ck.state.step;
        self.tokens = ck.state.tokens;
        self.best = ck.state.best_step.zip(ck.state.best_eval_loss);
        self.resumed_from = Some(self.step);
        Ok(self.step)
    }

    /// Evaluates, records the result and tracks the best step.
    fn eval_record(&mut self, step: usize, summary: &mut Summary) -> Result<Option<(f64, Option<PrefStats>)>> {
        let Some((l, st)) = self.evaluate()? else { return Ok(None) };
        summary.evals.push((step, l));
        if let Some(s) = st {
            summary.eval_rewards.push((step, s.reward_accuracy));
        }
        if step > 0 && self.best.is_none_or(|b| l < b.1) {
            self.best = Some((step, l));
        }
        Ok(Some((l, st)))
    }

    /// The generation metrics of `eval_metrics` on the held-out rows (greedy), or `None`.
    pub fn generation_scores(&self) -> Result<Option<crate::eval::Scores>> {
        use crate::eval::{Metric, TextOptions, measure};
        if self.cfg.eval_metrics.trim().is_empty() {
            return Ok(None);
        }
        let metrics = Metric::parse_list(&self.cfg.eval_metrics)?;
        let r = &self.data.renderer;
        let rows = measure::gen_rows(&self.data.eval_examples, r.template.as_ref().is_some());
        if rows.is_empty() {
            return Ok(None);
        }
        let opts = crate::infer::GenOptions { max_new_tokens: self.cfg.eval_max_new_tokens, ..Default::default() };
        let preds = measure::predict(
            &self.model,
            self.lora.as_ref(),
            &r.tokenizer,
            r.template.as_ref(),
            &rows,
            &opts,
            &[],
            &mut |_| {},
        )?;
        Ok(Some(measure::score(&preds, &metrics, TextOptions::default())))
    }

    /// The `metrics.jsonl` line of an evaluation.
    fn eval_line(
        step: usize,
        loss: f64,
        scores: Option<&crate::eval::Scores>,
        pref: Option<&PrefStats>,
    ) -> serde_json::Value {
        // A preference run's perplexity is that of the chosen answers.
        let ppl = pref.map_or(loss, PrefStats::chosen_loss).exp();
        let mut v = serde_json::json!({"kind": "eval", "step": step, "eval_loss": loss, "eval_ppl": ppl});
        if let (Some(p), Some(o)) = (pref, v.as_object_mut()) {
            o.extend(p.json_fields());
        }
        if let (Some(s), Some(o)) = (scores, v.as_object_mut())
            && let serde_json::Value::Object(m) = s.metrics_json()
        {
            o.extend(m);
        }
        v
    }

    /// Runs the remaining steps, evaluating and saving as configured, logging each step to
    /// `OUT/metrics.jsonl` and to `on`.
    pub fn run(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
        let metrics_path = self.out.join("metrics.jsonl");
        let (mut metrics, earlier) = open_metrics(&metrics_path, self.step)?;
        let mut line = |v: serde_json::Value| -> Result<()> {
            writeln!(metrics, "{v}").map_err(|e| KilnError::io(&metrics_path, e))
        };
        let mut summary = Summary {
            steps: self.total_steps,
            secs: 0.0,
            tokens: 0,
            losses: vec![],
            evals: vec![],
            best_eval: None,
            resumed_from: self.resumed_from,
            skipped: Vec::new(),
            interrupted: false,
            eval_rewards: Vec::new(),
        };
        self.reference(on)?;
        // A resumed run's curve and summary include the steps before the checkpoint.
        for v in &earlier {
            let step = v["step"].as_u64().unwrap_or(0) as usize;
            match (v["kind"].as_str(), v["loss"].as_f64(), v["eval_loss"].as_f64()) {
                (Some("train"), Some(l), _) => summary.losses.push((step, l)),
                (Some("eval"), _, Some(l)) => {
                    summary.evals.push((step, l));
                    if let Some(a) = v["reward_accuracy"].as_f64() {
                        summary.eval_rewards.push((step, a));
                    }
                }
                _ => {}
            }
        }
        if self.step == 0
            && let Some((l, st)) = self.eval_record(0, &mut summary)?
        {
            let scores = self.generation_scores()?;
            on(Event::Eval { step: 0, loss: l, scores: scores.as_ref(), pref: st.as_ref() });
            line(Self::eval_line(0, l, scores.as_ref(), st.as_ref()))?;
        }
        let t0 = Instant::now();
        let tokens0 = self.tokens;
        for step in self.step + 1..=self.total_steps {
            match self.train_step(step)? {
                StepResult::Applied { loss, grad_norm, tokens, lr, pref } => {
                    self.tokens += tokens;
                    let el = t0.elapsed().as_secs_f64();
                    let log = StepLog {
                        step,
                        total: self.total_steps,
                        epoch: step as f64 / self.steps_per_epoch as f64,
                        loss,
                        lr,
                        grad_norm,
                        tokens: self.tokens,
                        tokens_per_s: (self.tokens - tokens0) as f64 / el.max(1e-9),
                        elapsed_s: el,
                        pref,
                    };
                    let mut v = serde_json::json!({"kind": "train", "step": step, "epoch": log.epoch, "loss": loss,
                        "lr": lr, "grad_norm": grad_norm, "tokens": log.tokens, "tokens_per_s": log.tokens_per_s,
                        "elapsed_s": el});
                    if let (Some(p), Some(o)) = (&pref, v.as_object_mut()) {
                        o.extend(p.json_fields());
                    }
                    line(v)?;
                    summary.losses.push((step, loss));
                    on(Event::Step(&log));
                }
                // Skipped: no update; the data position moves on and the step still counts for
                // evaluation, checkpoints and Ctrl-C below.
                StepResult::NonFinite(what) if self.cfg.skip_nonfinite => {
                    summary.skipped.push(step);
                    line(serde_json::json!({"kind": "skip", "step": step, "reason": what}))?;
                    on(Event::Skipped { step, reason: &what });
                }
                StepResult::NonFinite(what) => {
                    let last = checkpoint::list(&self.out).last().map(|c| c.1.display().to_string());
                    return Err(KilnError::Msg(format!(
                        "step {step}: {what}; training stopped, nothing of this step applied (--skip-nonfinite skips such steps instead). Last good checkpoint: {}",
                        last.unwrap_or_else(|| "none (set --save-steps)".into())
                    )));
                }
            }
            self.step = step;
            let last = step == self.total_steps;
            if ((self.cfg.eval_steps > 0 && step.is_multiple_of(self.cfg.eval_steps)) || last)
                && let Some((l, st)) = self.eval_record(step, &mut summary)?
            {
                let scores = self.generation_scores()?;
                on(Event::Eval { step, loss: l, scores: scores.as_ref(), pref: st.as_ref() });
                line(Self::eval_line(step, l, scores.as_ref(), st.as_ref()))?;
            }
            // Every step of this run skipped: nothing was trained, and saying so is the result
            // (no final checkpoint, and no adapter or model written by the caller that would
            // pass for one).
            let ran = self.total_steps.saturating_sub(self.resumed_from.unwrap_or(0));
            if last && summary.skipped.len() >= ran {
                return Err(KilnError::Msg(format!(
                    "every one of the {ran} steps was skipped for a non-finite loss or gradient: nothing was trained, so no adapter or model is written to {} (check the data and the base model's weights, lower --learning-rate, or run without --skip-nonfinite to see the first failure)",
                    self.out.display()
                )));
            }
            let interrupted = self.stop.as_ref().is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst));
            if (self.cfg.save_steps > 0 && step.is_multiple_of(self.cfg.save_steps)) || last || interrupted {
                let p = self.save_checkpoint(self.opt.lr)?;
                on(Event::Saved { step, path: &p });
            }
            if interrupted && !last {
                summary.interrupted = true;
                break;
            }
        }
        summary.secs = t0.elapsed().as_secs_f64();
        summary.tokens = self.tokens - tokens0;
        summary.best_eval = self.best;
        Ok(summary)
    }
}

/// Opens `metrics.jsonl` for a run starting after `step`: a fresh run truncates it; a resumed
/// run keeps the records up to its checkpoint and drops those of the abandoned steps after it.
fn open_metrics(path: &Path, step: usize) -> Result<(std::fs::File, Vec<serde_json::Value>)> {
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
    let f = std::fs::OpenOptions::new().append(true).open(path).map_err(|e| KilnError::io(path, e))?;
    Ok((f, kept))
}
