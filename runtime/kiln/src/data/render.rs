//! Examples to token ids and a loss mask, exactly as transformers/TRL would tokenize them.
//!
//! * Chat rows are rendered by the chat template and tokenized without adding special tokens
//!   (the template places BOS), as `apply_chat_template(tokenize=True)` does.
//! * By default only assistant tokens are trained on (TRL's assistant-only loss): the span of
//!   assistant turn `i` runs from the end of `render(turns[..i], add_generation_prompt=True)` to
//!   the end of `render(turns[..=i])` (so the end-of-turn token is learned too); a token is
//!   trained on when it starts inside a span. A template whose renders are not prefixes of each
//!   other cannot be masked this way and is reported.
//! * Prompt/completion rows become a user turn and an assistant turn under a template; without
//!   one they are `[BOS] prompt completion EOS` with only the completion (and EOS) trained.
//! * Text rows train on every token: `[BOS] text EOS`.
//! * `train_on_inputs` trains on every token of every row.

use super::budget::render_budget;
use super::example::{Example, Message, Role};
use super::template::ChatTemplate;
use super::tokenizer::TextTokenizer;
use crate::{KilnError, Result};

/// Token ids and which of them the loss sees.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokenized {
    pub ids: Vec<i32>,
    /// `true`: this token is a training target.
    pub mask: Vec<bool>,
}

/// Turns examples into tokens.
#[derive(Clone)]
pub struct Renderer {
    pub tokenizer: TextTokenizer,
    pub template: Option<ChatTemplate>,
    pub train_on_inputs: bool,
}

impl Renderer {
    /// The rendered text of a conversation and the byte spans of its assistant turns.
    pub fn render_chat(&self, turns: &[Message]) -> Result<(String, Vec<(usize, usize)>)> {
        let t = self.template.as_ref().ok_or_else(|| {
            KilnError::Msg(
                "chat rows need a chat template: the model has none; pass --template chatml|llama3|mistral|alpaca"
                    .into(),
            )
        })?;
        let (bos, eos) = (self.tokenizer.bos_text(), self.tokenizer.eos_text());
        let full = t.render(turns, false, bos, eos)?;
        let mut spans = Vec::new();
        for (i, m) in turns.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let prefix = t.render(&turns[..i], true, bos, eos)?;
            // The last turn's render is the full one: no need to render it twice.
            let upto = if i + 1 == turns.len() { full.clone() } else { t.render(&turns[..=i], false, bos, eos)? };
            if !upto.starts_with(&prefix) || !full.starts_with(&upto) {
                return Err(KilnError::Msg(format!(
                    "chat template ({}) renders a conversation that is not an extension of its prefix, so assistant tokens cannot be located; use --train-on-inputs",
                    t.origin
                )));
            }
            spans.push((prefix.len(), upto.len()));
        }
        Ok((full, spans))
    }

    /// Tokens of `text` with those starting inside `spans` (byte ranges) marked as targets,
    /// between `prefix` and `suffix` ids (suffix marked).
    pub(crate) fn masked(
        &self,
        text: &str,
        spans: &[(usize, usize)],
        prefix: &[i32],
        suffix: &[i32],
    ) -> Result<Tokenized> {
        let enc = self.tokenizer.encode(text)?;
        let mut ids: Vec<i32> = prefix.to_vec();
        let mut mask = vec![self.train_on_inputs; prefix.len()];
        for (&id, &(start, _)) in enc.ids.iter().zip(&enc.offsets) {
            ids.push(id as i32);
            // A token belongs to the span its first byte is in.
            let inside = spans.iter().any(|&(a, b)| start >= a && start < b);
            mask.push(self.train_on_inputs || inside);
        }
        ids.extend_from_slice(suffix);
        mask.extend(std::iter::repeat_n(true, suffix.len()));
        Ok(Tokenized { ids, mask })
    }

    /// Tokens and loss mask of one training example.
    pub fn tokenize(&self, e: &Example) -> Result<Tokenized> {
        self.tokenize_within(e, usize::MAX)
    }

    /// [`Renderer::tokenize`] for a context of `max_len` tokens: text past
    /// [`render_budget`]`(max_len)` bytes is cut (at a character boundary, keeping the start)
    /// before tokenizing, so a 50 MB row costs what a row at the budget does. Every token the
    /// later cut to `max_len` tokens keeps lies far inside the budget, so the result after that
    /// cut is unchanged.
    pub fn tokenize_within(&self, e: &Example, max_len: usize) -> Result<Tokenized> {
        let budget = render_budget(max_len);
        let cut = |t: &str| -> usize {
            if t.len() <= budget {
                return t.len();
            }
            let mut at = budget;
            while !t.is_char_boundary(at) {
                at -= 1;
            }
            at
        };
        let bos: Vec<i32> = match &self.tokenizer.bos {
            Some(b) if self.tokenizer.add_bos => vec![b.id as i32],
            _ => vec![],
        };
        let eos: Vec<i32> = self.tokenizer.eos.iter().map(|s| s.id as i32).collect();
        match e {
            Example::Text(t) => {
                let t = &t[..cut(t)];
                let mut out = self.masked(t, &[(0, t.len())], &bos, &eos)?;
                out.mask.iter_mut().for_each(|m| *m = true);
                Ok(out)
            }
            Example::PromptCompletion { prompt, completion } if self.template.is_some() => {
                let turns = [
                    Message { role: Role::User, content: prompt.clone() },
                    Message { role: Role::Assistant, content: completion.clone() },
                ];
                let (text, spans) = self.render_chat(&turns).map_err(|err| in_row(err, e))?;
                self.masked(&text[..cut(&text)], &spans, &[], &[])
            }
            Example::PromptCompletion { prompt, completion } => {
                let text = format!("{prompt}{completion}");
                let end = cut(&text);
                self.masked(&text[..end], &[(prompt.len(), end)], &bos, &eos)
            }
            Example::Chat(turns) => {
                let (text, spans) = self.render_chat(turns).map_err(|err| in_row(err, e))?;
                self.masked(&text[..cut(&text)], &spans, &[], &[])
            }
            Example::Preference { .. } => Err(KilnError::Msg(
                "preference rows (prompt/chosen/rejected) are for preference tuning (DPO), not supervised fine-tuning"
                    .into(),
            )),
        }
    }
}

/// A rendering error with the row it happened on (its start, as JSON: rows are shuffled and
/// split by then, so its line number is no longer known here).
fn in_row(err: KilnError, e: &Example) -> KilnError {
    let json = e.to_json().to_string();
    let mut end = json.len().min(120);
    while !json.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < json.len() { "…" } else { "" };
    KilnError::Msg(format!("{err} (rendering the row {}{more})", &json[..end]))
}
