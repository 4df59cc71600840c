//! Autoregressive decoding with the KV cache. Greedy at temperature 0; otherwise sampling with
//! transformers' processors in transformers' order — repetition penalty, temperature, top-k,
//! top-p — from a seeded generator. Stops at a stop id (EOS), at a user stop string, or at the
//! token budget; text can be streamed as it is decoded.
//!
//! One engine for every command that runs a model: [`Session`] (a loaded model, its template
//! and its KV cache) is what generate, chat and eval call, and what a server would hold per
//! conversation. [`sample`] picks tokens, [`stop`] decides when to stop; the functions here
//! drive the decoding loop over a [`Cache`].

pub mod chat;
pub mod sample;
pub mod session;
pub mod stop;

use std::time::Instant;

use kiln_core::rng::Rng;

pub use chat::{Conversation, Turn};
pub use sample::{GenOptions, argmax};
use sample::{check_logits, logprob, pick};
pub use session::{Request, Session, SessionConfig};
// The types a request is written in, for callers that need nothing else of `data`.
pub use crate::data::budget::BYTES_PER_TOKEN;
pub use crate::data::{Message, Role};
use stop::pending_stop_prefix;
pub use stop::{StopReason, validate_stops};

use crate::adapters::LoraSet;
use crate::data::template::ChatTemplate;
use crate::data::tokenizer::TextTokenizer;
use crate::model::{KvCache, Llama};
use crate::{KilnError, Result};

/// The tokens a model attends over: its `max_position_embeddings`; a sliding window kiln does
/// not apply (Qwen's) bounds it too. Past an applied window (Gemma, Mistral, Phi-3) decoding
/// goes on: each layer attends to its window of the cache.
pub fn context_len(model: &Llama) -> usize {
    let c = &model.config;
    let unapplied = c.sliding_window.filter(|_| !c.applies_window());
    c.max_position_embeddings.min(unapplied.unwrap_or(usize::MAX))
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
pub struct Cache {
    kv: KvCache,
    ids: Vec<i32>,
}

impl Cache {
    pub fn new(model: &Llama) -> Cache {
        Cache { kv: KvCache::new(model), ids: Vec::new() }
    }
    /// Tokens whose keys and values are held.
    pub fn cached(&self) -> usize {
        self.ids.len()
    }
    /// Forgets everything (a new conversation).
    pub fn clear(&mut self) {
        self.kv.truncate(0);
        self.ids.clear();
    }
}

/// Decodes after `prompt`, calling `on_token` with each new id (return `false` to stop), reusing
/// the keys and values `cache` holds for the prompt's prefix. The stop id that ends decoding is
/// included in `tokens`.
pub fn generate_ids(
    model: &Llama,
    cache: &mut Cache,
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
    let keep = cache.ids.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
    cache.kv.truncate(keep);
    cache.ids.truncate(keep);
    let mut rng = Rng::new(opts.seed);
    let t0 = Instant::now();
    let mut logits = model.forward_cached(&prompt[keep..], &mut cache.kv, lora)?;
    cache.ids.extend_from_slice(&prompt[keep..]);
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
        logits = model.forward_cached(&[next], &mut cache.kv, lora)?;
        cache.ids.push(next);
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
    Ok(generate_with_logprobs(model, prompt, stop, opts, lora)?.0)
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
    let g = generate_ids(model, &mut Cache::new(model), prompt, stop, opts, lora, &mut |_| true)?;
    Ok((g.tokens, g.logprobs))
}

/// Text generation's result: the text (without the stop id or stop string) and the ids.
#[derive(Clone, Debug)]
pub struct TextOutput {
    pub text: String,
    pub generated: Generated,
}

impl TextOutput {
    /// Prompt and decoding throughput in tokens per second.
    pub fn tokens_per_s(&self, prompt_len: usize) -> (f64, f64) {
        let g = &self.generated;
        (prompt_len as f64 / g.prompt_s.max(1e-9), g.tokens.len() as f64 / g.decode_s.max(1e-9))
    }

    /// `kiln generate --json`'s object: {"prompt_tokens", "prompt_ids", "tokens", "logprobs",
    /// "text", "stop", "prompt_s", "prompt_tokens_per_s", "decode_s", "tokens_per_s"}.
    pub fn to_json(&self, prompt: &[i32]) -> serde_json::Value {
        let g = &self.generated;
        let (prompt_tps, tps) = self.tokens_per_s(prompt.len());
        serde_json::json!({"prompt_tokens": prompt.len(), "prompt_ids": prompt, "tokens": g.tokens,
            "logprobs": g.logprobs, "text": self.text, "stop": g.stop.name(), "prompt_s": g.prompt_s,
            "prompt_tokens_per_s": prompt_tps, "decode_s": g.decode_s, "tokens_per_s": tps})
    }

    /// One line of timings: prompt and new tokens, their time and throughput, the stop reason.
    pub fn summary(&self, prompt_len: usize) -> String {
        let g = &self.generated;
        let (prompt_tps, tps) = self.tokens_per_s(prompt_len);
        format!(
            "{prompt_len} prompt tokens in {:.2}s, {prompt_tps:.1} tokens/s; {} new in {:.2}s, {tps:.1} tokens/s; stop: {}",
            g.prompt_s,
            g.tokens.len(),
            g.decode_s,
            g.stop.name()
        )
    }
}

/// Generates text after the prompt ids, streaming decoded text to `on_text` as it becomes final
/// (held back across incomplete UTF-8 and possible stop-string starts), stopping at EOS (the
/// tokenizer's) or any of `stop_strings` (cut from the text). `cache` holds the KV cache:
/// a fresh [`Cache`] for one-off prompts, the conversation's own for chat turns.
#[allow(clippy::too_many_arguments)]
pub fn generate_text(
    model: &Llama,
    cache: &mut Cache,
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
    let mut generated = generate_ids(model, cache, prompt, &stop_ids, opts, lora, &mut |t| {
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
