//! `kiln data inspect`'s library half: what a dataset file holds and what is wrong with it —
//! its format, valid and invalid rows by reason, duplicates, the length distribution in
//! characters and, under a tokenizer and chat template, in tokens.

use std::collections::HashSet;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::budget::line_budget;
use super::dataset::{FileReport, LoadOptions, load_file, recommendation, text_len};
use super::render::Renderer;
use super::template::ChatTemplate;
use super::tokenizer::TextTokenizer;
use super::{Example, Format};
use crate::{KilnError, Result};

/// What to inspect.
#[derive(Clone, Debug)]
pub struct InspectConfig {
    /// A JSONL, JSON-array or CSV file.
    pub file: PathBuf,
    /// Forces the format instead of detecting it.
    pub format: Option<Format>,
    /// A model (or tokenizer) folder: adds token statistics under its tokenizer and template.
    pub model: Option<PathBuf>,
    /// A built-in chat template for a model without one.
    pub template: Option<String>,
    /// Rows over this many tokens are counted; also sets the row byte budget.
    pub max_seq_len: usize,
    /// Prompt tokens count as trained too.
    pub train_on_inputs: bool,
}

/// A length distribution: extremes, mean, percentiles and ten equal-width buckets up to the
/// longest.
#[derive(Clone, Debug, Default)]
pub struct Lengths {
    pub min: usize,
    pub mean: f64,
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
    pub total: usize,
    /// The buckets' width and counts: bucket `i` holds lengths in `[i·width, (i+1)·width)`.
    pub width: usize,
    pub histogram: [usize; 10],
}

