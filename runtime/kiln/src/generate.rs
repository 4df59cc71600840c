//! Autoregressive decoding with the KV cache. Greedy at temperature 0; otherwise sampling with
//! transformers' processors in transformers' order — repetition penalty, temperature, top-k,
//! top-p — from a seeded generator. Stops at a stop id (EOS), at a user stop string, or at the
//! token budget; text can be streamed as it is decoded.

use std::time::Instant;

use kiln_core::rng::Rng;

use crate::adapters::LoraSet;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{Message, template::ChatTemplate};
use crate::model::{KvCache, Llama};
use crate::{KilnError, Result};

/// Decoding settings (transformers' names and neutral values).
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches p (1 = all).
    pub top_p: f64,
    /// Above 1 discourages tokens already in the prompt or output (1 = off), as transformers'
    /// `RepetitionPenaltyLogitsProcessor`: positive logits divided, negative multiplied.
    pub repetition_penalty: f64,
    pub seed: u64,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { max_new_tokens: 256, temperature: 0.0, top_k: 0, top_p: 1.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl GenOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(KilnError::Msg(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature {} must be ≥ 0", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p {} must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!("repetition_penalty {} must be > 0", self.repetition_penalty));
        }
        Ok(())
    }
}

/// Checks user stop strings: an empty one would match before the first token and stop every
/// answer empty.
pub fn validate_stops(stops: &[String]) -> Result<()> {
    if stops.iter().any(|s| s.is_empty()) {
        return Err(KilnError::Msg(
            "--stop \"\": an empty stop string matches everywhere, so nothing would be generated; give the text to stop at"
                .into(),
        ));
    }
    Ok(())
}

/// The tokens a model attends over: its `max_position_embeddings`, or its sliding window when
/// smaller (the cache here does not roll).
pub fn context_len(model: &Llama) -> usize {
    let c = &model.config;
    c.max_position_embeddings.min(c.sliding_window.unwrap_or(usize::MAX))
}

/// Fits a request into a context of `ctx` tokens: a prompt that leaves no room for one new
/// token is refused; `max_new_tokens` past the room left is clamped, and the returned note says
/// so (for the caller to show).
pub fn fit_context(ctx: usize, prompt_len: usize, opts: &mut GenOptions) -> Result<Option<String>> {
    if prompt_len >= ctx {
        return Err(KilnError::Msg(format!(
            "the prompt is {prompt_len} tokens but the model's context is {ctx} (max_position_embeddings), which leaves no room for an answer: shorten the prompt (or the conversation: /reset in kiln chat)"
        )));
    }
    let room = ctx - prompt_len;
    if opts.max_new_tokens > room {
        let note = format!(
            "--max-new-tokens {} clamped to {room}: the prompt's {prompt_len} tokens leave {room} of the model's {ctx}-token context",
            opts.max_new_tokens
        );
        opts.max_new_tokens = room;
        return Ok(Some(note));
    }
    Ok(None)
}

/// Refuses logits that are not all finite: NaN or infinite weights (or an adapter holding them)
/// make every choice meaningless, so decoding stops with an error instead of printing tokens
/// picked from NaN.
fn check_logits(logits: &[f32], step: usize, prompt_len: usize) -> Result<()> {
    if let Some(i) = logits.iter().position(|l| !l.is_finite()) {
        let at = if step == 0 {
            format!("after the {prompt_len}-token prompt (step 0)")
        } else {
            format!("at generation step {step}")
        };
        return Err(KilnError::Msg(format!(
            "the model's logits {at} are not finite (token {i}: {}): its weights or the adapter hold NaN or infinite values",
            logits[i]
        )));
    }
    Ok(())
}

/// The index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

/// `log softmax(logits)[token]`, in f64.
fn logprob(logits: &[f32], token: usize) -> f64 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
    logits[token] as f64 - lse
}

/// The next token from `logits` (already repetition-penalized) under `o`.
fn pick(logits: &[f32], o: &GenOptions, rng: &mut Rng) -> usize {
    if o.temperature <= 0.0 {
        return argmax(logits);
    }
    // Candidates by descending logit; top-k then top-p cut the tail.
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if o.top_k > 0 {
        idx.truncate(o.top_k);
    }
    let m = logits[idx[0]] as f64;
    let mut w: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - m) / o.temperature).exp()).collect();
    if o.top_p < 1.0 {
        let total: f64 = w.iter().sum();
        let (mut acc, mut keep) = (0.0, w.len());
        for (j, x) in w.iter().enumerate() {
            acc += x / total;
            if acc >= o.top_p {
                keep = j + 1;
                break;
            }
        }
        w.truncate(keep);
    }
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (j, x) in w.iter().enumerate() {
        u -= x;
        if u <= 0.0 {
            return idx[j];
        }
    }
    idx[w.len() - 1]
}

/// Why decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop id (EOS).
    Eos,
    /// A user stop string appeared in the text.
    StopString,
    /// `max_new_tokens` reached.
    Length,
    /// The caller asked to stop.
    Interrupted,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::StopString => "stop_string",
            StopReason::Length => "length",
            StopReason::Interrupted => "interrupted",
        }
    }
}

