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
//!
//! [`Trainer::step`] is the one training step of kiln: `kiln train` runs it through
//! [`Trainer::run`], `kiln demo --tiny` over its own byte windows ([`Trainer::with_batches`]),
//! and `kiln bench train` times it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_core::{Grads, Tape, Tensor, Var};

use super::AdamW;
use super::checkpoint::{self, Identity, State};
use super::config::{Method, Objective, Optim, TrainConfig};
use super::events::{Evaluation, Event, Stepped, Summary};
use super::metrics::{DeviceLog, EvalLog, MetricsFile, SkipLog, StepLog};
use super::pref::{self, PrefSpec, PrefStats};
use super::prepare::Prepared;
use super::schedule::lr_at;
use crate::adapters::LoraSet;
use crate::data::batch::{Batch, Sequence, to_batch};
use crate::data::dataset::shuffle;
use crate::model::{Inputs, Llama};
use crate::{KilnError, Result};

/// Micro-batches the caller makes itself, instead of the prepared data set's shuffled
/// sequences (the tiny demo's random windows of a byte stream; the bench's random tokens).
pub struct Batches {
    /// The micro-batches of optimizer step `step` (1-based).
    pub next: Box<dyn FnMut(usize) -> Result<Vec<Batch>>>,
    /// The held-out sequences, padded with `pad`.
    pub eval: Vec<Sequence>,
    pub pad: i32,
    /// Steps that make one pass over the data (the `epoch` of the metrics).
    pub steps_per_epoch: f64,
}

/// Where a run's batches come from.
enum Source {
    // Boxed: the prepared set's bookkeeping is large beside a closure, and moved once.
    Prepared(Box<Prepared>),
    Batches(Batches),
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

/// A micro-batch's loss (a one-element tensor, read later with the gradient norm) and its
/// weight in the step's mean.
type LossPart = (Tensor, f64);

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
    source: Source,
    opt: AdamW,
    pub total_steps: usize,
    pub steps_per_epoch: usize,
    /// Steps per pass over the data, for the `epoch` metric (`steps_per_epoch` unless the
    /// caller's batches say otherwise).
    epoch_steps: f64,
    /// When this process took its first step, and the run's token count then.
    clock: Option<(Instant, usize)>,
    /// `OUT/metrics.jsonl` once opened ([`Trainer::open_metrics`]).
    metrics: Option<MetricsFile>,
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
    pub fn new(cfg: TrainConfig, model: Llama, data: Prepared) -> Result<Trainer> {
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
        let data_hash = Some(super::identity::data_hash(&data));
        let epoch_steps = steps_per_epoch as f64;
        Trainer::build(
            cfg,
            model,
            Source::Prepared(Box::new(data)),
            (steps_per_epoch, total_steps, epoch_steps),
            data_hash,
        )
    }

    /// A run over batches the caller makes: `cfg.max_steps` steps, supervised, with the
    /// step, the optimizer and the metrics of [`Trainer::new`].
    pub fn with_batches(cfg: TrainConfig, model: Llama, batches: Batches) -> Result<Trainer> {
        let Some(total_steps) = cfg.max_steps else {
            return Err(KilnError::Msg("a run over the caller's batches needs max_steps".into()));
        };
        if cfg.objective != Objective::Sft || !cfg.eval_metrics.trim().is_empty() {
            return Err(KilnError::Msg(
                "a run over the caller's batches is supervised and evaluates the loss only".into(),
            ));
        }
        let epoch_steps = batches.steps_per_epoch;
        let steps_per_epoch = (epoch_steps.ceil() as usize).max(1);
        Trainer::build(cfg, model, Source::Batches(batches), (steps_per_epoch, total_steps, epoch_steps), None)
    }

