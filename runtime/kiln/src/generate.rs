//! Autoregressive decoding with the KV cache: greedy at temperature 0, otherwise sampling from
//! `softmax(logits / temperature)` with a seeded generator.

use kiln_core::rng::Rng;

use crate::adapters::LoraSet;
use crate::model::{KvCache, Llama};
use crate::{KilnError, Result};

/// Decoding settings.
#[derive(Clone, Debug)]
pub struct GenOptions {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub seed: u64,
}

/// The index of the largest logit (the first, on ties).
pub fn argmax(logits: &[f32]) -> usize {
    logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) }).0
}

fn sample(logits: &[f32], temperature: f64, rng: &mut Rng) -> usize {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let w: Vec<f64> = logits.iter().map(|&l| ((l as f64 - m) / temperature).exp()).collect();
    let mut u = rng.uniform() * w.iter().sum::<f64>();
    for (i, x) in w.iter().enumerate() {
        u -= x;
        if u <= 0.0 {
            return i;
        }
    }
    w.len() - 1
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

/// `log softmax(logits)[token]`, in f64.
fn logprob(logits: &[f32], token: usize) -> f64 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
    logits[token] as f64 - lse
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
    if prompt.is_empty() {
        return Err(KilnError::Msg("generate: empty prompt".into()));
    }
    let mut cache = KvCache::new(model);
    let mut rng = Rng::new(opts.seed);
    let mut logits = model.forward_cached(prompt, &mut cache, lora)?;
    let (mut out, mut lps) = (Vec::new(), Vec::new());
    for _ in 0..opts.max_new_tokens {
        let next =
            if opts.temperature <= 0.0 { argmax(&logits) } else { sample(&logits, opts.temperature, &mut rng) } as i32;
        out.push(next);
        lps.push(logprob(&logits, next as usize));
        if stop.contains(&next) {
            break;
        }
        logits = model.forward_cached(&[next], &mut cache, lora)?;
    }
    Ok((out, lps))
}
