//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, with BOS/EOS/PAD and
//! the chat template from `tokenizer_config.json` (or `chat_template.jinja`, which newer
//! transformers writes beside it and which wins when both exist).

use std::path::{Path, PathBuf};

use serde_json::Value;

use std::sync::Arc;

// `Encoded` is defined beside the fast encoder that fills it, so the dependency runs one way:
// tokenizer → fastbpe.
pub use super::fastbpe::Encoded;
use super::fastbpe::FastByteLevel;

use crate::{KilnError, Result};

/// A special token: its text and id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Special {
    pub text: String,
    pub id: u32,
}

/// A tokenizer with the settings fine-tuning needs.
#[derive(Clone)]
pub struct TextTokenizer {
    tok: tokenizers::Tokenizer,
    pub bos: Option<Special>,
    pub eos: Option<Special>,
    pub pad: Option<Special>,
    /// Whether plain text (not rendered by a chat template) starts with BOS.
    pub add_bos: bool,
    pub chat_template: Option<String>,
    pub dir: PathBuf,
    /// Same ids and offsets as `tok`, faster, for byte-level BPE tokenizers (`None` otherwise).
    fast: Option<Arc<FastByteLevel>>,
}

fn token_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Adds `tokens` as special tokens (never split, rendered as themselves); returns the ids of
    /// all of them, new or already present.
    pub fn add_special_tokens(&mut self, tokens: &[String]) -> Result<Vec<u32>> {
        let added: Vec<tokenizers::AddedToken> =
            tokens.iter().map(|t| tokenizers::AddedToken::from(t.clone(), true)).collect();
        self.tok.add_special_tokens(&added);
        self.fast = FastByteLevel::new(&self.tok).map(Arc::new);
        tokens
            .iter()
            .map(|t| {
                self.tok
                    .token_to_id(t)
                    .ok_or_else(|| KilnError::Msg(format!("add_special_tokens: `{t}` was not added to the tokenizer")))
            })
            .collect()
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (special tokens, BOS setting, chat
    /// template) into `dir`, as transformers' `AutoTokenizer` reads them.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        let json = self.tok.to_string(false).map_err(|e| KilnError::Msg(format!("serializing the tokenizer: {e}")))?;
        crate::formats::write_atomic(&dir.join("tokenizer.json"), json.as_bytes())?;
        let text = |s: &Option<Special>| s.as_ref().map(|s| s.text.clone());
        let mut cfg = serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": text(&self.bos),
            "eos_token": text(&self.eos), "pad_token": text(&self.pad), "add_bos_token": self.add_bos,
            "model_max_length": 1_000_000_000_000u64});
        if let Some(t) = &self.chat_template {
            cfg["chat_template"] = t.clone().into();
        }
        let s = serde_json::to_string_pretty(&cfg).map_err(|e| KilnError::Msg(e.to_string()))?;
        crate::formats::write_atomic(&dir.join("tokenizer_config.json"), s.as_bytes())
    }

    /// Loads `tokenizer.json` (+ `tokenizer_config.json`, `chat_template.jinja` when present) from
    /// a model or tokenizer directory.
    pub fn load(dir: &Path) -> Result<TextTokenizer> {
        let tj = dir.join("tokenizer.json");
        if !tj.is_file() {
            return Err(KilnError::Msg(format!("{}: no tokenizer.json", dir.display())));
        }
        let tok = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| KilnError::Msg(format!("{}: cannot read tokenizer: {e}", tj.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| KilnError::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|e| KilnError::Config {
                path: cfg_path.clone(),
                field: "(json)".into(),
                detail: e.to_string(),
            })?
        } else {
            Value::Null
        };
        let special = |field: &str| -> Result<Option<Special>> {
            let Some(text) = token_text(cfg.get(field)) else { return Ok(None) };
            let id = tok.token_to_id(&text).ok_or_else(|| KilnError::Config {
                path: cfg_path.clone(),
                field: field.into(),
                detail: format!("`{text}` is not in the vocabulary of tokenizer.json"),
            })?;
            Ok(Some(Special { text, id }))
        };
        let jinja = dir.join("chat_template.jinja");
        let chat_template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(|e| KilnError::io(&jinja, e))?)
        } else {
            match cfg.get("chat_template") {
                Some(Value::String(s)) => Some(s.clone()),
                // A list of named templates: use "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
                _ => None,
            }
        };
        Ok(TextTokenizer {
            bos: special("bos_token")?,
            eos: special("eos_token")?,
            pad: special("pad_token")?,
            add_bos: cfg.get("add_bos_token").and_then(|b| b.as_bool()).unwrap_or(false),
            chat_template,
            fast: FastByteLevel::new(&tok).map(Arc::new),
            tok,
            dir: dir.to_path_buf(),
        })
    }

    /// The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata. Byte-level BPE
    /// (`tokenizer.ggml.model = gpt2`) is built the way transformers converts it — vocabulary,
    /// merges, the pre-tokenizer `tokenizer.ggml.pre` names (see [`super::pretok`]) with
    /// byte-level mapping, control and user-defined tokens as special added
    /// tokens — so ids match transformers loading the same file. Like transformers, no BOS is
    /// added to plain text (chat templates place their own).
    pub fn from_gguf(g: &crate::formats::gguf::GgufFile) -> Result<TextTokenizer> {
        TextTokenizer::from_gguf_metadata(&g.metadata, &g.path)
    }

    /// [`TextTokenizer::from_gguf`] from a GGUF header's metadata (`path` names the file in
    /// errors). The fuzz target `gguf_tokenizer` drives this with arbitrary GGUF bytes.
    pub fn from_gguf_metadata(
        metadata: &[(String, crate::formats::gguf::MetaValue)],
        path: &Path,
    ) -> Result<TextTokenizer> {
        use crate::formats::gguf::MetaValue;
        struct G<'a> {
            path: PathBuf,
            meta: &'a [(String, MetaValue)],
        }
        impl G<'_> {
            fn get(&self, key: &str) -> Option<&MetaValue> {
                self.meta.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
        }
        let g = G { path: path.to_path_buf(), meta: metadata };
        let bad = |k: &str, detail: String| KilnError::Config { path: g.path.clone(), field: k.into(), detail };
        let missing = |k: &str| bad(k, "missing or of the wrong type".into());
        let strings = |k: &str| -> Result<&crate::formats::gguf::StrArray> {
            g.get(k).and_then(MetaValue::as_array).and_then(|a| a.strs()).ok_or_else(|| missing(k))
        };
        let model =
            g.get("tokenizer.ggml.model").and_then(|v| v.as_str()).ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model == "llama" {
            // SentencePiece: built in `spm.rs`; there is no byte-level fast path for it.
            let s = super::spm::from_gguf_metadata(metadata, path)?;
            return Ok(TextTokenizer {
                tok: s.tok,
                bos: s.bos,
                eos: s.eos,
                pad: s.pad,
                add_bos: s.add_bos,
                chat_template: s.chat_template,
                dir: g.path.clone(),
                fast: None,
            });
        }
        if model != "gpt2" {
            return Err(KilnError::Config {
                path: g.path.clone(),
                field: "tokenizer.ggml.model".into(),
                detail: format!(
                    "`{model}` tokenizers are not supported yet (gpt2 byte-level BPE and llama SentencePiece are)"
                ),
            });
        }
        // Which regexes split text before BPE; llama.cpp reads a missing (or empty) name as
        // `default`, and refuses a name it does not know, as kiln does.
        let pre_name = match g.get("tokenizer.ggml.pre") {
            None => "default",
            Some(v) => v.as_str().ok_or_else(|| bad("tokenizer.ggml.pre", "must be a string".into()))?,
        };
        let pre_name = if pre_name.is_empty() { "default" } else { pre_name };
        let pre = super::pretok::find(pre_name).ok_or_else(|| {
            bad(
                "tokenizer.ggml.pre",
                format!("unknown pre-tokenizer `{pre_name}` (known: {})", super::pretok::known_names().join(", ")),
            )
        })?;
        let tokens: Vec<&str> = strings("tokenizer.ggml.tokens")?.iter().collect();
        if tokens.is_empty() {
            return Err(bad("tokenizer.ggml.tokens", "is empty".into()));
        }
        // One id per text: a repeated token would leave one of its ids (and embedding rows)
        // unreachable; llama.cpp refuses such vocabularies too.
        let mut seen = std::collections::HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = seen.insert(*t, i) {
                return Err(bad("tokenizer.ggml.tokens", format!("token {i} `{t}` repeats token {first}")));
            }
        }
        let merges: Vec<&str> = strings("tokenizer.ggml.merges")?.iter().collect();
        // Per-token arrays must describe exactly the tokens: a longer or shorter one means the
        // file is inconsistent (and indexing it by token id would go out of bounds).
        let per_token = |k: &str| per_token_numbers(g.get(k), k, tokens.len(), &bad);
        if let Some(scores) = per_token("tokenizer.ggml.scores")?
            && let Some(i) = scores.iter().position(|s| !s.is_finite())
        {
            return Err(bad("tokenizer.ggml.scores", format!("entry {i} is {}, not a finite number", scores[i])));
        }
        let types: Vec<i64> = match per_token("tokenizer.ggml.token_type")? {
            Some(t) => t.into_iter().map(|x| x as i64).collect(),
            None => vec![1; tokens.len()],
        };
        if let Some((i, t)) = types.iter().enumerate().find(|(_, t)| !(0..=6).contains(*t)) {
            return Err(bad("tokenizer.ggml.token_type", format!("entry {i} is {t} (token types are 0 to 6)")));
        }
        if let Some((i, m)) =
            merges.iter().enumerate().find(|(_, m)| m.split_once(' ').is_none_or(|(a, b)| a.is_empty() || b.is_empty()))
        {
            return Err(bad(
                "tokenizer.ggml.merges",
                format!("entry {i} `{m}` is not two tokens separated by a space"),
            ));
        }
        // A merge of tokens the vocabulary lacks, or whose result it lacks, could never be
        // applied (the `tokenizers` crate refuses it with a message that names no key).
        for (i, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').unwrap_or((m, ""));
            for t in [a, b] {
                if !seen.contains_key(t) {
                    return Err(bad("tokenizer.ggml.merges", format!("entry {i} `{m}` names `{t}`, not a token")));
                }
            }
            if !seen.contains_key(format!("{a}{b}").as_str()) {
                return Err(bad(
                    "tokenizer.ggml.merges",
                    format!("entry {i} `{m}` makes `{a}{b}`, which is not a token"),
                ));
            }
        }
        // Built through the crate's API rather than a `tokenizer.json` text: a 256k vocabulary
        // costs seconds as JSON (a sorted map of every token, then parsed back).
        let err = |e: tokenizers::Error| KilnError::Msg(format!("{}: building the tokenizer: {e}", g.path.display()));
        let vocab: tokenizers::models::bpe::Vocab =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let merges: tokenizers::models::bpe::Merges = merges
            .iter()
            .map(|m| {
                let (a, b) = m.split_once(' ').unwrap_or((m, ""));
                (a.to_string(), b.to_string())
            })
            .collect();
        let bpe = tokenizers::models::bpe::BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(err)?;
        let pre_tokenizer: tokenizers::PreTokenizerWrapper =
            serde_json::from_value(super::pretok::pre_tokenizer_json(pre))
                .map_err(|e| KilnError::Msg(format!("{}: building the pre-tokenizer: {e}", g.path.display())))?;
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre_tokenizer));
        tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // 3 = control, 4 = user-defined: matched whole in text, never split by BPE.
        let added: Vec<tokenizers::AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3 || **t == 4)
            .map(|(i, _)| tokenizers::AddedToken::from(tokens[i].to_string(), true))
            .collect();
        tok.add_special_tokens(&added);
        // A special token id outside the vocabulary is an error, not a token silently dropped.
        let special = |k: &str| -> Result<Option<Special>> {
            let Some(v) = g.get(k) else { return Ok(None) };
            let text = v.as_u64().and_then(|id| Some((id, tokens.get(usize::try_from(id).ok()?)?)));
            match text {
                Some((id, t)) => Ok(Some(Special { text: t.to_string(), id: id as u32 })),
                None => Err(bad(k, format!("{v:?} is not a token id (0 to {})", tokens.len() - 1))),
            }
        };
        Ok(TextTokenizer {
            bos: special("tokenizer.ggml.bos_token_id")?,
            eos: special("tokenizer.ggml.eos_token_id")?,
            pad: special("tokenizer.ggml.padding_token_id")?,
            add_bos: false,
            chat_template: g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string),
            fast: FastByteLevel::new(&tok).map(Arc::new),
            tok,
            dir: g.path.clone(),
        })
    }

    /// BOS as text ("" when the tokenizer has none), as chat templates receive it.
    pub fn bos_text(&self) -> &str {
        self.bos.as_ref().map_or("", |s| s.text.as_str())
    }

    /// EOS as text ("" when the tokenizer has none).
    pub fn eos_text(&self) -> &str {
        self.eos.as_ref().map_or("", |s| s.text.as_str())
    }

    /// The id batches are padded with: PAD, else EOS, else 0 (padding is never a target).
    pub fn pad_id(&self) -> i32 {
        self.pad.as_ref().or(self.eos.as_ref()).map_or(0, |s| s.id as i32)
    }

    /// The text of token `id` (an added token's content, or the vocabulary entry).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tok.id_to_token(id)
    }

    /// The added tokens (those matched whole in text): id, text and whether it is special.
    pub fn added_tokens(&self) -> Vec<(u32, String, bool)> {
        let mut v: Vec<(u32, String, bool)> =
            self.tok.get_added_tokens_decoder().iter().map(|(id, t)| (*id, t.content.clone(), t.special)).collect();
        v.sort_by_key(|t| t.0);
        v
    }

    /// The tokenizer as `tokenizer.json` holds it.
    pub fn to_json(&self) -> Result<Value> {
        let text = self.tok.to_string(false).map_err(|e| KilnError::Msg(format!("serializing the tokenizer: {e}")))?;
        serde_json::from_str(&text).map_err(|e| KilnError::Msg(format!("serializing the tokenizer: {e}")))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tok.get_vocab_size(true)
    }

    /// Encodes `text`; special tokens written in the text are recognized, and none are added
    /// (templates and [`super::render`] place BOS/EOS themselves).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        if let Some(e) = self.fast.as_ref().and_then(|f| f.encode(&self.tok, text)) {
            return Ok(e);
        }
        self.encode_with_crate(text)
    }

    /// Whether [`TextTokenizer::encode`] uses kiln's byte-level fast path for this tokenizer.
    pub fn has_fast_path(&self) -> bool {
        self.fast.is_some()
    }

    /// [`TextTokenizer::encode`] through the `tokenizers` crate alone (the fast path's reference).
    pub fn encode_with_crate(&self, text: &str) -> Result<Encoded> {
        let enc = self.tok.encode(text, false).map_err(|e| KilnError::Msg(format!("tokenizer: {e}")))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    /// Token ids back to text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tok.decode(ids, false).map_err(|e| KilnError::Msg(format!("tokenizer: {e}")))
    }
}

