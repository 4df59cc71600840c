//! From the configuration's data files to token sequences: load and validate (mixing weighted
//! files), hold out the evaluation split, render with the chat template, mask, truncate and pack.

use std::path::Path;

use rayon::prelude::*;

use crate::data::batch::{PackStats, Sequence, pack, truncate, unpacked};
use crate::data::budget::line_budget;
use crate::data::render::Renderer;
use crate::data::template::ChatTemplate;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{DataSpec, Dataset, Example, Format, LoadOptions, LoadReport};
use crate::{KilnError, Result};

use super::config::{Objective, TrainConfig};
use super::pref::{PairSeq, PairStats, tokenize_pair};

/// The data of a run, ready to batch.
pub struct Prepared {
    pub train: Vec<Sequence>,
    pub eval: Vec<Sequence>,
    /// The held-out rows as loaded (written to `OUT/eval.jsonl`).
    pub eval_examples: Vec<Example>,
    pub train_rows: usize,
    pub train_tokens: usize,
    /// Tokens the loss sees.
    pub train_targets: usize,
    pub stats: PackStats,
    pub report: LoadReport,
    pub pad: i32,
    /// The tokenizer and template the rows were rendered with (generation at evaluation).
    pub renderer: Renderer,
    /// Preference tuning: the training and held-out pairs (`train`/`eval` stay empty).
    pub pairs: Vec<PairSeq>,
    pub eval_pairs: Vec<PairSeq>,
    pub pair_stats: PairStats,
}

impl Prepared {
    /// Training units: sequences, or pairs for preference tuning.
    pub fn train_len(&self) -> usize {
        if self.pairs.is_empty() { self.train.len() } else { self.pairs.len() }
    }
    /// Tokens of the longest training unit (a batch row is never longer).
    pub fn longest(&self) -> usize {
        (0..self.train_len()).map(|i| self.unit_tokens(i)).max().unwrap_or(0)
    }
    /// Tokens of training unit `i` (for length bucketing).
    pub fn unit_tokens(&self, i: usize) -> usize {
        if self.pairs.is_empty() { self.train[i].len() } else { self.pairs[i].len() }
    }
}

