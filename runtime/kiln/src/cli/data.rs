//! `kiln data inspect`: what a dataset holds and what is wrong with it.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use kiln::data::dataset::{load_file, recommendation, text_len};
use kiln::data::{Format, LoadOptions};
use serde_json::json;

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Format detected, rows, invalid rows by reason (with examples), length statistics and
    /// histogram (characters), duplicate rows, and advice from the row count.
    ///
    /// JSON (--json): {"path", "format", "rows", "valid", "invalid": {reason: n},
    /// "invalid_examples": [text], "duplicates", "chars": {"min", "mean", "p50", "p90", "max"},
    /// "histogram": [{"lo", "hi", "count"}], "recommendation"}.
    Inspect(InspectArgs),
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A JSONL, JSON-array or CSV file.
    file: PathBuf,
    /// Force the format: prompt-completion, messages, sharegpt, alpaca, text, preference.
    #[arg(long)]
    format: Option<String>,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: DataCmd) -> Result<()> {
    let DataCmd::Inspect(a) = cmd;
    let format = match &a.format {
        None => None,
        Some(f) => Some(Format::parse(f).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            anyhow::anyhow!("--format {f}: unknown; one of {}", names.join(", "))
        })?),
    };
    // Inspection reports every bad row instead of stopping at the first.
    let opts = LoadOptions { format, skip_invalid: true, need_final_assistant: true };
    let (examples, rep) = load_file(&a.file, &opts)?;
    let mut seen = HashSet::new();
    let duplicates = examples
        .iter()
        .filter(|e| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            e.hash(&mut h);
            !seen.insert(h.finish())
        })
        .count();
    let mut lens: Vec<usize> = examples.iter().map(text_len).collect();
    lens.sort_unstable();
    let pct = |p: f64| lens.get(((lens.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    let mean = if lens.is_empty() { 0.0 } else { lens.iter().sum::<usize>() as f64 / lens.len() as f64 };
    let max = lens.last().copied().unwrap_or(0);
    // Ten equal-width buckets up to the longest row.
    let width = (max / 10 + 1).max(1);
    let mut hist = [0usize; 10];
    for &l in &lens {
        hist[(l / width).min(9)] += 1;
    }
    let v = json!({
        "path": a.file.display().to_string(),
        "format": rep.format.name(),
        "rows": rep.rows,
        "valid": rep.valid,
        "invalid": rep.invalid.iter().map(|(r, n)| (r.name().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "invalid_examples": rep.examples_of_errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        "duplicates": duplicates,
        "chars": {"min": lens.first().copied().unwrap_or(0), "mean": mean, "p50": pct(0.5), "p90": pct(0.9), "max": max},
        "histogram": hist.iter().enumerate().map(|(i, c)| json!({"lo": i * width, "hi": (i + 1) * width, "count": c})).collect::<Vec<_>>(),
        "recommendation": recommendation(rep.valid),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}: format {}, {} rows, {} valid", a.file.display(), rep.format.name(), rep.rows, rep.valid);
    for (r, n) in &rep.invalid {
        println!("  invalid: {n} × {}", r.name());
    }
    for e in &rep.examples_of_errors {
        println!("    {e}");
    }
    println!("  duplicates: {duplicates}");
    println!(
        "  characters per row: min {} / mean {mean:.0} / p50 {} / p90 {} / max {max}",
        v["chars"]["min"],
        pct(0.5),
        pct(0.9)
    );
    let top = hist.iter().copied().max().unwrap_or(1).max(1);
    for (i, c) in hist.iter().enumerate() {
        println!("  {:>7}–{:<7} {:>6} {}", i * width, (i + 1) * width, c, "#".repeat(c * 40 / top));
    }
    println!("  advice: {}", recommendation(rep.valid));
    Ok(())
}
