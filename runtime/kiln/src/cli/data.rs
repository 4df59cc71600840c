//! `kiln data inspect`: what a dataset holds and what is wrong with it.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use anyhow::{Context, Result};
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
    /// "histogram": [{"lo", "hi", "count"}], "recommendation"}; with --model also "tokens":
    /// {"tokenizer", "template", "total", "trained", "min", "mean", "p50", "p90", "p99", "max",
    /// "over_max_seq_len", "max_seq_len", "histogram"}.
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
    /// A model (or tokenizer) directory: adds token-length statistics, using the model's chat
    /// template (or --template).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Built-in chat template when the model has none: chatml, llama3, mistral, alpaca.
    #[arg(long)]
    template: Option<String>,
    /// Rows longer than this many tokens are counted as truncated (with --model). Also sets the
    /// row byte budget: a line over 512 bytes per token (at least 1 MiB) is reported as too long.
    #[arg(long, default_value_t = 2048)]
    max_seq_len: usize,
    /// Train on prompt tokens too (affects the trained-token count).
    #[arg(long)]
    train_on_inputs: bool,
}

/// Token statistics of the valid rows under the model's tokenizer and template.
fn token_stats(a: &InspectArgs, examples: &[kiln::data::Example], dir: &std::path::Path) -> Result<serde_json::Value> {
    use kiln::data::render::Renderer;
    use kiln::data::template::ChatTemplate;
    use kiln::data::tokenizer::TextTokenizer;
    let tokenizer = TextTokenizer::load(dir)?;
    let template = ChatTemplate::choose_for(a.template.as_deref(), tokenizer.chat_template.as_deref(), Some(dir))?;
    let r = Renderer { tokenizer, template, train_on_inputs: a.train_on_inputs };
    let mut lens = Vec::with_capacity(examples.len());
    let mut trained = 0usize;
    for e in examples {
        // Counted up to the byte budget of --max-seq-len: a row past it is over either way.
        let t = r.tokenize_within(e, a.max_seq_len)?;
        trained += t.mask.iter().filter(|&&m| m).count();
        lens.push(t.ids.len());
    }
    lens.sort_unstable();
    let pct = |p: f64| lens.get(((lens.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    let total: usize = lens.iter().sum();
    let max = lens.last().copied().unwrap_or(0);
    let width = (max / 10 + 1).max(1);
    let mut hist = [0usize; 10];
    for &l in &lens {
        hist[(l / width).min(9)] += 1;
    }
    Ok(json!({
        "tokenizer": dir.display().to_string(),
        "template": r.template.as_ref().map(|t| t.origin.clone()),
        "total": total, "trained": trained,
        "min": lens.first().copied().unwrap_or(0), "mean": total as f64 / lens.len().max(1) as f64,
        "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": max,
        "over_max_seq_len": lens.iter().filter(|&&l| l > a.max_seq_len).count(),
        "max_seq_len": a.max_seq_len,
        "histogram": hist.iter().enumerate().map(|(i, c)| json!({"lo": i * width, "hi": (i + 1) * width, "count": c})).collect::<Vec<_>>(),
    }))
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
    let opts = LoadOptions {
        format,
        skip_invalid: true,
        need_final_assistant: true,
        max_line_bytes: kiln::data::budget::line_budget(a.max_seq_len),
    };
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
    let mut v = v;
    if let Some(dir) = &a.model {
        v["tokens"] = token_stats(&a, &examples, dir)
            .with_context(|| format!("{}: token statistics under {}", a.file.display(), dir.display()))?;
    }
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
    if let Some(t) = v.get("tokens") {
        println!(
            "  tokens per row ({}, template {}): min {} / mean {:.0} / p50 {} / p90 {} / p99 {} / max {}; {} of {} tokens trained; {} rows over --max-seq-len {}",
            t["tokenizer"].as_str().unwrap_or(""),
            t["template"].as_str().unwrap_or("none"),
            t["min"],
            t["mean"].as_f64().unwrap_or(0.0),
            t["p50"],
            t["p90"],
            t["p99"],
            t["max"],
            t["trained"],
            t["total"],
            t["over_max_seq_len"],
            t["max_seq_len"]
        );
    }
    println!("  advice: {}", recommendation(rep.valid));
    Ok(())
}
