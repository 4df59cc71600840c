//! ROUGE-1, ROUGE-2 and ROUGE-L exactly as Google's `rouge-score` package computes them
//! (`RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=…)`): lower-case, every run of
//! characters outside `[a-z0-9]` a separator, the Porter stemmer (NLTK's) on tokens longer than
//! three characters when asked; n-gram overlap or LCS precision, recall and F1 per pair, averaged
//! over pairs by the caller.

use std::collections::HashMap;

use super::porter;

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

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE of `prediction` against `target`.
pub fn score(target: &str, prediction: &str, stemmer: bool) -> Rouge {
    let (t, p) = (tokenize(target, stemmer), tokenize(prediction, stemmer));
    let rouge_l = if t.is_empty() || p.is_empty() {
        Prf::default()
    } else {
        let l = lcs(&t, &p) as f64;
        Prf::new(l / p.len() as f64, l / t.len() as f64)
    };
    Rouge { rouge1: ngram_score(&t, &p, 1), rouge2: ngram_score(&t, &p, 2), rouge_l }
}

/// Mean ROUGE over pairs (rouge-score's per-pair scores averaged, as users report them).
pub fn mean(targets: &[&str], predictions: &[&str], stemmer: bool) -> Rouge {
    let n = targets.len().max(1) as f64;
    let mut acc = Rouge::default();
    for (t, p) in targets.iter().zip(predictions) {
        let s = score(t, p, stemmer);
        for (a, x) in [(&mut acc.rouge1, s.rouge1), (&mut acc.rouge2, s.rouge2), (&mut acc.rouge_l, s.rouge_l)] {
            a.p += x.p / n;
            a.r += x.r / n;
            a.f += x.f / n;
        }
    }
    acc
}
