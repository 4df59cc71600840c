//! ROUGE-1, ROUGE-2 and ROUGE-L exactly as Google's `rouge-score` package computes them
//! (`RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=…)`): lower-case, every run of
//! characters outside `[a-z0-9]` a separator, the Porter stemmer (NLTK's) on tokens longer than
//! three characters when asked; n-gram overlap or LCS precision, recall and F1 per pair, averaged
//! over pairs by the caller.

use std::collections::HashMap;

use super::porter;
use crate::{KilnError, Result};

/// Precision, recall, F1.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Prf {
    pub p: f64,
    pub r: f64,
    pub f: f64,
}

impl Prf {
    fn new(p: f64, r: f64) -> Prf {
        Prf { p, r, f: if p + r > 0.0 { 2.0 * p * r / (p + r) } else { 0.0 } }
    }
}

/// ROUGE-1, ROUGE-2, ROUGE-L of one pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rouge {
    pub rouge1: Prf,
    pub rouge2: Prf,
    pub rouge_l: Prf,
}

/// rouge-score's tokenizer.
pub fn tokenize(text: &str, stemmer: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| if stemmer && t.len() > 3 { porter::stem(t) } else { t.to_string() })
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .collect()
}

fn ngram_score(target: &[String], pred: &[String], n: usize) -> Prf {
    let count = |t: &[String]| -> HashMap<Vec<String>, usize> {
        let mut m = HashMap::new();
        for w in t.windows(n) {
            *m.entry(w.to_vec()).or_insert(0) += 1;
        }
        m
    };
    let (tc, pc) = (count(target), count(pred));
    let inter: usize = tc.iter().map(|(g, &c)| c.min(pc.get(g).copied().unwrap_or(0))).sum();
    let (tn, pn) = (tc.values().sum::<usize>(), pc.values().sum::<usize>());
    Prf::new(inter as f64 / pn.max(1) as f64, inter as f64 / tn.max(1) as f64)
}

/// The largest token-count product (prediction × reference) ROUGE-L scores: LCS is
/// O(n·m/64) word operations here (bit-parallel), about a second at this size; beyond it a pair
/// is refused rather than left running for minutes. A 490 KB pair (≈ 80 000 tokens each,
/// 6.4·10⁹) is well inside.
pub const MAX_LCS_CELLS: u64 = 1 << 36;

/// Length of the longest common subsequence, by Hyyrö's bit-parallel algorithm: one bit per
/// token of `b`, a row of the dynamic programme per token of `a` in ⌈|b|/64⌉ word operations
/// and O(|b|) memory. Equal to the textbook O(n·m) table.
pub fn lcs(a: &[String], b: &[String]) -> usize {
    if a.is_empty() || b.is_empty() {
        return 0;
    }
    // Token ids, and the positions of each id in `b`.
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut where_in_b: Vec<Vec<usize>> = Vec::new();
    for (j, t) in b.iter().enumerate() {
        let next = ids.len();
        let id = *ids.entry(t.as_str()).or_insert(next);
        if id == where_in_b.len() {
            where_in_b.push(Vec::new());
        }
        where_in_b[id].push(j);
    }
    let words = b.len().div_ceil(64);
    // A token's match mask is built from its positions: O(occurrences) to set and to clear. The
    // few tokens with more than `words` occurrences (fewer than 64 of them) keep theirs.
    let mut frequent: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut scratch = vec![0u64; words];
    let mut v = vec![u64::MAX; words];
    for x in a {
        let Some(&id) = ids.get(x.as_str()) else { continue };
        let pos = &where_in_b[id];
        let m: &[u64] = if pos.len() > words {
            frequent.entry(id).or_insert_with(|| {
                let mut m = vec![0u64; words];
                pos.iter().for_each(|&j| m[j / 64] |= 1 << (j % 64));
                m
            })
        } else {
            pos.iter().for_each(|&j| scratch[j / 64] |= 1 << (j % 64));
            &scratch
        };
        // V' = (V + (V & M)) | (V & !M), with the carry rippling across words.
        let mut carry = 0u64;
        for w in 0..words {
            let (vw, u) = (v[w], v[w] & m[w]);
            let (s1, c1) = vw.overflowing_add(u);
            let (s2, c2) = s1.overflowing_add(carry);
            carry = u64::from(c1 || c2);
            v[w] = s2 | (vw & !m[w]);
        }
        if pos.len() <= words {
            pos.iter().for_each(|&j| scratch[j / 64] = 0);
        }
    }
    // Each zero bit is one matched token: the unused high bits of the last word start at one
    // and stay one (their match bits are zero, so `V & !M` keeps them).
    v.iter().map(|w| w.count_zeros() as usize).sum()
}

/// ROUGE of `prediction` against `target`.
pub fn score(target: &str, prediction: &str, stemmer: bool) -> Result<Rouge> {
    let (t, p) = (tokenize(target, stemmer), tokenize(prediction, stemmer));
    let rouge_l = if t.is_empty() || p.is_empty() {
        Prf::default()
    } else {
        let cells = (t.len() as u64).saturating_mul(p.len() as u64);
        if cells > MAX_LCS_CELLS {
            return Err(KilnError::Msg(format!(
                "ROUGE-L: {} prediction tokens × {} reference tokens = {cells} is above the limit of {MAX_LCS_CELLS} (2^36) the longest-common-subsequence is computed for; shorten the texts or score without rouge (--metrics accuracy,bleu)",
                p.len(),
                t.len()
            )));
        }
        let l = lcs(&t, &p) as f64;
        Prf::new(l / p.len() as f64, l / t.len() as f64)
    };
    Ok(Rouge { rouge1: ngram_score(&t, &p, 1), rouge2: ngram_score(&t, &p, 2), rouge_l })
}

/// Mean ROUGE over pairs (rouge-score's per-pair scores averaged, as users report them). A
/// pair over [`MAX_LCS_CELLS`] is refused, naming it (1-based).
pub fn mean(targets: &[&str], predictions: &[&str], stemmer: bool) -> Result<Rouge> {
    let n = targets.len().max(1) as f64;
    let mut acc = Rouge::default();
    for (i, (t, p)) in targets.iter().zip(predictions).enumerate() {
        let s = score(t, p, stemmer).map_err(|e| KilnError::Msg(format!("pair {}: {e}", i + 1)))?;
        for (a, x) in [(&mut acc.rouge1, s.rouge1), (&mut acc.rouge2, s.rouge2), (&mut acc.rouge_l, s.rouge_l)] {
            a.p += x.p / n;
            a.r += x.r / n;
            a.f += x.f / n;
        }
    }
    Ok(acc)
}
