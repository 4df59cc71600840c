//! Preference tuning: DPO (sigmoid loss with optional label smoothing, or IPO) and ORPO.
//!
//! **Layout.** A pair's chosen and rejected conversations are tokenized whole (prompt + answer,
//! through the chat template) and share their longest common token prefix. One batch row holds
//! the prefix once, then the chosen branch, then the rejected branch; attention runs with
//! `shared_prefix` segments (prefix `0`, chosen `1`, rejected `2`), so each branch sees the
//! prefix and itself, never the other branch, and positions restart at the branch point. The
//! last common token is repeated at the head of each branch, because it predicts each branch's
//! first differing token. The prompt's forward pass therefore runs once for both answers, where
//! TRL's concatenated batch runs it twice.
//!
//! **Log-probabilities.** The model gives the negative log-likelihood of every target position
//! (`Llama::token_nll`); a position counts for the chosen and/or the rejected answer (answer
//! tokens inside the shared prefix count for both). A sequence's log-probability is minus the
//! sum over its positions, as TRL's (`logps = per_token_logps.sum`).
//!
//! **Losses**, with `δ = (π_c − ref_c) − (π_r − ref_r)`:
//! * DPO sigmoid: `−(1−ε)·logσ(βδ) − ε·logσ(−βδ)` (ε = label smoothing; conservative DPO);
//! * IPO: `(δ_c/n_c − δ_r/n_r − 1/(2β))²` on per-token averages, as TRL;
//! * ORPO: `NLL(chosen) − β·logσ(log_odds)` on average log-probs `a`, with
//!   `log_odds = (a_c − a_r) − (log(1−e^{a_c}) − log(1−e^{a_r}))`; no reference model.
//!
//! The loss is a function of the pairs' log-probabilities only, so its gradient with respect to
//! them is written out here (in f64) and spread back onto the positions.

use kiln_core::{Tape, Tensor, Var};

use super::config::{Objective, PrefLoss, TrainConfig};
use crate::adapters::LoraSet;
use crate::data::Example;
use crate::data::example::{Message, Role};
use crate::data::render::{Renderer, Tokenized};
use crate::model::{Inputs, Llama};
use crate::{KilnError, Result};

/// Position counts for the chosen answer.
const CHOSEN: u8 = 1;
/// Position counts for the rejected answer.
const REJECTED: u8 = 2;

/// One preference pair, tokenized and laid out to share its prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairSeq {
    pub ids: Vec<i32>,
    pub pos: Vec<i32>,
    /// 0 shared prefix, 1 chosen branch, 2 rejected branch.
    pub seg: Vec<i32>,
    /// The token each position predicts, -100 where it counts for neither answer.
    pub targets: Vec<i32>,
    /// [`CHOSEN`] | [`REJECTED`] per position.
    pub flags: Vec<u8>,
    /// Answer tokens of each side.
    pub n_chosen: usize,
    pub n_rejected: usize,
    /// Tokens of the two sequences laid out separately (what a concatenated batch would run).
    pub unshared_len: usize,
}

impl PairSeq {
    /// Tokens in the row.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// One side (prompt + answer) tokenized, with the answer's tokens marked.
fn side(r: &Renderer, prompt: &[Message], answer: &[Message]) -> Result<Tokenized> {
    if r.template.is_none() {
        let (Some(p), Some(a)) = (prompt.first(), answer.first()) else {
            return Err(KilnError::Msg("preference row with an empty side".into()));
        };
        if prompt.len() != 1 || p.role != Role::User || answer.len() != 1 {
            return Err(KilnError::Msg(
                "multi-turn preference rows need a chat template: pass --template chatml|llama3|mistral|alpaca".into(),
            ));
        }
        let e = Example::PromptCompletion { prompt: p.content.clone(), completion: a.content.clone() };
        return r.tokenize(&e);
    }
    let turns: Vec<Message> = prompt.iter().chain(answer).cloned().collect();
    let (text, spans) = r.render_chat(&turns)?;
    // Only the answer's assistant turns count, not assistant turns inside the prompt.
    let earlier = prompt.iter().filter(|m| m.role == Role::Assistant).count();
    r.masked(&text, &spans[earlier.min(spans.len())..], &[], &[])
}

/// What laying out pairs did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PairStats {
    pub pairs: usize,
    pub truncated: usize,
    /// Pairs with no answer token left on a side within `max_len`.
    pub dropped: usize,
    /// Tokens of the shared rows, and of the same pairs as two separate sequences.
    pub tokens: usize,
    pub unshared_tokens: usize,
}

