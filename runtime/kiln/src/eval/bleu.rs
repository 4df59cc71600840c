//! Corpus BLEU exactly as sacreBLEU's defaults compute it (`BLEU()`: the `13a` tokenizer, 4-gram
//! precisions clipped by the reference, brevity penalty, `exp` smoothing), one reference per
//! hypothesis. Fixtures from tools/make_metric_fixtures.py check it against the package.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

const MAX_ORDER: usize = 4;

/// Python's `str.split()` whitespace: Unicode White_Space plus the four ASCII separators
/// (U+001C–U+001F) that Python also counts.
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

static RULES: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    let re = |p: &str| Regex::new(p).expect("constant pattern");
    [
        // Punctuation and symbols become their own tokens.
        (re(r"([\{-~\[-`\x20-&\(-\+:-@/])"), " $1 "),
        // Period and comma, unless preceded by a digit …
        (re(r"([^0-9])([\.,])"), "$1 $2 "),
        // … or followed by one.
        (re(r"([\.,])([^0-9])"), " $1 $2"),
        // A dash after a digit.
        (re(r"([0-9])(-)"), "$1 $2 "),
    ]
});

/// sacreBLEU's `13a` tokenization (mteval-v13a), after its `rstrip()`.
pub fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line.trim_end_matches(py_space).replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let mut s = format!(" {line} ");
    for (re, rep) in RULES.iter() {
        s = re.replace_all(&s, *rep).into_owned();
    }
    s.split(py_space).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

fn ngrams(tokens: &[String]) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    for n in 1..=MAX_ORDER {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

/// A BLEU score with its statistics (as sacreBLEU reports them).
#[derive(Clone, Debug, PartialEq)]
pub struct Bleu {
    /// 0–100.
    pub score: f64,
    pub precisions: [f64; MAX_ORDER],
    pub bp: f64,
    pub sys_len: usize,
    pub ref_len: usize,
}

/// Corpus BLEU of `hyps` against one reference each.
pub fn corpus_bleu(hyps: &[&str], refs: &[&str]) -> Bleu {
    let (mut correct, mut total) = ([0usize; MAX_ORDER], [0usize; MAX_ORDER]);
    let (mut sys_len, mut ref_len) = (0, 0);
    for (h, r) in hyps.iter().zip(refs) {
        let (ht, rt) = (tokenize_13a(h), tokenize_13a(r));
        sys_len += ht.len();
        ref_len += rt.len();
        let rn = ngrams(&rt);
        for (g, c) in ngrams(&ht) {
            total[g.len() - 1] += c;
            if let Some(&rc) = rn.get(g) {
                correct[g.len() - 1] += c.min(rc);
            }
        }
    }
    let bp = if sys_len < ref_len {
        if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 }
    } else {
        1.0
    };
    let mut precisions = [0f64; MAX_ORDER];
    if correct.iter().all(|&c| c == 0) {
        return Bleu { score: 0.0, precisions, bp, sys_len, ref_len };
    }
    let mut smooth = 1.0f64;
    for n in 0..MAX_ORDER {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    // sacreBLEU's my_log floors log(0) at −9999999999.
    let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
    let score = bp * (precisions.iter().map(|&p| log(p)).sum::<f64>() / MAX_ORDER as f64).exp();
    Bleu { score, precisions, bp, sys_len, ref_len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_like_mteval() {
        assert_eq!(
            tokenize_13a("Hello, world. 3.14 and 1,000 - x-ray 5-6"),
            ["Hello", ",", "world", ".", "3.14", "and", "1,000", "-", "x-ray", "5", "-", "6"]
        );
        assert_eq!(tokenize_13a("a &amp; b &lt;c&gt; \"q\""), ["a", "&", "b", "<", "c", ">", "\"", "q", "\""]);
    }

    #[test]
    fn identical_text_scores_100_and_disjoint_text_0() {
        let s = corpus_bleu(&["the cat sat on the mat today"], &["the cat sat on the mat today"]);
        assert!((s.score - 100.0).abs() < 1e-9);
        assert_eq!(corpus_bleu(&["a b c d"], &["e f g h"]).score, 0.0);
    }
}