    /// Adapters (or trainable weights) and the optimizer, for either source of batches.
    fn build(
        cfg: TrainConfig,
        mut model: Llama,
        source: Source,
        (steps_per_epoch, total_steps, epoch_steps): (usize, usize, f64),
        data_hash: Option<String>,
    ) -> Result<Trainer> {
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
        let identity = Identity { base_model: None, settings: super::identity::settings(&cfg), data_hash };
        let mut t = Trainer {
            cfg,
            model,
            lora,
            source,
            opt,
            total_steps,
            steps_per_epoch,
            epoch_steps,
            clock: None,
            metrics: None,
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

    /// The prepared data set, when the run has one (not over the caller's batches).
    pub fn data(&self) -> Option<&Prepared> {
        match &self.source {
            Source::Prepared(d) => Some(d),
            Source::Batches(_) => None,
        }
    }

    /// The prepared data set, which preference tuning and generation scores need.
    fn prepared(&self) -> Result<&Prepared> {
        self.data().ok_or_else(|| KilnError::Msg("this run's batches come from the caller, not a data set".into()))
    }

    /// The micro-batches of optimizer step `step` (1-based), as training-unit indices.
    fn plan(&self, d: &Prepared, step: usize) -> Vec<Vec<usize>> {
        let n = d.train_len();
        let (epoch, group) = ((step - 1) / self.steps_per_epoch, (step - 1) % self.steps_per_epoch);
        let mut order: Vec<usize> = (0..n).collect();
        shuffle(&mut order, self.cfg.seed.wrapping_add(epoch as u64 * 0x9e37_79b9));
        let per = self.cfg.batch_size * self.cfg.grad_accum;
        let mut idx = order[group * per..((group + 1) * per).min(n)].to_vec();
        if !self.cfg.packing || self.pref.is_some() {
            // Bucketing: within a step's rows, similar lengths share a micro-batch (less
            // padding); the step's rows, and so its gradient, do not change.
            idx.sort_by_key(|&i| d.unit_tokens(i));
        }
        idx.chunks(self.cfg.batch_size).map(<[usize]>::to_vec).collect()
    }

    /// The supervised micro-batches of step `step`.
    fn step_batches(&mut self, step: usize) -> Result<Vec<Batch>> {
        if let Source::Batches(b) = &mut self.source {
            return (b.next)(step);
        }
        let d = self.prepared()?;
        let plan = self.plan(d, step);
        plan.iter().map(|idx| to_batch(&idx.iter().map(|&i| d.train[i].clone()).collect::<Vec<_>>(), d.pad)).collect()
    }

    /// Token-weighted mean loss over the held-out sequences (`None` without any); preference
    /// runs: the mean preference loss over the held-out pairs, with their metrics.
    pub fn evaluate(&self) -> Result<Option<(f64, Option<PrefStats>)>> {
        let (model, lora) = (&self.model, self.lora.as_ref());
        if let Some(spec) = &self.pref {
            let d = self.prepared()?;
            let (pairs, refs) = (&d.eval_pairs, self.eval_refs.as_deref());
            let st = pref::evaluate_pairs(model, lora, pairs, refs, spec, d.pad, self.cfg.batch_size)?;
            return Ok(st.map(|s| (s.loss, Some(s))));
        }
        let (eval, pad) = match &self.source {
            Source::Prepared(d) => (&d.eval, d.pad),
            Source::Batches(b) => (&b.eval, b.pad),
        };
        let l = crate::eval::measure::sequences_loss(model, lora, eval, pad, self.cfg.batch_size, &mut |_| {})?;
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
        let d = self.prepared()?;
        let total = d.pairs.len() + d.eval_pairs.len();
        let (pad, bs) = (d.pad, self.cfg.batch_size);
        let train =
            pref::precompute_refs(&self.model, &d.pairs, pad, bs, &mut |done| on(Event::Reference { done, total }))?;
        let n = train.len();
        let eval = pref::precompute_refs(&self.model, &d.eval_pairs, pad, bs, &mut |done| {
            on(Event::Reference { done: n + done, total })
        })?;
        self.refs = Some(train);
        self.eval_refs = Some(eval);
        Ok(())
    }

    /// Preference step: forward/backward over each micro-batch of pairs, each weighted by its
    /// share of the step's pairs.
    fn pref_grads(&mut self, step: usize, spec: PrefSpec) -> Result<(Grads, f64, usize, PrefStats)> {
        let Source::Prepared(d) = &self.source else { return Err(KilnError::Msg("not a preference run".into())) };
        let micro = self.plan(d, step);
        let scope = pref::Scope {
            pairs: micro.iter().map(Vec::len).sum(),
            chosen_tokens: micro.iter().flatten().map(|&i| d.pairs[i].n_chosen).sum(),
        };
        let (mut grads, mut tokens, mut all, mut loss) = (Grads::default(), 0, PrefStats::default(), 0.0);
        for (mi, m) in micro.iter().enumerate() {
            let b = pref::pair_batch(&m.iter().map(|&i| &d.pairs[i]).collect::<Vec<_>>(), d.pad)?;
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
        // SFT leaves each micro-batch's loss on the device, read with the gradient norm's sum:
        // one host synchronization for the step.
        let (grads, host_loss, parts, tokens, pref) = match self.pref {
            Some(spec) => {
                let (g, l, t, st) = self.pref_grads(step, spec)?;
                (g, l, Vec::new(), t, Some(st))
            }
            None => {
                let batches = self.step_batches(step)?;
                let (g, parts, t) = self.sft_grads(step, &batches)?;
                (g, 0.0, parts, t, None)
            }
        };

        let lr = lr_at(self.cfg.lr_scheduler, self.cfg.learning_rate, step, self.cfg.warmup_steps, self.total_steps);
        self.opt.lr = lr;
        let (gn, values) = {
            let params: Vec<&mut Var> =
                trainable(&self.cfg, &mut self.model, &mut self.lora).into_iter().map(|(_, v)| v).collect();
            let scalars: Vec<&Tensor> = parts.iter().map(|(t, _)| t).collect();
            AdamW::grad_norm_and(&params, &grads, &scalars)?
        };
        let loss = host_loss + values.iter().zip(&parts).map(|(v, (_, w))| v * w).sum::<f64>();
        if !loss.is_finite() {
            return Ok(StepResult::NonFinite(format!("the loss is {loss}")));
        }
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

    /// Supervised step: the micro-batches' gradients weighted by token share, and each one's
    /// loss (a one-element tensor, not read here) with its weight.
    fn sft_grads(&mut self, step: usize, batches: &[Batch]) -> Result<(Grads, Vec<LossPart>, usize)> {
        let n_total: usize = batches.iter().map(|b| b.n_targets).sum();
        let mut grads = Grads::default();
        let (mut parts, mut tokens) = (Vec::new(), 0);
        for (mi, b) in batches.iter().enumerate().filter(|(_, b)| b.n_targets > 0) {
            if let Some(l) = &mut self.lora {
                l.reseed_dropout(self.cfg.seed ^ ((step as u64) << 20) ^ mi as u64);
            }
            let tape = Tape::new();
            let inp = Inputs { ids: &b.ids, pos: &b.pos, seg: Some(&b.seg), shared_prefix: false, base_only: false };
            let ce = self.model.loss(&tape, &inp, &b.targets, self.lora.as_ref(), self.cfg.gradient_checkpointing)?;
            let w = ce.n_valid as f64 / n_total as f64;
            tokens += b.ids.numel();
            let lv = ce.loss.value();
            let seed = lv.backend().upload(&Tensor::from_vec(vec![w as f32], lv.dims().to_vec())?)?;
            parts.push((lv.clone(), w));
            grads.merge(tape.backward_from(vec![(ce.loss.id(), seed)])?)?;
        }
        Ok((grads, parts, tokens))
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

    /// The generation metrics of `eval_metrics` on the held-out rows (greedy), or `None`.
    pub fn generation_scores(&self) -> Result<Option<crate::eval::Scores>> {
        use crate::eval::{Metric, TextOptions, measure};
        if self.cfg.eval_metrics.trim().is_empty() {
            return Ok(None);
        }
        let metrics = Metric::parse_list(&self.cfg.eval_metrics)?;
        let d = self.prepared()?;
        let r = &d.renderer;
        let rows = measure::gen_rows(&d.eval_examples, r.template.as_ref().is_some());
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

    /// Opens `OUT/metrics.jsonl` for the steps after the current one (a resumed run keeps the
    /// records up to its checkpoint); from then on every step and evaluation is written to it.
    /// Returns the records kept.
    pub fn open_metrics(&mut self) -> Result<Vec<serde_json::Value>> {
        let (f, kept) = MetricsFile::open(&self.out.join("metrics.jsonl"), self.step)?;
        self.metrics = Some(f);
        Ok(kept)
    }

    /// Appends a record to `metrics.jsonl` when it is open.
    fn log(&mut self, record: &impl serde::Serialize) -> Result<()> {
        self.metrics.as_mut().map_or(Ok(()), |m| m.write(record))
    }

    /// Takes the next optimizer step: forward and backward over its micro-batches, the
    /// gradient norm, clipping and the optimizer update, then its metrics record. A loss or
    /// gradient that is not finite applies nothing: the step is skipped with
    /// `skip_nonfinite`, else it is an error naming the last good checkpoint.
    pub fn step(&mut self) -> Result<Stepped> {
        let step = self.step + 1;
        if step > self.total_steps {
            return Err(KilnError::Msg(format!("step {step}: the run has {} steps", self.total_steps)));
        }
        let (t0, tokens0) = *self.clock.get_or_insert((Instant::now(), self.tokens));
        let c0 = self.model.backend().counters();
        let result = self.train_step(step)?;
        let device = match (c0, self.model.backend().counters()) {
            (Some(a), Some(b)) => {
                let d = b - a;
                Some(DeviceLog { launches: d.launches, uploads: d.uploads, host_syncs: d.host_syncs })
            }
            _ => None,
        };
        let done = match result {
            StepResult::Applied { loss, grad_norm, tokens, lr, pref } => {
                self.tokens += tokens;
                let el = t0.elapsed().as_secs_f64();
                let log = StepLog {
                    step,
                    total: self.total_steps,
                    epoch: step as f64 / self.epoch_steps,
                    loss,
                    lr,
                    grad_norm,
                    tokens: self.tokens,
                    tokens_per_s: (self.tokens - tokens0) as f64 / el.max(1e-9),
                    elapsed_s: el,
                    pref: pref.as_ref().map(Into::into),
                    device,
                };
                self.log(&log)?;
                Stepped::Applied(log)
            }
            // Skipped: no update; the data position moves on and the step still counts for
            // evaluation, checkpoints and Ctrl-C.
            StepResult::NonFinite(reason) if self.cfg.skip_nonfinite => {
                let log = SkipLog { step, reason };
                self.log(&log)?;
                Stepped::Skipped(log)
            }
            StepResult::NonFinite(what) => {
                let last = checkpoint::list(&self.out).last().map(|c| c.1.display().to_string());
                return Err(KilnError::Msg(format!(
                    "step {step}: {what}; training stopped, nothing of this step applied (--skip-nonfinite skips such steps instead). Last good checkpoint: {}",
                    last.unwrap_or_else(|| "none (set --save-steps)".into())
                )));
            }
        };
        self.step = step;
        Ok(done)
    }

    /// Evaluates after step `step` (0: before training): the held-out loss, preference
    /// metrics and generation scores, written as a metrics record; tracks the best step.
    /// `None` without held-out data.
    pub fn evaluate_logged(&mut self, step: usize) -> Result<Option<Evaluation>> {
        let Some((loss, pref)) = self.evaluate()? else { return Ok(None) };
        if step > 0 && self.best.is_none_or(|b| loss < b.1) {
            self.best = Some((step, loss));
        }
        let scores = self.generation_scores()?;
        let log = EvalLog::new(step, loss, pref.as_ref(), scores.as_ref());
        self.log(&log)?;
        Ok(Some(Evaluation { log, pref, scores }))
    }

    /// [`Trainer::evaluate_logged`], added to the summary and reported to `on`.
    fn eval_event(&mut self, step: usize, summary: &mut Summary, on: &mut dyn FnMut(Event<'_>)) -> Result<()> {
        if let Some(e) = self.evaluate_logged(step)? {
            summary.evals.push((step, e.log.eval_loss));
            if let Some(p) = &e.pref {
                summary.eval_rewards.push((step, p.reward_accuracy));
            }
            on(Event::Eval { step, loss: e.log.eval_loss, scores: e.scores.as_ref(), pref: e.pref.as_ref() });
        }
        Ok(())
    }

    /// Runs the remaining steps, evaluating and saving as configured, logging each step to
    /// `OUT/metrics.jsonl` and to `on`.
    pub fn run(&mut self, on: &mut dyn FnMut(Event<'_>)) -> Result<Summary> {
        let earlier = self.open_metrics()?;
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
        on(Event::Start { total: self.total_steps });
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
        if self.step == 0 {
            self.eval_event(0, &mut summary, on)?;
        }
        let (t0, tokens0) = *self.clock.insert((Instant::now(), self.tokens));
        for step in self.step + 1..=self.total_steps {
            match self.step()? {
                Stepped::Applied(log) => {
                    summary.losses.push((step, log.loss));
                    on(Event::Step(&log));
                }
                Stepped::Skipped(s) => {
                    summary.skipped.push(step);
                    on(Event::Skipped { step, reason: &s.reason });
                }
            }
            let last = step == self.total_steps;
            if (self.cfg.eval_steps > 0 && step.is_multiple_of(self.cfg.eval_steps)) || last {
                self.eval_event(step, &mut summary, on)?;
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