/// Tokenizes a preference row and lays it out in at most `max_len` tokens; `None` when a side
/// has no answer token left (counted as dropped).
pub fn tokenize_pair(r: &Renderer, e: &Example, max_len: usize, st: &mut PairStats) -> Result<Option<PairSeq>> {
    let Example::Preference { prompt, chosen, rejected } = e else {
        return Err(KilnError::Msg(
            "preference tuning needs {\"prompt\", \"chosen\", \"rejected\"} rows; this row is not one".into(),
        ));
    };
    Ok(lay_out(side(r, prompt, chosen)?, side(r, prompt, rejected)?, max_len, st))
}

/// Lays out a pair given as whole token sequences (prompt + answer) with the answer tokens
/// marked, in at most `max_len` tokens; `None` when a side has no answer token left.
pub fn lay_out(mut c: Tokenized, mut rj: Tokenized, max_len: usize, st: &mut PairStats) -> Option<PairSeq> {
    st.pairs += 1;
    let common = c.ids.iter().zip(&rj.ids).take_while(|(a, b)| a == b).count();
    let k = common.saturating_sub(1);
    // Trim the longer answer's tail until the row fits.
    let mut cut = false;
    while c.ids.len() + rj.ids.len() - k > max_len {
        let longer = if c.ids.len() >= rj.ids.len() { &mut c } else { &mut rj };
        if longer.ids.len() <= k + 1 {
            break;
        }
        longer.ids.pop();
        longer.mask.pop();
        cut = true;
    }
    st.truncated += usize::from(cut);
    let n_c = c.mask.iter().skip(1).filter(|&&m| m).count();
    let n_r = rj.mask.iter().skip(1).filter(|&&m| m).count();
    if c.ids.len() + rj.ids.len() - k > max_len || n_c == 0 || n_r == 0 {
        st.dropped += 1;
        return None;
    }
    let mut p =
        PairSeq { n_chosen: n_c, n_rejected: n_r, unshared_len: c.ids.len() + rj.ids.len(), ..Default::default() };
    // Shared prefix: position t predicts token t+1 (< common, so the same on both sides).
    for t in 0..k {
        let f = if c.mask[t + 1] { CHOSEN } else { 0 } | if rj.mask[t + 1] { REJECTED } else { 0 };
        p.push(c.ids[t], t, 0, if f != 0 { c.ids[t + 1] } else { -100 }, f);
    }
    for (s, flag, seq) in [(1, CHOSEN, &c), (2, REJECTED, &rj)] {
        for t in k..seq.ids.len() {
            let counts = t + 1 < seq.ids.len() && seq.mask[t + 1];
            p.push(seq.ids[t], t, s, if counts { seq.ids[t + 1] } else { -100 }, if counts { flag } else { 0 });
        }
    }
    st.tokens += p.len();
    st.unshared_tokens += p.unshared_len;
    Some(p)
}

impl PairSeq {
    fn push(&mut self, id: i32, pos: usize, seg: i32, target: i32, flag: u8) {
        self.ids.push(id);
        self.pos.push(pos as i32);
        self.seg.push(seg);
        self.targets.push(target);
        self.flags.push(flag);
    }
}

/// Pairs padded into one batch, one pair per row.
pub struct PairBatch {
    pub ids: Tensor,
    pub pos: Tensor,
    pub seg: Tensor,
    pub targets: Tensor,
    /// `[B·T]` flags.
    pub flags: Vec<u8>,
    pub rows: usize,
    pub width: usize,
    pub n_chosen: Vec<usize>,
    pub n_rejected: Vec<usize>,
}

