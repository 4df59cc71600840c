//! Loading validated datasets: one or several files, weighted mixing, seeded shuffle and a
//! train/test split that is identical across runs with the same seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_core::rng::Rng;

use super::budget::line_budget;
use super::example::{Example, Format, Reason, RowError, Validator};
use super::read::open;
use crate::{KilnError, Result};

/// One `--data` argument: `path` or `path:weight`.
#[derive(Clone, Debug, PartialEq)]
pub struct DataSpec {
    pub path: PathBuf,
    pub weight: f64,
}

impl DataSpec {
    /// Parses `file.jsonl` or `file.jsonl:0.7` (a suffix that is not a number is part of the path).
    pub fn parse(s: &str) -> Result<DataSpec> {
        if let Some((p, Ok(weight))) = s.rsplit_once(':').map(|(p, w)| (p, w.parse::<f64>())) {
            if !(weight.is_finite() && weight > 0.0) {
                return Err(KilnError::Msg(format!("--data {s}: the weight must be a positive number")));
            }
            return Ok(DataSpec { path: p.into(), weight });
        }
        Ok(DataSpec { path: s.into(), weight: 1.0 })
    }
}

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Force a format instead of detecting it per file.
    pub format: Option<Format>,
    /// Skip bad rows (counted by reason) instead of stopping at the first.
    pub skip_invalid: bool,
    /// Chat rows must end with an assistant turn.
    pub need_final_assistant: bool,
    /// A line (JSONL) or record (CSV) longer than this is refused before it is parsed
    /// ([`line_budget`] of the run's `--max-seq-len`).
    pub max_line_bytes: usize,
}

/// The `--max-seq-len` that budgets are derived from when a caller has none.
pub const DEFAULT_MAX_SEQ_LEN: usize = 2048;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            format: None,
            skip_invalid: false,
            need_final_assistant: true,
            max_line_bytes: line_budget(DEFAULT_MAX_SEQ_LEN),
        }
    }
}

/// What loading one file found.
#[derive(Clone, Debug)]
pub struct FileReport {
    pub path: PathBuf,
    pub format: Format,
    pub rows: usize,
    pub valid: usize,
    pub invalid: BTreeMap<Reason, usize>,
    /// The first few rejected rows, for showing the user.
    pub examples_of_errors: Vec<RowError>,
}

/// What loading all files found.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub files: Vec<FileReport>,
}

impl LoadReport {
    /// Invalid rows by reason over all files.
    pub fn invalid_by_reason(&self) -> BTreeMap<Reason, usize> {
        let mut m = BTreeMap::new();
        for f in &self.files {
            for (r, n) in &f.invalid {
                *m.entry(*r).or_insert(0) += n;
            }
        }
        m
    }
}

/// Validated examples, in order.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub examples: Vec<Example>,
}

/// Reads and validates one file.
pub fn load_file(path: &Path, opts: &LoadOptions) -> Result<(Vec<Example>, FileReport)> {
    let (_, rows) = open(path, opts.max_line_bytes)?;
    let v = Validator { file: path.to_path_buf(), need_final_assistant: opts.need_final_assistant };
    let mut format = opts.format;
    let mut out = Vec::new();
    let mut rep = FileReport {
        path: path.to_path_buf(),
        format: format.unwrap_or(Format::Text),
        rows: 0,
        valid: 0,
        invalid: BTreeMap::new(),
        examples_of_errors: Vec::new(),
    };
    for (line, row) in rows {
        rep.rows += 1;
        let res = row.and_then(|obj| {
            let f = match format {
                Some(f) => f,
                None => {
                    let Some(f) = Format::detect(&obj) else {
                        let keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
                        let known: Vec<String> =
                            Format::ALL.iter().map(|f| format!("{} ({})", f.name(), f.fields())).collect();
                        return Err(RowError {
                            file: path.to_path_buf(),
                            line,
                            field: "(row)".into(),
                            reason: Reason::UnknownFormat,
                            detail: format!(
                                "fields [{}] match no format; expected one of: {}",
                                keys.join(", "),
                                known.join("; ")
                            ),
                            fatal: false,
                        });
                    };
                    format = Some(f);
                    rep.format = f;
                    f
                }
            };
            v.example(line, &obj, f)
        });
        match res {
            Ok(e) => {
                rep.valid += 1;
                out.push(e);
            }
            Err(e) if opts.skip_invalid && !e.fatal => {
                *rep.invalid.entry(e.reason).or_insert(0) += 1;
                if rep.examples_of_errors.len() < 5 {
                    rep.examples_of_errors.push(e);
                }
            }
            Err(e) => return Err(KilnError::Data(e)),
        }
    }
    if let Some(f) = format {
        rep.format = f;
    }
    Ok((out, rep))
}

