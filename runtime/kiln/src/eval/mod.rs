//! Evaluation metrics — exact-match accuracy, corpus BLEU (sacreBLEU), ROUGE-1/2/L
//! (rouge-score) — and the JSON shape every evaluating command prints (DESIGN: `{"n",
//! "metrics": {"loss", "ppl", "accuracy", "bleu", "rouge1": {"p", "r", "f"}, …}}`).
//! [`measure`] runs one model over rows (loss, predictions); [`run`] and [`score_files`] are the
//! entries `kiln eval` and `kiln score` call.

pub mod bleu;
pub mod command;
pub mod measure;
pub mod porter;
pub mod rouge;

use serde_json::{Value, json};

pub use crate::data::Format;
pub use crate::model::LoadSpec;
pub use command::{EvalConfig, EvalReport, PrefReport, Progress, Quiet, ScoreConfig, run, score_files};
pub use measure::EvalSpec;

use crate::{KilnError, Result};

/// A metric name of `--metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Loss,
    Ppl,
    Accuracy,
    Bleu,
    Rouge,
}

impl Metric {
    /// Parses a comma-separated list (`loss,ppl,accuracy,bleu,rouge`).
    pub fn parse_list(s: &str) -> Result<Vec<Metric>> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let m = match name {
                "loss" => Metric::Loss,
                "ppl" | "perplexity" => Metric::Ppl,
                "accuracy" | "exact_match" => Metric::Accuracy,
                "bleu" => Metric::Bleu,
                "rouge" => Metric::Rouge,
                other => {
                    return Err(KilnError::Msg(format!(
                        "--metrics: unknown metric `{other}` (loss, ppl, accuracy, bleu, rouge)"
                    )));
                }
            };
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            return Err(KilnError::Msg("--metrics: no metric named".into()));
        }
        Ok(out)
    }

    /// Whether the metric scores generated text (rather than the model's loss).
    pub fn needs_generation(self) -> bool {
        matches!(self, Metric::Accuracy | Metric::Bleu | Metric::Rouge)
    }
}

/// Options of the text metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct TextOptions {
    pub case_insensitive: bool,
    pub rouge_stemmer: bool,
}

/// Exact-match normalization: trimmed, whitespace runs collapsed to one space, lower-cased
/// when `case_insensitive`.
pub fn normalize(s: &str, case_insensitive: bool) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if case_insensitive { s.to_lowercase() } else { s }
}

/// Whether a prediction equals its reference after [`normalize`].
pub fn exact_match(pred: &str, reference: &str, case_insensitive: bool) -> bool {
    normalize(pred, case_insensitive) == normalize(reference, case_insensitive)
}

/// Fraction of predictions that [`exact_match`] their reference.
pub fn accuracy(preds: &[&str], refs: &[&str], case_insensitive: bool) -> f64 {
    let hits = preds.iter().zip(refs).filter(|(p, r)| exact_match(p, r, case_insensitive));
    hits.count() as f64 / preds.len().max(1) as f64
}

/// Scores of one system; `None` where a metric was not asked for.
#[derive(Clone, Debug, Default)]
pub struct Scores {
    pub n: usize,
    pub loss: Option<f64>,
    pub ppl: Option<f64>,
    pub accuracy: Option<f64>,
    pub bleu: Option<f64>,
    pub rouge: Option<rouge::Rouge>,
}

impl Scores {
    /// The text metrics of `preds` against `refs`. BLEU and ROUGE-1/2 are linear in the text;
    /// ROUGE-L refuses a pair over [`rouge::MAX_LCS_CELLS`].
    pub fn of_texts(preds: &[&str], refs: &[&str], metrics: &[Metric], o: TextOptions) -> Result<Scores> {
        let mut s = Scores { n: preds.len(), ..Default::default() };
        if metrics.contains(&Metric::Accuracy) {
            s.accuracy = Some(accuracy(preds, refs, o.case_insensitive));
        }
        if metrics.contains(&Metric::Bleu) {
            s.bleu = Some(bleu::corpus_bleu(preds, refs).score);
        }
        if metrics.contains(&Metric::Rouge) {
            s.rouge = Some(rouge::mean(refs, preds, o.rouge_stemmer)?);
        }
        Ok(s)
    }

    /// The `metrics` object of the JSON schema.
    pub fn metrics_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        let prf = |x: rouge::Prf| json!({"p": x.p, "r": x.r, "f": x.f});
        for (k, v) in [("loss", self.loss), ("ppl", self.ppl), ("accuracy", self.accuracy), ("bleu", self.bleu)] {
            if let Some(v) = v {
                m.insert(k.into(), v.into());
            }
        }
        if let Some(r) = self.rouge {
            m.insert("rouge1".into(), prf(r.rouge1));
            m.insert("rouge2".into(), prf(r.rouge2));
            m.insert("rougeL".into(), prf(r.rouge_l));
        }
        Value::Object(m)
    }

    /// `{"n", "metrics"}`.
    pub fn to_json(&self) -> Value {
        json!({"n": self.n, "metrics": self.metrics_json()})
    }

    /// (name, value) rows for a table: accuracy as %, ROUGE as F1 × 100, as papers report them.
    pub fn rows(&self) -> Vec<(&'static str, f64)> {
        let mut r = Vec::new();
        for (k, v) in [("loss", self.loss), ("ppl", self.ppl)] {
            if let Some(v) = v {
                r.push((k, v));
            }
        }
        if let Some(a) = self.accuracy {
            r.push(("accuracy %", 100.0 * a));
        }
        if let Some(b) = self.bleu {
            r.push(("BLEU", b));
        }
        if let Some(x) = self.rouge {
            r.extend([
                ("ROUGE-1 F", 100.0 * x.rouge1.f),
                ("ROUGE-2 F", 100.0 * x.rouge2.f),
                ("ROUGE-L F", 100.0 * x.rouge_l.f),
            ]);
        }
        r
    }
}

/// A plain-text table of one or two systems (with the difference when two).
pub fn table(base: Option<&Scores>, tuned: &Scores) -> String {
    let mut out = String::new();
    match base {
        None => {
            out.push_str(&format!("{:<12} {:>12}\n", "metric", "value"));
            for (k, v) in tuned.rows() {
                out.push_str(&format!("{k:<12} {v:>12.4}\n"));
            }
        }
        Some(b) => {
            out.push_str(&format!("{:<12} {:>12} {:>12} {:>12}\n", "metric", "base", "tuned", "Δ"));
            for ((k, bv), (_, tv)) in b.rows().into_iter().zip(tuned.rows()) {
                out.push_str(&format!("{k:<12} {bv:>12.4} {tv:>12.4} {:>+12.4}\n", tv - bv));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_match_normalizes_whitespace_and_optionally_case() {
        assert_eq!(accuracy(&["  Paris \n"], &["Paris"], false), 1.0);
        assert_eq!(accuracy(&["paris"], &["Paris"], false), 0.0);
        assert_eq!(accuracy(&["paris"], &["Paris"], true), 1.0);
        assert_eq!(accuracy(&["a  b", "c"], &["a b", "d"], false), 0.5);
    }

    #[test]
    fn metric_lists() {
        assert_eq!(Metric::parse_list("loss, bleu,bleu").unwrap(), [Metric::Loss, Metric::Bleu]);
        assert!(Metric::parse_list("loss,meteor").unwrap_err().to_string().contains("meteor"));
    }
}