/// Pads pairs into a batch (padding: segment -1, no target).
pub fn pair_batch(pairs: &[&PairSeq], pad: i32) -> Result<PairBatch> {
    let (b, t) = (pairs.len(), pairs.iter().map(|p| p.len()).max().unwrap_or(1).max(1));
    let (mut ids, mut pos, mut seg, mut tg, mut flags) =
        (vec![pad; b * t], vec![0; b * t], vec![-1; b * t], vec![-100; b * t], vec![0u8; b * t]);
    for (r, p) in pairs.iter().enumerate() {
        let o = r * t;
        let n = p.len();
        ids[o..o + n].copy_from_slice(&p.ids);
        pos[o..o + n].copy_from_slice(&p.pos);
        seg[o..o + n].copy_from_slice(&p.seg);
        tg[o..o + n].copy_from_slice(&p.targets);
        flags[o..o + n].copy_from_slice(&p.flags);
    }
    Ok(PairBatch {
        ids: Tensor::from_vec(ids, [b, t])?,
        pos: Tensor::from_vec(pos, [b, t])?,
        seg: Tensor::from_vec(seg, [b, t])?,
        targets: Tensor::from_vec(tg, [b, t])?,
        flags,
        rows: b,
        width: t,
        n_chosen: pairs.iter().map(|p| p.n_chosen).collect(),
        n_rejected: pairs.iter().map(|p| p.n_rejected).collect(),
    })
}

impl PairBatch {
    fn inputs(&self, base_only: bool) -> Inputs<'_> {
        Inputs { ids: &self.ids, pos: &self.pos, seg: Some(&self.seg), shared_prefix: true, base_only }
    }

    /// `(chosen, rejected)` log-probabilities per pair from per-position NLL.
    pub fn logps(&self, nll: &[f64]) -> Vec<(f64, f64)> {
        (0..self.rows)
            .map(|r| {
                let (mut c, mut rj) = (0.0, 0.0);
                let span = r * self.width..(r + 1) * self.width;
                for (&f, &x) in self.flags[span.clone()].iter().zip(&nll[span]) {
                    if f & CHOSEN != 0 {
                        c -= x;
                    }
                    if f & REJECTED != 0 {
                        rj -= x;
                    }
                }
                (c, rj)
            })
            .collect()
    }
}

/// The settings of a preference loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefSpec {
    pub objective: Objective,
    pub loss: PrefLoss,
    pub beta: f64,
    pub label_smoothing: f64,
}

impl PrefSpec {
    /// From the configuration (`None` for supervised training).
    pub fn of(cfg: &TrainConfig) -> Option<PrefSpec> {
        (cfg.objective != Objective::Sft).then_some(PrefSpec {
            objective: cfg.objective,
            loss: cfg.dpo_loss,
            beta: cfg.beta,
            label_smoothing: cfg.label_smoothing,
        })
    }
    /// Whether the loss compares against a reference model.
    pub fn needs_reference(&self) -> bool {
        self.objective == Objective::Dpo
    }
}

/// Preference metrics over some pairs (means), mergeable across micro-batches.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PrefStats {
    pub pairs: usize,
    pub loss: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub reward_accuracy: f64,
    /// Fraction of pairs whose chosen answer the model itself finds more likely than the
    /// rejected one (summed log-probs, no reference): unlike reward accuracy, meaningful
    /// before training too.
    pub policy_accuracy: f64,
    /// Σ NLL and count of the chosen answers' tokens (ORPO's SFT term; chosen perplexity).
    pub chosen_nll: f64,
    pub chosen_tokens: usize,
}

impl PrefStats {
    /// Mean reward margin.
    pub fn margin(&self) -> f64 {
        self.rewards_chosen - self.rewards_rejected
    }
    /// Token-mean NLL of the chosen answers.
    pub fn chosen_loss(&self) -> f64 {
        self.chosen_nll / self.chosen_tokens.max(1) as f64
    }
    /// The preference keys of a metrics record ([`super::metrics::PrefLog`]) as a JSON map,
    /// for reports that add their own keys beside them (`kiln eval`).
    pub fn json_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(super::metrics::PrefLog::from(self)) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        }
    }
    /// Pools two sets of pairs.
    pub fn merge(&mut self, o: &PrefStats) {
        let n = (self.pairs + o.pairs).max(1) as f64;
        let mix = |a: f64, b: f64| (a * self.pairs as f64 + b * o.pairs as f64) / n;
        self.loss = mix(self.loss, o.loss);
        self.rewards_chosen = mix(self.rewards_chosen, o.rewards_chosen);
        self.rewards_rejected = mix(self.rewards_rejected, o.rewards_rejected);
        self.reward_accuracy = mix(self.reward_accuracy, o.reward_accuracy);
        self.policy_accuracy = mix(self.policy_accuracy, o.policy_accuracy);
        self.pairs += o.pairs;
        self.chosen_nll += o.chosen_nll;
        self.chosen_tokens += o.chosen_tokens;
    }
}

fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 { -(-x).exp().ln_1p() } else { x - x.exp().ln_1p() }
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 { 1.0 / (1.0 + (-x).exp()) } else { x.exp() / (1.0 + x.exp()) }
}

/// `log(1 − eˣ)` for `x < 0`, stable on both sides of −ln 2 (as TRL's `log1mexp`).
fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 { (-x.exp()).ln_1p() } else { (-x.exp_m1()).ln() }
}

/// What a loss is averaged over: a micro-batch is a part of its optimizer step, whose loss is
/// the mean over all of the step's pairs (and, for ORPO's NLL term, over all of its chosen
/// tokens), so `batch 4` and `batch 2 × accumulation 2` give the same gradient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    pub pairs: usize,
    pub chosen_tokens: usize,
}

/// The loss over `pol` pairs and its gradient with respect to each `(chosen, rejected)`
/// log-probability. `refs` are the reference log-probabilities (DPO), `n` the answer token
/// counts. Returns the metrics (their `loss` the mean over these pairs), the gradient of this
/// part of the `scope`'s loss (`None`: these pairs alone), and that part's value.
pub fn pair_loss(
    spec: &PrefSpec,
    pol: &[(f64, f64)],
    refs: &[(f64, f64)],
    n: &[(usize, usize)],
    scope: Option<Scope>,
) -> (PrefStats, Vec<(f64, f64)>, f64) {
    let p = pol.len().max(1) as f64;
    let b = spec.beta;
    let mut st = PrefStats { pairs: pol.len(), ..Default::default() };
    let mut grad = Vec::with_capacity(pol.len());
    let chosen_tokens: usize = n.iter().map(|x| x.0).sum();
    let scope = scope.unwrap_or(Scope { pairs: pol.len(), chosen_tokens });
    let (sp, st_tok) = (scope.pairs.max(1) as f64, scope.chosen_tokens.max(1) as f64);
    let mut part = 0.0;
    for (i, &(pc, pr)) in pol.iter().enumerate() {
        let (nc, nr) = (n[i].0.max(1) as f64, n[i].1.max(1) as f64);
        let (loss, gc, gr, rc, rr) = match spec.objective {
            Objective::Dpo | Objective::Sft => {
                let (rc, rr) = refs.get(i).copied().unwrap_or((0.0, 0.0));
                let (lc, lr) = (pc - rc, pr - rr);
                match spec.loss {
                    PrefLoss::Sigmoid => {
                        let (z, e) = (b * (lc - lr), spec.label_smoothing);
                        let loss = -(1.0 - e) * log_sigmoid(z) - e * log_sigmoid(-z);
                        let dz = -(1.0 - e) * sigmoid(-z) + e * sigmoid(z);
                        (loss, b * dz, -b * dz, b * lc, b * lr)
                    }
                    PrefLoss::Ipo => {
                        let d = lc / nc - lr / nr - 1.0 / (2.0 * b);
                        (d * d, 2.0 * d / nc, -2.0 * d / nr, b * lc, b * lr)
                    }
                }
            }
            Objective::Orpo => {
                // Average log-probs are < 0 for any real model; clamp away from 0, where the
                // odds are infinite.
                let (ac, ar) = ((pc / nc).min(-1e-9), (pr / nr).min(-1e-9));
                let lo = (ac - ar) - (log1mexp(ac) - log1mexp(ar));
                let s = sigmoid(-lo);
                // d log_odds / d a_c = 1/(1 − e^{a_c}); d / d a_r = −1/(1 − e^{a_r}).
                let (dc, dr) = (1.0 / -ac.exp_m1(), -1.0 / -ar.exp_m1());
                // The SFT term is the token mean over the scope's chosen answers.
                let nll_g = -sp / st_tok;
                (-b * log_sigmoid(lo), -b * s * dc / nc + nll_g, -b * s * dr / nr, b * ac, b * ar)
            }
        };
        st.loss += loss / p;
        part += loss / sp;
        st.rewards_chosen += rc / p;
        st.rewards_rejected += rr / p;
        st.reward_accuracy += f64::from(u8::from(rc > rr)) / p;
        st.policy_accuracy += f64::from(u8::from(pc > pr)) / p;
        st.chosen_nll -= pc;
        grad.push((gc / sp, gr / sp));
    }
    st.chosen_tokens = chosen_tokens;
    if spec.objective == Objective::Orpo {
        st.loss += st.chosen_loss();
        part += st.chosen_nll / st_tok;
    }
    (st, grad, part)
}

