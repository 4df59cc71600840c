//! `kiln data inspect`: what a dataset holds and what is wrong with it.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use kiln::data::{Format, InspectConfig};

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

pub fn run(cmd: DataCmd) -> Result<()> {
    let DataCmd::Inspect(a) = cmd;
    let format = match &a.format {
        None => None,
        Some(f) => Some(Format::parse(f).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            anyhow::anyhow!("--format {f}: unknown; one of {}", names.join(", "))
        })?),
    };
    let cfg = InspectConfig {
        file: a.file,
        format,
        model: a.model.as_deref().map(|m| kiln::model::resolve(Some(m))).transpose()?,
        template: a.template,
        max_seq_len: a.max_seq_len,
        train_on_inputs: a.train_on_inputs,
    };
    let found = kiln::data::inspect(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&found.to_json())?);
    } else {
        print!("{found}");
    }
    Ok(())
}