/// Tokenizes and lays out preference rows in parallel.
fn pairs_of(r: &Renderer, rows: &[Example], max_len: usize) -> Result<(Vec<PairSeq>, PairStats)> {
    let laid: Vec<(Option<PairSeq>, PairStats)> = rows
        .par_iter()
        .map(|e| {
            let mut st = PairStats::default();
            tokenize_pair(r, e, max_len, &mut st).map(|p| (p, st))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut total = PairStats::default();
    let mut out = Vec::new();
    for (p, st) in laid {
        total.pairs += st.pairs;
        total.truncated += st.truncated;
        total.dropped += st.dropped;
        total.tokens += st.tokens;
        total.unshared_tokens += st.unshared_tokens;
        out.extend(p);
    }
    Ok((out, total))
}

/// The chat template: `--template` by name, else the tokenizer's own.
pub fn template_for(cfg: &TrainConfig, tok: &TextTokenizer) -> Result<Option<ChatTemplate>> {
    ChatTemplate::choose_for(cfg.template.as_deref(), tok.chat_template.as_deref(), cfg.model.as_deref())
}

fn load_opts(cfg: &TrainConfig, max_len: usize) -> Result<LoadOptions> {
    let format = match &cfg.format {
        None => None,
        Some(f) => Some(Format::parse(f).ok_or_else(|| {
            let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            KilnError::Msg(format!("format: {f}: unknown; one of {}", names.join(", ")))
        })?),
    };
    Ok(LoadOptions {
        format,
        skip_invalid: cfg.skip_invalid,
        need_final_assistant: true,
        max_line_bytes: line_budget(max_len),
    })
}

/// Loads, splits and tokenizes the configured data for a model with context `max_len`.
pub fn prepare(cfg: &TrainConfig, tokenizer: TextTokenizer, max_len: usize) -> Result<Prepared> {
    let opts = load_opts(cfg, max_len)?;
    let specs = cfg.data.iter().map(|s| DataSpec::parse(s)).collect::<Result<Vec<_>>>()?;
    let (ds, report) = Dataset::load(&specs, &opts, cfg.seed)?;
    let preference = cfg.objective != Objective::Sft;
    if let Some(i) = ds.examples.iter().position(|e| matches!(e, Example::Preference { .. }) != preference) {
        return Err(KilnError::Msg(if preference {
            format!(
                "data: --objective {} needs preference rows {{\"prompt\", \"chosen\", \"rejected\"}}; a training row is not one: {}",
                cfg.objective.name(),
                ds.examples[i].to_json().to_string().chars().take(120).collect::<String>()
            )
        } else {
            "data: preference rows (prompt/chosen/rejected) are for --objective dpo or orpo, not supervised training"
                .into()
        }));
    }
    let (train, eval) = match &cfg.eval_data {
        Some(p) => {
            let (e, _) = Dataset::load(&[DataSpec { path: p.clone(), weight: 1.0 }], &opts, cfg.seed)?;
            (ds, e)
        }
        None if cfg.eval_split > 0.0 => ds.split(cfg.eval_split, cfg.seed),
        None => (ds, Dataset { examples: Vec::new() }),
    };
    if train.is_empty() {
        return Err(KilnError::Msg("data: no training rows left after the evaluation split".into()));
    }
    let mut eval_examples = eval.examples;
    if cfg.eval_samples > 0 {
        eval_examples.truncate(cfg.eval_samples);
    }
    let template = template_for(cfg, &tokenizer)?;
    let pad = tokenizer.pad_id();
    let r = Renderer { tokenizer, template, train_on_inputs: cfg.train_on_inputs };
    if preference {
        let (pairs, pair_stats) = pairs_of(&r, &train.examples, max_len)?;
        let (eval_pairs, _) = pairs_of(&r, &eval_examples, max_len)?;
        let stats = PackStats {
            rows: pair_stats.pairs,
            truncated: pair_stats.truncated,
            dropped: pair_stats.dropped,
            sequences: pairs.len(),
            tokens: pair_stats.tokens,
        };
        return Ok(Prepared {
            train_rows: train.examples.len(),
            train: Vec::new(),
            eval: Vec::new(),
            eval_examples,
            train_tokens: pair_stats.tokens,
            train_targets: pairs.iter().map(|p| p.n_chosen + p.n_rejected).sum(),
            stats,
            report,
            pad,
            renderer: r,
            pairs,
            eval_pairs,
            pair_stats,
        });
    }
    // Rows render and tokenize independently: spread them over the cores.
    // Rendered text past the byte budget of `max_len` is cut before tokenizing (see
    // `render_budget`), so one huge row costs no more than a row at the budget.
    let tok = |rows: &[Example]| rows.par_iter().map(|e| r.tokenize_within(e, max_len)).collect::<Result<Vec<_>>>();
    let mut stats = PackStats::default();
    let train_tok = truncate(tok(&train.examples)?, max_len, &mut stats);
    let eval_tok = truncate(tok(&eval_examples)?, max_len, &mut PackStats::default());
    let train_tokens = train_tok.iter().map(|t| t.ids.len()).sum();
    let train_targets = train_tok.iter().map(|t| t.mask.iter().filter(|&&m| m).count()).sum();
    let (train_seqs, eval_seqs) = if cfg.packing {
        (pack(&train_tok, max_len, &mut stats), pack(&eval_tok, max_len, &mut PackStats::default()))
    } else {
        (unpacked(&train_tok, &mut stats), unpacked(&eval_tok, &mut PackStats::default()))
    };
    Ok(Prepared {
        train_rows: train.examples.len(),
        train: train_seqs,
        eval: eval_seqs,
        eval_examples,
        train_tokens,
        train_targets,
        stats,
        report,
        pad,
        renderer: r,
        pairs: Vec::new(),
        eval_pairs: Vec::new(),
        pair_stats: PairStats::default(),
    })
}

/// Writes the held-out rows as JSON lines, so `kiln eval` can score exactly that split.
pub fn write_eval_rows(path: &Path, rows: &[Example]) -> Result<()> {
    let mut s = String::new();
    for e in rows {
        s.push_str(&e.to_json().to_string());
        s.push('\n');
    }
    crate::formats::write_atomic(path, s.as_bytes())
}

/// QLoRA: quantizes the frozen linear weights to `quantize`, or to NF4 when the base is not
/// already block-quantized (a GGUF keeps its own blocks); records the type in `cfg`. Returns
/// a log line when it quantized.
pub fn quantize_base(cfg: &mut TrainConfig, model: &mut crate::model::Llama) -> Result<Option<String>> {
    use kiln_core::DType;
    use kiln_core::quant::GgmlType;
    if cfg.method != super::config::Method::Qlora {
        return Ok(None);
    }
    let stored = model.blocks.first().map(|b| b.linears[0].w.value().dtype());
    let ty = match (cfg.quant_type()?, stored) {
        (Some(t), _) => t,
        (None, Some(DType::Quant(_))) => return Ok(None),
        (None, _) => GgmlType::NF4,
    };
    let bytes = model.quantize_linears(ty)?;
    cfg.quantize = Some(ty.name().to_lowercase());
    Ok(Some(format!("qlora: linear weights quantized to {} ({:.1} MiB)", ty.name(), bytes as f64 / 1048576.0)))
}

/// Readies the loaded model and tokenizer for the configured method: QLoRA quantizes the frozen
/// linear weights (to `quantize`, or NF4 when the base is not already block-quantized), and
/// `add_special_tokens` grows the tokenizer and the embedding (turning on `train_embeddings`
/// for LoRA/QLoRA so the new rows learn). Returns what it did, for the log.
pub fn prepare_model(
    cfg: &mut TrainConfig,
    model: &mut crate::model::Llama,
    tok: &mut TextTokenizer,
) -> Result<Vec<String>> {
    let (mut log, vocab) = prepare_tokenizer(cfg, tok, model.config.vocab_size)?;
    log.extend(prepare_weights(cfg, model, vocab)?);
    Ok(log)
}

/// The tokenizer half of [`prepare_model`], before any weight is loaded: adds
/// `add_special_tokens` and returns the log and the vocabulary size the model needs (turning
/// on `train_embeddings` for LoRA/QLoRA when it grows, so the plan counts those parameters).
pub fn prepare_tokenizer(cfg: &mut TrainConfig, tok: &mut TextTokenizer, vocab: usize) -> Result<(Vec<String>, usize)> {
    use super::config::Method;
    let mut log = Vec::new();
    if cfg.add_special_tokens.is_empty() {
        return Ok((log, vocab));
    }
    let ids = tok.add_special_tokens(&cfg.add_special_tokens)?;
    let need = ids.iter().map(|&i| i as usize + 1).max().unwrap_or(0);
    if need > vocab {
        if matches!(cfg.method, Method::Lora | Method::Qlora) && !cfg.train_embeddings {
            cfg.train_embeddings = true;
            log.push("add_special_tokens: the vocabulary grew, so train_embeddings is on".into());
        }
        log.push(format!(
            "add_special_tokens: vocabulary {vocab} → {need} ({:?} → ids {ids:?})",
            cfg.add_special_tokens
        ));
        Ok((log, need))
    } else {
        log.push(format!(
            "add_special_tokens: {:?} → ids {ids:?} (within the existing vocabulary)",
            cfg.add_special_tokens
        ));
        Ok((log, vocab))
    }
}

/// The weights half of [`prepare_model`]: quantizes for QLoRA and grows the embedding to
/// `vocab` rows.
pub fn prepare_weights(cfg: &mut TrainConfig, model: &mut crate::model::Llama, vocab: usize) -> Result<Vec<String>> {
    let log: Vec<String> = quantize_base(cfg, model)?.into_iter().collect();
    if vocab > model.config.vocab_size {
        model.resize_vocab(vocab)?;
    }
    Ok(log)
}
