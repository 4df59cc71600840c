//! BLEU, ROUGE and the Porter stemmer against sacreBLEU, rouge-score and NLTK (fixture written
//! by tools/make_metric_fixtures.py): tokenization token for token, BLEU to 0.01, ROUGE to 1e-4.

use kiln::eval::{bleu, porter, rouge};
use serde_json::Value;

fn fixture() -> Value {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/metrics.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect()
}

#[test]
fn tokenization_13a_matches_sacrebleu() {
    let fx = fixture();
    for case in fx["tokens_13a"].as_array().unwrap() {
        let text = case[0].as_str().unwrap();
        assert_eq!(bleu::tokenize_13a(text), strs(&case[1]), "{text:?}");
    }
}

#[test]
fn corpus_bleu_matches_sacrebleu() {
    let fx = fixture();
    let corpora = fx["bleu"].as_array().unwrap();
    assert!(corpora.len() >= 8);
    for (i, c) in corpora.iter().enumerate() {
        let s = bleu::corpus_bleu(&strs(&c["hyps"]), &strs(&c["refs"]));
        let want = c["score"].as_f64().unwrap();
        assert!((s.score - want).abs() < 0.01, "corpus {i}: BLEU {} vs sacrebleu {want}", s.score);
        assert_eq!(s.sys_len as u64, c["sys_len"].as_u64().unwrap(), "corpus {i}");
        assert_eq!(s.ref_len as u64, c["ref_len"].as_u64().unwrap(), "corpus {i}");
        assert!((s.bp - c["bp"].as_f64().unwrap()).abs() < 1e-9, "corpus {i}: bp");
        for (n, p) in c["precisions"].as_array().unwrap().iter().enumerate() {
            assert!((s.precisions[n] - p.as_f64().unwrap()).abs() < 1e-6, "corpus {i}: precision {}", n + 1);
        }
    }
}

#[test]
fn porter_stems_match_nltk() {
    let fx = fixture();
    let stems = fx["stems"].as_array().unwrap();
    assert!(stems.len() > 300);
    let bad: Vec<String> = stems
        .iter()
        .filter_map(|p| {
            let (w, want) = (p[0].as_str().unwrap(), p[1].as_str().unwrap());
            let got = porter::stem(w);
            (got != want).then(|| format!("{w}: {got} (nltk {want})"))
        })
        .collect();
    assert!(bad.is_empty(), "{} of {} stems differ: {bad:?}", bad.len(), stems.len());
}

#[test]
fn rouge_matches_rouge_score() {
    let fx = fixture();
    let pairs = fx["rouge"].as_array().unwrap();
    for (i, p) in pairs.iter().enumerate() {
        let (t, h) = (p["target"].as_str().unwrap(), p["prediction"].as_str().unwrap());
        for (mode, stem) in [("plain", false), ("stemmed", true)] {
            let s = rouge::score(t, h, stem).unwrap();
            for (name, got) in [("rouge1", s.rouge1), ("rouge2", s.rouge2), ("rougeL", s.rouge_l)] {
                let want: Vec<f64> = p[mode][name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
                for (what, g, w) in [("p", got.p, want[0]), ("r", got.r, want[1]), ("f", got.f, want[2])] {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "pair {i} {mode} {name}.{what}: {g} vs rouge-score {w} ({t:?} / {h:?})"
                    );
                }
            }
        }
    }
}

/// The textbook O(n·m) table, the oracle for the bit-parallel LCS.
fn lcs_table(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    for x in a {
        let mut cur = vec![0usize; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y { prev[j] + 1 } else { cur[j].max(prev[j + 1]) };
        }
        prev = cur;
    }
    prev[b.len()]
}

#[test]
fn bit_parallel_lcs_equals_the_table() {
    let mut rng = kiln::core::rng::Rng::new(3);
    for case in 0..400 {
        // Small alphabets make long common runs; lengths cross the 64-bit word boundaries, and
        // one token is frequent enough to take the cached-mask path.
        let alphabet = 1 + rng.below(6);
        let word = |rng: &mut kiln::core::rng::Rng| format!("w{}", rng.below(alphabet));
        let a: Vec<String> = (0..rng.below(300)).map(|_| word(&mut rng)).collect();
        let b: Vec<String> = (0..rng.below(300)).map(|_| word(&mut rng)).collect();
        assert_eq!(rouge::lcs(&a, &b), lcs_table(&a, &b), "case {case}: {} × {} tokens", a.len(), b.len());
    }
}

#[test]
fn rouge_l_refuses_pairs_past_its_cap_and_scores_large_ones() {
    // 300 000 × 300 000 tokens is past 2^36 cells: refused, saying why.
    let big: String = (0..300_000).map(|i| format!("w{} ", i % 1000)).collect();
    let e = rouge::score(&big, &big, false).unwrap_err().to_string();
    assert!(e.contains("ROUGE-L") && e.contains("2^36") && e.contains("300000"), "{e}");
    let e = rouge::mean(&["a b", &big], &["a b", &big], false).unwrap_err().to_string();
    assert!(e.contains("pair 2"), "{e}");
    // 20 000 tokens each (about 120 KB) is scored, and equal texts have an LCS of all of them.
    let text: String = (0..20_000).map(|i| format!("t{} ", (i * 7) % 501)).collect();
    let s = rouge::score(&text, &text, false).unwrap();
    assert!((s.rouge_l.f - 1.0).abs() < 1e-12, "{:?}", s.rouge_l);
}