impl Lengths {
    pub fn of(mut lens: Vec<usize>) -> Lengths {
        lens.sort_unstable();
        let pct = |p: f64| lens.get(((lens.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
        let total: usize = lens.iter().sum();
        let max = lens.last().copied().unwrap_or(0);
        let width = (max / 10 + 1).max(1);
        let mut histogram = [0usize; 10];
        for &l in &lens {
            histogram[(l / width).min(9)] += 1;
        }
        Lengths {
            min: lens.first().copied().unwrap_or(0),
            mean: if lens.is_empty() { 0.0 } else { total as f64 / lens.len() as f64 },
            p50: pct(0.5),
            p90: pct(0.9),
            p99: pct(0.99),
            max,
            total,
            width,
            histogram,
        }
    }

    fn histogram_json(&self) -> Vec<Value> {
        let w = self.width;
        self.histogram.iter().enumerate().map(|(i, c)| json!({"lo": i * w, "hi": (i + 1) * w, "count": c})).collect()
    }
}

/// Token statistics of the valid rows.
#[derive(Clone, Debug)]
pub struct TokenStats {
    /// The tokenizer's folder and the template's origin.
    pub tokenizer: PathBuf,
    pub template: Option<String>,
    pub lengths: Lengths,
    pub trained: usize,
    pub over_max_seq_len: usize,
    pub max_seq_len: usize,
}

/// What [`inspect`] found; `Display` is the text `kiln data inspect` prints, [`Inspection::to_json`]
/// its JSON.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub path: PathBuf,
    pub report: FileReport,
    pub duplicates: usize,
    pub chars: Lengths,
    pub tokens: Option<TokenStats>,
}

/// Inspects `cfg.file`. Every bad row is counted (not only the first).
pub fn inspect(cfg: &InspectConfig) -> Result<Inspection> {
    let opts = LoadOptions {
        format: cfg.format,
        skip_invalid: true,
        need_final_assistant: true,
        max_line_bytes: line_budget(cfg.max_seq_len),
    };
    let (examples, report) = load_file(&cfg.file, &opts)?;
    let mut seen = HashSet::new();
    let duplicates = examples
        .iter()
        .filter(|e| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            e.hash(&mut h);
            !seen.insert(h.finish())
        })
        .count();
    let chars = Lengths::of(examples.iter().map(text_len).collect());
    let tokens = match &cfg.model {
        Some(dir) => Some(token_stats(cfg, &examples, dir).map_err(|e| {
            KilnError::Msg(format!("{}: token statistics under {}: {e}", cfg.file.display(), dir.display()))
        })?),
        None => None,
    };
    Ok(Inspection { path: cfg.file.clone(), report, duplicates, chars, tokens })
}

/// Token statistics of the valid rows under the model's tokenizer and template.
fn token_stats(cfg: &InspectConfig, examples: &[Example], dir: &Path) -> Result<TokenStats> {
    let tokenizer = TextTokenizer::load(dir)?;
    let template = ChatTemplate::choose_for(cfg.template.as_deref(), tokenizer.chat_template.as_deref(), Some(dir))?;
    let r = Renderer { tokenizer, template, train_on_inputs: cfg.train_on_inputs };
    let mut lens = Vec::with_capacity(examples.len());
    let mut trained = 0usize;
    for e in examples {
        // Counted up to the byte budget of --max-seq-len: a row past it is over either way.
        let t = r.tokenize_within(e, cfg.max_seq_len)?;
        trained += t.mask.iter().filter(|&&m| m).count();
        lens.push(t.ids.len());
    }
    let over_max_seq_len = lens.iter().filter(|&&l| l > cfg.max_seq_len).count();
    Ok(TokenStats {
        tokenizer: dir.to_path_buf(),
        template: r.template.as_ref().map(|t| t.origin.clone()),
        lengths: Lengths::of(lens),
        trained,
        over_max_seq_len,
        max_seq_len: cfg.max_seq_len,
    })
}

impl Inspection {
    /// {"path", "format", "rows", "valid", "invalid": {reason: n}, "invalid_examples", "duplicates",
    /// "chars": {"min", "mean", "p50", "p90", "max"}, "histogram", "recommendation"}, and
    /// "tokens" with a model.
    pub fn to_json(&self) -> Value {
        let (rep, c) = (&self.report, &self.chars);
        let mut v = json!({
            "path": self.path.display().to_string(),
            "format": rep.format.name(),
            "rows": rep.rows,
            "valid": rep.valid,
            "invalid": rep.invalid.iter().map(|(r, n)| (r.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "invalid_examples": rep.examples_of_errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            "duplicates": self.duplicates,
            "chars": {"min": c.min, "mean": c.mean, "p50": c.p50, "p90": c.p90, "max": c.max},
            "histogram": c.histogram_json(),
            "recommendation": recommendation(rep.valid),
        });
        if let Some(t) = &self.tokens {
            let l = &t.lengths;
            v["tokens"] = json!({
                "tokenizer": t.tokenizer.display().to_string(),
                "template": t.template,
                "total": l.total, "trained": t.trained,
                "min": l.min, "mean": l.mean,
                "p50": l.p50, "p90": l.p90, "p99": l.p99, "max": l.max,
                "over_max_seq_len": t.over_max_seq_len,
                "max_seq_len": t.max_seq_len,
                "histogram": l.histogram_json(),
            });
        }
        v
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rep, c) = (&self.report, &self.chars);
        writeln!(f, "{}: format {}, {} rows, {} valid", self.path.display(), rep.format.name(), rep.rows, rep.valid)?;
        for (r, n) in &rep.invalid {
            writeln!(f, "  invalid: {n} × {}", r.name())?;
        }
        for e in &rep.examples_of_errors {
            writeln!(f, "    {e}")?;
        }
        writeln!(f, "  duplicates: {}", self.duplicates)?;
        writeln!(
            f,
            "  characters per row: min {} / mean {:.0} / p50 {} / p90 {} / max {}",
            c.min, c.mean, c.p50, c.p90, c.max
        )?;
        let top = c.histogram.iter().copied().max().unwrap_or(1).max(1);
        for (i, n) in c.histogram.iter().enumerate() {
            writeln!(f, "  {:>7}–{:<7} {:>6} {}", i * c.width, (i + 1) * c.width, n, "#".repeat(n * 40 / top))?;
        }
        if let Some(t) = &self.tokens {
            let l = &t.lengths;
            writeln!(
                f,
                "  tokens per row ({}, template {}): min {} / mean {:.0} / p50 {} / p90 {} / p99 {} / max {}; {} of {} tokens trained; {} rows over --max-seq-len {}",
                t.tokenizer.display(),
                t.template.as_deref().unwrap_or("none"),
                l.min,
                l.mean,
                l.p50,
                l.p90,
                l.p99,
                l.max,
                t.trained,
                l.total,
                t.over_max_seq_len,
                t.max_seq_len
            )?;
        }
        writeln!(f, "  advice: {}", recommendation(rep.valid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_have_nearest_rank_percentiles_and_ten_buckets_up_to_the_longest() {
        let l = Lengths::of((1..=100).rev().collect());
        assert_eq!((l.min, l.max, l.total), (1, 100, 5050));
        assert_eq!((l.p50, l.p90, l.p99), (51, 90, 99));
        assert_eq!(l.width, 11);
        assert_eq!(l.histogram.iter().sum::<usize>(), 100);
        assert_eq!(l.histogram[0], 10, "1..=10 below 11");
        let empty = Lengths::of(Vec::new());
        assert_eq!((empty.max, empty.mean, empty.histogram.iter().sum::<usize>()), (0, 0.0, 0));
    }
}
