//! Running an evaluation: loss and perplexity under the same masking as training (completion /
//! assistant tokens; every token of `{"text"}` rows), and greedy (or sampled) generation for
//! each row's prompt scored against its reference — the completion, or the final assistant
//! turn of a conversation.

use serde_json::{Value, json};

use super::{Metric, Scores, TextOptions};
use crate::adapters::LoraSet;
use crate::data::batch::{PackStats, Sequence, to_batch, truncate, unpacked};
use crate::data::render::Renderer;
use crate::data::tokenizer::TextTokenizer;
use crate::data::{Example, Message, Role, template::ChatTemplate};
use crate::infer::{Cache, GenOptions, chat_prompt, generate_text, raw_prompt};
use crate::model::{Inputs, Llama};
use crate::{KilnError, Result};
use kiln_core::Tape;

/// A row to generate for: the prompt and the text the model should produce.
#[derive(Clone, Debug)]
pub struct GenRow {
    /// Chat turns up to the answer (chat rows, or prompt/completion under a template) …
    pub turns: Vec<Message>,
    /// … or raw text to continue (prompt/completion without a template).
    pub raw: Option<String>,
    pub reference: String,
}

/// The generation rows of `examples`: prompt/completion and chat rows ending with an
/// assistant turn. Text rows have no prompt to answer and are scored by loss only.
pub fn gen_rows(examples: &[Example], templated: bool) -> Vec<GenRow> {
    examples
        .iter()
        .filter_map(|e| match e {
            Example::PromptCompletion { prompt, completion } if templated => Some(GenRow {
                turns: vec![Message { role: Role::User, content: prompt.clone() }],
                raw: None,
                reference: completion.clone(),
            }),
            Example::PromptCompletion { prompt, completion } => {
                Some(GenRow { turns: vec![], raw: Some(prompt.clone()), reference: completion.clone() })
            }
            Example::Chat(turns) => match turns.split_last() {
                Some((last, before)) if last.role == Role::Assistant => {
                    Some(GenRow { turns: before.to_vec(), raw: None, reference: last.content.clone() })
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Token-weighted mean loss of `examples` under training's masking, `batch` rows at a time
/// (rows truncated to `max_len`). `None` when no token is scored.
pub fn mean_loss(
    model: &Llama,
    lora: Option<&LoraSet>,
    r: &Renderer,
    examples: &[Example],
    max_len: usize,
    batch: usize,
    tick: &mut dyn FnMut(usize),
) -> Result<Option<f64>> {
    let toks = examples.iter().map(|e| r.tokenize_within(e, max_len)).collect::<Result<Vec<_>>>()?;
    let seqs = unpacked(&truncate(toks, max_len, &mut PackStats::default()), &mut PackStats::default());
    sequences_loss(model, lora, &seqs, r.tokenizer.pad_id(), batch, tick)
}

/// Token-weighted mean loss of ready sequences (also the trainer's held-out loss).
pub fn sequences_loss(
    model: &Llama,
    lora: Option<&LoraSet>,
    seqs: &[Sequence],
    pad: i32,
    batch: usize,
    tick: &mut dyn FnMut(usize),
) -> Result<Option<f64>> {
    let (mut sum, mut n) = (0.0, 0usize);
    for chunk in seqs.chunks(batch.max(1)) {
        let b = to_batch(chunk, pad)?;
        if b.n_targets > 0 {
            let tape = Tape::no_grad();
            let inp = Inputs { ids: &b.ids, pos: &b.pos, seg: Some(&b.seg), shared_prefix: false, base_only: false };
            let ce = model.loss(&tape, &inp, &b.targets, lora, false)?;
            sum += ce.loss.value().item()? * ce.n_valid as f64;
            n += ce.n_valid;
        }
        tick(chunk.len());
    }
    Ok((n > 0).then(|| sum / n as f64))
}

/// One generated answer.
#[derive(Clone, Debug)]
pub struct Prediction {
    pub prompt: String,
    pub reference: String,
    pub prediction: String,
    pub new_tokens: usize,
    pub stop: &'static str,
}

impl Prediction {
    pub fn to_json(&self) -> Value {
        json!({"prompt": self.prompt, "reference": self.reference, "prediction": self.prediction,
            "new_tokens": self.new_tokens, "stop": self.stop})
    }
}

/// Generates an answer for every row. Answers are trimmed (as exact match compares them).
#[allow(clippy::too_many_arguments)]
pub fn predict(
    model: &Llama,
    lora: Option<&LoraSet>,
    tok: &TextTokenizer,
    template: Option<&ChatTemplate>,
    rows: &[GenRow],
    opts: &GenOptions,
    stop: &[String],
    tick: &mut dyn FnMut(usize),
) -> Result<Vec<Prediction>> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let (ids, shown) = match (&row.raw, template) {
            (Some(raw), _) => (raw_prompt(tok, raw)?, raw.clone()),
            (None, Some(t)) => {
                (chat_prompt(tok, t, &row.turns)?, row.turns.last().map(|m| m.content.clone()).unwrap_or_default())
            }
            (None, None) => {
                return Err(KilnError::Msg(
                    "chat rows need a chat template: the model has none; pass --template chatml|llama3|mistral|alpaca"
                        .into(),
                ));
            }
        };
        let g = generate_text(model, &mut Cache::new(model), tok, &ids, opts, stop, lora, &mut |_| {})
            .map_err(|e| KilnError::Msg(format!("row {} (of those with a reference answer): {e}", i + 1)))?;
        out.push(Prediction {
            prompt: shown,
            reference: row.reference.clone(),
            prediction: g.text.trim().to_string(),
            new_tokens: g.generated.tokens.len(),
            stop: g.generated.stop.name(),
        });
        tick(1);
    }
    Ok(out)
}

/// The text metrics of generated answers against their references; a pair past ROUGE-L's cap
/// ([`super::rouge::MAX_LCS_CELLS`]) is refused with its number.
pub fn score_checked(preds: &[Prediction], metrics: &[Metric], o: TextOptions) -> Result<Scores> {
    let p: Vec<&str> = preds.iter().map(|p| p.prediction.as_str()).collect();
    let refs: Vec<&str> = preds.iter().map(|p| p.reference.as_str()).collect();
    Scores::of_texts(&p, &refs, metrics, o)
}

/// [`score_checked`] for a training run's periodic evaluation, which should not stop the run:
/// when a pair is past ROUGE-L's cap, ROUGE is left out (`rouge: None`) and the other metrics
/// are kept.
pub fn score(preds: &[Prediction], metrics: &[Metric], o: TextOptions) -> Scores {
    score_checked(preds, metrics, o).unwrap_or_else(|_| {
        let without: Vec<Metric> = metrics.iter().copied().filter(|m| *m != Metric::Rouge).collect();
        // Without ROUGE nothing is refused.
        score_checked(preds, &without, o).unwrap_or_default()
    })
}

/// What to evaluate and how.
#[derive(Clone, Debug)]
pub struct EvalSpec {
    pub metrics: Vec<Metric>,
    pub text: TextOptions,
    pub sampling: GenOptions,
    pub stop: Vec<String>,
    pub max_len: usize,
    pub batch: usize,
}

/// Loss/perplexity and generation metrics of one system (`lora` on the model, or the base).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Llama,
    lora: Option<&LoraSet>,
    r: &Renderer,
    examples: &[Example],
    rows: &[GenRow],
    spec: &EvalSpec,
    tick: &mut dyn FnMut(usize),
) -> Result<(Scores, Vec<Prediction>)> {
    let mut s = Scores { n: examples.len(), ..Default::default() };
    if spec.metrics.iter().any(|m| matches!(m, Metric::Loss | Metric::Ppl)) {
        let l = mean_loss(model, lora, r, examples, spec.max_len, spec.batch, tick)?
            .ok_or_else(|| KilnError::Msg("eval: no row has a token to score".into()))?;
        if spec.metrics.contains(&Metric::Loss) {
            s.loss = Some(l);
        }
        if spec.metrics.contains(&Metric::Ppl) {
            s.ppl = Some(l.exp());
        }
    }
    let mut preds = Vec::new();
    if spec.metrics.iter().any(|m| m.needs_generation()) {
        if rows.is_empty() {
            return Err(KilnError::Msg(
                "eval: accuracy/bleu/rouge need rows with a prompt and a reference answer (prompt/completion or chat ending with an assistant turn)"
                    .into(),
            ));
        }
        preds = predict(model, lora, &r.tokenizer, r.template.as_ref(), rows, &spec.sampling, &spec.stop, tick)?;
        let t = score_checked(&preds, &spec.metrics, spec.text)?;
        (s.accuracy, s.bleu, s.rouge) = (t.accuracy, t.bleu, t.rouge);
    }
    Ok((s, preds))
}