impl Dataset {
    /// Loads every spec; with several, mixes them by weight (see [`mix`]). Errors when no
    /// valid row remains.
    pub fn load(specs: &[DataSpec], opts: &LoadOptions, seed: u64) -> Result<(Dataset, LoadReport)> {
        if specs.is_empty() {
            return Err(KilnError::Msg("no data file given".into()));
        }
        let mut report = LoadReport::default();
        let mut parts = Vec::new();
        for s in specs {
            let (ex, rep) = load_file(&s.path, opts)?;
            if ex.is_empty() {
                let why =
                    if rep.rows == 0 { "no rows".to_string() } else { format!("all {} rows are invalid", rep.rows) };
                return Err(KilnError::Msg(format!("{}: empty dataset ({why})", s.path.display())));
            }
            parts.push((ex, s.weight));
            report.files.push(rep);
        }
        let examples = if parts.len() == 1 { parts.pop().map(|p| p.0).unwrap_or_default() } else { mix(parts, seed) };
        Ok((Dataset { examples }, report))
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Seeded shuffle then split: the first `ceil(n · test_fraction)` rows (at least one when
    /// `test_fraction > 0` and n ≥ 2) become the test set. Same seed, same split.
    pub fn split(mut self, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        shuffle(&mut self.examples, seed);
        let n = self.examples.len();
        let mut k = (n as f64 * test_fraction.clamp(0.0, 1.0)).ceil() as usize;
        if test_fraction > 0.0 && n >= 2 {
            k = k.clamp(1, n - 1);
        }
        let train = self.examples.split_off(k.min(n));
        (Dataset { examples: train }, self)
    }
}

/// Fisher–Yates with kiln's seeded generator.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed ^ 0x5eed_da7a);
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i + 1));
    }
}

/// Mixes sources so each contributes `weight / Σweight` of the total (the sum of their sizes):
/// a source with fewer rows than its share is repeated (whole passes, then a seeded sample),
/// a larger one is sampled without replacement. The result is shuffled.
pub fn mix(parts: Vec<(Vec<Example>, f64)>, seed: u64) -> Vec<Example> {
    let total: usize = parts.iter().map(|p| p.0.len()).sum();
    let wsum: f64 = parts.iter().map(|p| p.1).sum();
    let mut out = Vec::with_capacity(total);
    for (i, (mut ex, w)) in parts.into_iter().enumerate() {
        let want = ((w / wsum) * total as f64).round() as usize;
        shuffle(&mut ex, seed.wrapping_add(i as u64 + 1));
        for j in 0..want {
            out.push(ex[j % ex.len()].clone());
        }
    }
    shuffle(&mut out, seed);
    out
}

/// All text of an example (for length statistics and duplicate detection).
pub fn text_len(e: &Example) -> usize {
    match e {
        Example::Text(t) => t.chars().count(),
        Example::PromptCompletion { prompt, completion } => prompt.chars().count() + completion.chars().count(),
        Example::Chat(m) => m.iter().map(|m| m.content.chars().count()).sum(),
        Example::Preference { prompt, chosen, rejected } => {
            prompt.iter().chain(chosen).chain(rejected).map(|m| m.content.chars().count()).sum()
        }
    }
}

/// The advice `kiln data inspect` gives from the number of usable rows.
pub fn recommendation(rows: usize) -> &'static str {
    if rows >= 1000 {
        "≥ 1000 rows: enough to fine-tune a base model"
    } else if rows >= 300 {
        "300–1000 rows: a base or an instruct model are both viable"
    } else {
        "< 300 rows: start from an instruct model to keep its built-in abilities"
    }
}