/// The reference log-probabilities of a batch: the same weights with every adapter off.
pub fn reference_logps(model: &Llama, b: &PairBatch) -> Result<Vec<(f64, f64)>> {
    let nll = model.token_nll(&Tape::no_grad(), &b.inputs(true), &b.targets, None, false)?;
    Ok(b.logps(&nll.value().to_vec_f64()?))
}

/// The preference loss of one batch as a tape variable (its part of `scope`'s loss), with its
/// metrics. `refs` (DPO) are the batch's reference log-probabilities.
#[allow(clippy::too_many_arguments)]
pub fn pair_forward(
    tape: &Tape,
    model: &Llama,
    lora: Option<&LoraSet>,
    b: &PairBatch,
    refs: &[(f64, f64)],
    spec: &PrefSpec,
    scope: Option<Scope>,
    checkpoint: bool,
) -> Result<(Var, PrefStats)> {
    let nll = model.token_nll(tape, &b.inputs(false), &b.targets, lora, checkpoint)?;
    let nv = nll.value().to_vec_f64()?;
    let pol = b.logps(&nv);
    let counts: Vec<(usize, usize)> = b.n_chosen.iter().copied().zip(b.n_rejected.iter().copied()).collect();
    let (st, grad, part) = pair_loss(spec, &pol, refs, &counts, scope);
    // d loss / d nll[i] = −(g_c·[chosen] + g_r·[rejected]) for the row's pair.
    let per_pos: Vec<f64> = (0..b.rows * b.width)
        .map(|i| {
            let (gc, gr) = grad[i / b.width];
            let f = b.flags[i];
            -(if f & CHOSEN != 0 { gc } else { 0.0 } + if f & REJECTED != 0 { gr } else { 0.0 })
        })
        .collect();
    let be = nll.value().backend();
    let loss = be.upload(&Tensor::from_vec(vec![part as f32], [1])?)?;
    let (id, dims) = (nll.id(), nll.value().dims().to_vec());
    let var = tape.record(&[&nll], loss, move |g| {
        let seed = g.to_vec_f64()?.first().copied().unwrap_or(0.0);
        let d: Vec<f32> = per_pos.iter().map(|&x| (x * seed) as f32).collect();
        Ok(vec![(id, g.backend().upload(&Tensor::from_vec(d, dims)?)?)])
    });
    Ok((var, st))
}

/// Preference metrics (and loss) over `pairs` without gradients, `batch_size` pairs at a time;
/// `refs` by pair index (DPO), or computed on the way.
pub fn evaluate_pairs(
    model: &Llama,
    lora: Option<&LoraSet>,
    pairs: &[PairSeq],
    refs: Option<&[(f64, f64)]>,
    spec: &PrefSpec,
    pad: i32,
    batch_size: usize,
) -> Result<Option<PrefStats>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut all = PrefStats::default();
    let idx: Vec<usize> = (0..pairs.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let b = pair_batch(&chunk.iter().map(|&i| &pairs[i]).collect::<Vec<_>>(), pad)?;
        let r = batch_refs(model, &b, refs, chunk, spec)?;
        let (_, st) = pair_forward(&Tape::no_grad(), model, lora, &b, &r, spec, None, false)?;
        all.merge(&st);
    }
    Ok(Some(all))
}

/// The reference log-probabilities of batch `b` (pairs `idx`): looked up when precomputed,
/// computed now otherwise; empty when the loss has no reference.
pub fn batch_refs(
    model: &Llama,
    b: &PairBatch,
    pre: Option<&[(f64, f64)]>,
    idx: &[usize],
    spec: &PrefSpec,
) -> Result<Vec<(f64, f64)>> {
    if !spec.needs_reference() {
        return Ok(Vec::new());
    }
    match pre {
        Some(p) => Ok(idx.iter().map(|&i| p[i]).collect()),
        None => reference_logps(model, b),
    }
}