/// New token ids, their log-probabilities under the unmodified model, and timings.
#[derive(Clone, Debug)]
pub struct Generated {
    pub tokens: Vec<i32>,
    pub logprobs: Vec<f64>,
    pub stop: StopReason,
    /// Seconds for the prompt's forward pass (prefill) and for the decoding steps.
    pub prompt_s: f64,
    pub decode_s: f64,
}

/// A KV cache kept between calls for one model and adapter: a chat's next turn renders the
/// earlier turns identically, so only the tokens after the longest common prefix with the
/// previous call are run (the cache is cut back to that prefix first).
pub struct Session {
    cache: KvCache,
    ids: Vec<i32>,
}

impl Session {
    pub fn new(model: &Llama) -> Session {
        Session { cache: KvCache::new(model), ids: Vec::new() }
    }
    /// Tokens whose keys and values are held.
    pub fn cached(&self) -> usize {
        self.ids.len()
    }
    /// Forgets everything (a new conversation).
    pub fn clear(&mut self) {
        self.cache.truncate(0);
        self.ids.clear();
    }
}

/// Decodes after `prompt`, calling `on_token` with each new id (return `false` to stop). The
/// stop id that ends decoding is included in `tokens`.
pub fn generate_ids(
    model: &Llama,
    prompt: &[i32],
    stop: &[i32],
    opts: &GenOptions,
    lora: Option<&LoraSet>,
    on_token: &mut dyn FnMut(i32) -> bool,
) -> Result<Generated> {
    generate_ids_in(model, &mut Session::new(model), prompt, stop, opts, lora, on_token)
}

/// [`generate_ids`] reusing `session`'s cache for the prompt's prefix it already holds.
pub fn generate_ids_in(
    model: &Llama,
    session: &mut Session,
    prompt: &[i32],
    stop: &[i32],
    opts: &GenOptions,
    lora: Option<&LoraSet>,
    on_token: &mut dyn FnMut(i32) -> bool,
) -> Result<Generated> {
    opts.validate()?;
    if prompt.is_empty() {
        return Err(KilnError::Msg("generate: empty prompt".into()));
    }
    // Callers clamp with a message first (`fit_context`); here the bound is only enforced.
    let mut opts = opts.clone();
    fit_context(context_len(model), prompt.len(), &mut opts)?;
    let opts = &opts;
    // At least the prompt's last token runs, for the logits of the first new token.
    let keep = session.ids.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
    session.cache.truncate(keep);
    session.ids.truncate(keep);
    let mut rng = Rng::new(opts.seed);
    let t0 = Instant::now();
    let mut logits = model.forward_cached(&prompt[keep..], &mut session.cache, lora)?;
    session.ids.extend_from_slice(&prompt[keep..]);
    check_logits(&logits, 0, prompt.len())?;
    let prompt_s = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    // Tokens already present, for the repetition penalty (empty when it is off).
    let penalty = opts.repetition_penalty as f32;
    let mut seen: Vec<bool> = if penalty != 1.0 { vec![false; logits.len()] } else { Vec::new() };
    for &t in prompt {
        if let Some(s) = seen.get_mut(t as usize) {
            *s = true;
        }
    }
    let mut penalized = Vec::new();
    let (mut out, mut lps) = (Vec::new(), Vec::new());
    let mut reason = StopReason::Length;
    for _ in 0..opts.max_new_tokens {
        // The choice sees the penalized logits; the log-probability reported is the model's.
        let scores: &[f32] = if seen.is_empty() {
            &logits
        } else {
            penalized.clone_from(&logits);
            for (l, _) in penalized.iter_mut().zip(&seen).filter(|(_, s)| **s) {
                *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
            }
            &penalized
        };
        let next = pick(scores, opts, &mut rng) as i32;
        out.push(next);
        lps.push(logprob(&logits, next as usize));
        if let Some(s) = seen.get_mut(next as usize) {
            *s = true;
        }
        if stop.contains(&next) {
            reason = StopReason::Eos;
            break;
        }
        if !on_token(next) {
            reason = StopReason::Interrupted;
            break;
        }
        if out.len() == opts.max_new_tokens {
            break;
        }
        logits = model.forward_cached(&[next], &mut session.cache, lora)?;
        session.ids.push(next);
        check_logits(&logits, out.len(), prompt.len())?;
    }
    Ok(Generated { tokens: out, logprobs: lps, stop: reason, prompt_s, decode_s: t1.elapsed().as_secs_f64() })
}

/// New tokens after `prompt`, stopping after any token in `stop` (which is included) or at
/// `max_new_tokens`.
pub fn generate(
    model: &Llama,
    prompt: &[i32],
    stop: &[i32],
    opts: &GenOptions,
    lora: Option<&LoraSet>,
) -> Result<Vec<i32>> {
    Ok(generate_ids(model, prompt, stop, opts, lora, &mut |_| true)?.tokens)
}

