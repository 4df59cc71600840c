//! BLEU, ROUGE and the Porter stemmer against sacreBLEU, rouge-score and NLTK (fixture written
//! by tools/make_metric_fixtures.py): tokenization token for token, BLEU to 0.01, ROUGE to 1e-4.
//! And the `metrics.jsonl` records against their documentation (docs/metrics.md): the same keys
//! of the same JSON types.

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

/// The tables of docs/metrics.md: for each `## \`kind\`` section, its rows' `(key, type)`.
fn documented_records() -> Vec<(String, Vec<(String, String)>)> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
    let text = std::fs::read_to_string(p).unwrap();
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("## `") {
            out.push((h.split('`').next().unwrap().to_string(), Vec::new()));
        } else if let (Some(row), Some((_, rows))) = (line.strip_prefix("| `"), out.last_mut()) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            rows.push((cells[0].trim_end_matches('`').to_string(), cells[1].to_string()));
        }
    }
    out
}

/// Whether a JSON value is of the type the documentation names.
fn is_type(v: &Value, ty: &str) -> bool {
    match ty {
        "integer" => v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "object" => v.is_object(),
        _ => false,
    }
}

#[test]
fn metrics_records_match_their_documentation() {
    use kiln::train::pref::PrefStats;
    use kiln::train::{EvalLog, SkipLog, StepLog};
    // Every optional part present, so every key the structs can write is written.
    let pref = PrefStats {
        pairs: 2,
        loss: 0.6,
        rewards_chosen: 0.3,
        rewards_rejected: -0.1,
        reward_accuracy: 0.5,
        policy_accuracy: 1.0,
        chosen_nll: 3.0,
        chosen_tokens: 4,
    };
    let step = StepLog {
        step: 3,
        total: 10,
        epoch: 0.5,
        loss: 1.25,
        lr: 2e-4,
        grad_norm: 0.7,
        tokens: 512,
        tokens_per_s: 100.0,
        elapsed_s: 5.12,
        pref: Some((&pref).into()),
        device: Some(kiln::train::DeviceLog { launches: 900, uploads: 12, host_syncs: 1 }),
    };
    let scores = kiln::eval::Scores {
        n: 1,
        accuracy: Some(1.0),
        bleu: Some(100.0),
        rouge: Some(rouge::score("a b c", "a b c", false).unwrap()),
        ..Default::default()
    };
    let eval = EvalLog::new(3, 1.5, Some(&pref), Some(&scores));
    let skip = SkipLog { step: 4, reason: "the loss is NaN".into() };
    let written: Vec<Value> = vec![
        serde_json::to_value(&step).unwrap(),
        serde_json::to_value(&eval).unwrap(),
        serde_json::to_value(&skip).unwrap(),
    ];
    let docs = documented_records();
    let kinds: Vec<&str> = docs.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(kinds, ["train", "eval", "skip"], "the record kinds of docs/metrics.md");
    for ((kind, rows), v) in docs.iter().zip(&written) {
        assert_eq!(v["kind"], kind.as_str());
        let obj = v.as_object().unwrap();
        let mut have: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut documented: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        have.sort_unstable();
        documented.sort_unstable();
        assert_eq!(have, documented, "the keys of a `{kind}` record: written (left) and documented in docs/metrics.md");
        for (key, ty) in rows {
            assert!(is_type(&obj[key], ty), "`{kind}`.{key}: documented as {ty}, written as {}", obj[key]);
        }
    }
    // A record's own struct fields are the ones that may not be left undocumented: the
    // preference and score parts are optional and absent without their settings.
    let plain = EvalLog::new(0, 2.0, None, None);
    let keys: Vec<String> = serde_json::to_value(&plain).unwrap().as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["eval_loss", "eval_ppl", "kind", "step"]);
    assert!((plain.eval_ppl - 2f64.exp()).abs() < 1e-12);
}