/// Reference log-probabilities of every pair (`--precompute-ref`), `batch_size` at a time;
/// `on(done)` reports progress.
pub fn precompute_refs(
    model: &Llama,
    pairs: &[PairSeq],
    pad: i32,
    batch_size: usize,
    on: &mut dyn FnMut(usize),
) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        let b = pair_batch(&chunk.iter().collect::<Vec<_>>(), pad)?;
        out.extend(reference_logps(model, &b)?);
        on(out.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The analytic gradient of every loss against central differences, at ordinary and at
    /// extreme log-probabilities (large margins, ORPO answers near certainty).
    #[test]
    fn pair_loss_gradients_match_finite_differences() {
        let pol = [(-12.5, -15.0), (-3.0, -2.0), (-40.0, -1.0), (-0.02, -9.0)];
        let refs = [(-13.0, -14.0), (-2.5, -2.5), (-30.0, -2.0), (-0.5, -8.0)];
        let n = [(5, 6), (2, 3), (9, 1), (4, 4)];
        let specs = [
            (Objective::Dpo, PrefLoss::Sigmoid, 0.0),
            (Objective::Dpo, PrefLoss::Sigmoid, 0.3),
            (Objective::Dpo, PrefLoss::Ipo, 0.0),
            (Objective::Orpo, PrefLoss::Sigmoid, 0.0),
        ];
        for (objective, loss, label_smoothing) in specs {
            let spec = PrefSpec { objective, loss, beta: 0.7, label_smoothing };
            let (st, g, part) = pair_loss(&spec, &pol, &refs, &n, None);
            assert!((st.loss - part).abs() < 1e-12, "alone, a batch's part is its loss");
            assert!(st.loss.is_finite());
            for i in 0..pol.len() {
                for side in 0..2 {
                    let h = 1e-6;
                    let at = |d: f64| {
                        let mut p = pol;
                        if side == 0 {
                            p[i].0 += d
                        } else {
                            p[i].1 += d
                        }
                        pair_loss(&spec, &p, &refs, &n, None).0.loss
                    };
                    let fd = (at(h) - at(-h)) / (2.0 * h);
                    let an = if side == 0 { g[i].0 } else { g[i].1 };
                    assert!((fd - an).abs() <= 1e-6 * (1.0 + fd.abs()), "{spec:?} pair {i} side {side}: {an} vs {fd}");
                }
            }
        }
    }

    #[test]
    fn rewards_and_accuracy() {
        let spec = PrefSpec { objective: Objective::Dpo, loss: PrefLoss::Sigmoid, beta: 0.5, label_smoothing: 0.0 };
        let (st, _, _) =
            pair_loss(&spec, &[(-1.0, -3.0), (-2.0, -1.0)], &[(-2.0, -2.0), (-2.0, -2.0)], &[(1, 1), (1, 1)], None);
        // Pair 0: rewards 0.5 vs −0.5 (right); pair 1: 0 vs 0.5 (wrong).
        assert!((st.rewards_chosen - 0.25).abs() < 1e-12 && (st.rewards_rejected - 0.0).abs() < 1e-12);
        assert_eq!(st.reward_accuracy, 0.5);
        let want = (-log_sigmoid(1.0) - log_sigmoid(-0.5)) / 2.0;
        assert!((st.loss - want).abs() < 1e-12);
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    /// Two halves scoped to the whole give the whole's loss and gradient, for every objective.
    #[test]
    fn parts_of_a_step_add_up_to_the_step() {
        let pol = [(-12.5, -15.0), (-3.0, -2.0), (-40.0, -1.0), (-0.9, -9.0), (-5.0, -5.5)];
        let refs = [(-13.0, -14.0), (-2.5, -2.5), (-30.0, -2.0), (-0.5, -8.0), (-5.0, -6.0)];
        let n = [(5, 6), (2, 3), (9, 1), (4, 4), (7, 2)];
        for objective in [Objective::Dpo, Objective::Orpo] {
            let spec = PrefSpec { objective, loss: PrefLoss::Sigmoid, beta: 0.3, label_smoothing: 0.0 };
            let (all, g, _) = pair_loss(&spec, &pol, &refs, &n, None);
            let scope = Scope { pairs: 5, chosen_tokens: n.iter().map(|x| x.0).sum() };
            let (_, g1, p1) = pair_loss(&spec, &pol[..2], &refs[..2], &n[..2], Some(scope));
            let (_, g2, p2) = pair_loss(&spec, &pol[2..], &refs[2..], &n[2..], Some(scope));
            assert!((p1 + p2 - all.loss).abs() < 1e-12, "{objective:?}: {} vs {}", p1 + p2, all.loss);
            for (a, b) in g.iter().zip(g1.iter().chain(&g2)) {
                assert!((a.0 - b.0).abs() < 1e-15 && (a.1 - b.1).abs() < 1e-15, "{objective:?}");
            }
        }
    }
}