/// [`generate`], also returning each new token's log-probability under the model (what a
/// reference implementation is compared on).
pub fn generate_with_logprobs(
    model: &Llama,
    prompt: &[i32],
    stop: &[i32],
    opts: &GenOptions,
    lora: Option<&LoraSet>,
) -> Result<(Vec<i32>, Vec<f64>)> {
    let g = generate_ids(model, prompt, stop, opts, lora, &mut |_| true)?;
    Ok((g.tokens, g.logprobs))
}

/// Text generation's result: the text (without the stop id or stop string) and the ids.
#[derive(Clone, Debug)]
pub struct TextOutput {
    pub text: String,
    pub generated: Generated,
}

/// The longest suffix of `text` that is a proper prefix of some stop string (held back while
/// streaming, since the next token may complete the stop string).
fn pending_stop_prefix(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if text.ends_with(&s[..i]) {
                keep = keep.max(i);
            }
        }
    }
    keep
}

/// Generates text after the prompt ids, streaming decoded text to `on_text` as it becomes final
/// (held back across incomplete UTF-8 and possible stop-string starts), stopping at EOS (the
/// tokenizer's) or any of `stop_strings` (cut from the text). `session` holds the KV cache:
/// a fresh [`Session`] for one-off prompts, the conversation's own for chat turns.
#[allow(clippy::too_many_arguments)]
pub fn generate_text(
    model: &Llama,
    session: &mut Session,
    tok: &TextTokenizer,
    prompt: &[i32],
    opts: &GenOptions,
    stop_strings: &[String],
    lora: Option<&LoraSet>,
    on_text: &mut dyn FnMut(&str),
) -> Result<TextOutput> {
    validate_stops(stop_strings)?;
    let stop_ids: Vec<i32> = tok.eos.iter().map(|s| s.id as i32).collect();
    let (mut ids, mut emitted, mut text) = (Vec::<u32>::new(), 0usize, String::new());
    let mut hit_stop = false;
    let mut err = None;
    let mut generated = generate_ids_in(model, session, prompt, &stop_ids, opts, lora, &mut |t| {
        ids.push(t as u32);
        text = match tok.decode(&ids) {
            Ok(s) => s,
            Err(e) => {
                err = Some(e);
                return false;
            }
        };
        if let Some(at) = stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(at);
            hit_stop = true;
        }
        // Final text: all but a trailing replacement char (a partial UTF-8 sequence) and a
        // suffix that may grow into a stop string.
        let mut upto = text.len();
        if !hit_stop {
            upto -= pending_stop_prefix(&text, stop_strings);
            if text[..upto].ends_with('\u{FFFD}') {
                upto -= '\u{FFFD}'.len_utf8();
            }
        }
        if upto > emitted && text.is_char_boundary(upto) && text.is_char_boundary(emitted) {
            on_text(&text[emitted..upto]);
            emitted = upto;
        }
        !hit_stop
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    if hit_stop {
        generated.stop = StopReason::StopString;
    }
    if emitted < text.len() && text.is_char_boundary(emitted) {
        on_text(&text[emitted..]);
    }
    Ok(TextOutput { text, generated })
}

/// The prompt ids of a conversation under the chat template, ending with the assistant's
/// generation prompt (what `apply_chat_template(add_generation_prompt=True)` gives).
pub fn chat_prompt(tok: &TextTokenizer, template: &ChatTemplate, msgs: &[Message]) -> Result<Vec<i32>> {
    let text = template.render(msgs, true, tok.bos_text(), tok.eos_text())?;
    Ok(tok.encode(&text)?.ids.iter().map(|&i| i as i32).collect())
}

/// The ids of raw text (BOS first when the tokenizer adds one to plain text).
pub fn raw_prompt(tok: &TextTokenizer, text: &str) -> Result<Vec<i32>> {
    let mut ids: Vec<i32> = tok.encode(text)?.ids.iter().map(|&i| i as i32).collect();
    if let Some(b) = tok.bos.as_ref().filter(|_| tok.add_bos) {
        ids.insert(0, b.id as i32);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        let logits = [0.0f32, 3.0, 2.9, -1.0, 1.0];
        let o = GenOptions { temperature: 1.0, top_k: 2, ..Default::default() };
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            assert!(matches!(pick(&logits, &o, &mut rng), 1 | 2));
        }
        // p = 0.3: the most likely token alone carries ≥ 30 %.
        let o = GenOptions { temperature: 1.0, top_p: 0.3, ..Default::default() };
        for _ in 0..200 {
            assert_eq!(pick(&logits, &o, &mut rng), 1);
        }
        // Plain sampling reaches the others.
        let o = GenOptions { temperature: 1.0, ..Default::default() };
        let picks: std::collections::HashSet<usize> = (0..500).map(|_| pick(&logits, &o, &mut rng)).collect();
        assert!(picks.len() >= 4);
    }

    #[test]
    fn stop_prefixes_are_held_back() {
        let stops = vec!["\nUser:".to_string()];
        assert_eq!(pending_stop_prefix("answer\nUs", &stops), 3);
        assert_eq!(pending_stop_prefix("answer", &stops), 0);
        assert!(GenOptions { top_p: 0.0, ..Default::default() }.validate().is_err());
    }
}
