//! Choosing the next token: transformers' processors in transformers' order — repetition
//! penalty (applied by the caller), temperature, top-k, top-p — from a seeded generator, or
//! greedy at temperature 0; and the checks on the settings and on the logits.

use kiln_core::rng::Rng;

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
    /// The settings' names, as [`GenOptions::set`] takes them.
    pub const NAMES: [&str; 6] = ["temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens", "seed"];

    /// Sets the setting `name` from text (chat's `/params name=value`); the ranges are checked
    /// by [`GenOptions::validate`].
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let bad = |e: &dyn std::fmt::Display| KilnError::Msg(format!("/params {name}: `{value}`: {e}"));
        match name {
            "temperature" => self.temperature = value.parse().map_err(|e| bad(&e))?,
            "top_k" => self.top_k = value.parse().map_err(|e| bad(&e))?,
            "top_p" => self.top_p = value.parse().map_err(|e| bad(&e))?,
            "repetition_penalty" => self.repetition_penalty = value.parse().map_err(|e| bad(&e))?,
            "max_new_tokens" => self.max_new_tokens = value.parse().map_err(|e| bad(&e))?,
            "seed" => self.seed = value.parse().map_err(|e| bad(&e))?,
            other => {
                return Err(KilnError::Msg(format!("/params: unknown `{other}` ({})", GenOptions::NAMES.join(", "))));
            }
        }
        Ok(())
    }

    /// `name=value` for every setting, space-separated (what `/params` shows).
    pub fn line(&self) -> String {
        format!(
            "temperature={} top_k={} top_p={} repetition_penalty={} max_new_tokens={} seed={}",
            self.temperature, self.top_k, self.top_p, self.repetition_penalty, self.max_new_tokens, self.seed
        )
    }

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

/// Refuses logits that are not all finite: NaN or infinite weights (or an adapter holding them)
/// make every choice meaningless, so decoding stops with an error instead of printing tokens
/// picked from NaN.
pub(super) fn check_logits(logits: &[f32], step: usize, prompt_len: usize) -> Result<()> {
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
pub(super) fn logprob(logits: &[f32], token: usize) -> f64 {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = m + logits.iter().map(|&l| (l as f64 - m).exp()).sum::<f64>().ln();
    logits[token] as f64 - lse
}

/// The next token from `logits` (already repetition-penalized) under `o`.
pub(super) fn pick(logits: &[f32], o: &GenOptions, rng: &mut Rng) -> usize {
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
    fn settings_are_set_by_name_and_their_ranges_checked() {
        assert!(GenOptions { top_p: 0.0, ..Default::default() }.validate().is_err());
        let mut o = GenOptions::default();
        o.set("top_k", "5").unwrap();
        assert_eq!(o.top_k, 5);
        assert!(o.line().contains("top_k=5"));
        assert!(o.set("top_k", "five").is_err());
        assert!(o.set("beam", "1").unwrap_err().to_string().contains("unknown `beam`"));
    }
}