/// A per-token numeric array of a GGUF's `tokenizer.ggml.*` metadata (`key`; `None` when
/// absent), refused (through `bad`) unless it holds exactly one number per token: a longer or
/// shorter one means the file is inconsistent, and indexing it by token id would go out of
/// bounds. Shared by the byte-level BPE and the SentencePiece builders.
pub(super) fn per_token_numbers(
    v: Option<&crate::formats::gguf::MetaValue>,
    key: &str,
    n_tokens: usize,
    bad: &dyn Fn(&str, String) -> KilnError,
) -> Result<Option<Vec<f64>>> {
    let Some(v) = v else { return Ok(None) };
    let a = v.as_array().ok_or_else(|| bad(key, "must be an array".into()))?;
    let x = a.to_f64s().ok_or_else(|| bad(key, "must be an array of numbers".into()))?;
    if x.len() != n_tokens {
        return Err(bad(
            key,
            format!("has {} entries but tokenizer.ggml.tokens has {n_tokens} (one per token)", x.len()),
        ));
    }
    Ok(Some(x))
}

/// The merges transformers and kiln rebuild from a SentencePiece vocabulary's scores (best
/// first), as a GGUF `llama` tokenizer is read: what a `tokenizer.json` converted from such a
/// file holds.
pub fn sentencepiece_merges(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    super::spm::merges_from_scores(tokens, scores)
}
