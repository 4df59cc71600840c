//! SentencePiece tokenizers stored in a GGUF file (`tokenizer.ggml.model = llama`: Llama 1/2,
//! Mistral v0.1, Phi-3, Gemma 1–3, Baichuan…), built for the `tokenizers` crate the way transformers
//! converts them: a BPE model with byte fallback whose merges are recovered from the token
//! scores, control tokens as special added tokens, user-defined tokens as plain added tokens.
//!
//! Text is split the way SentencePiece and llama.cpp (`llm_tokenizer_spm`) split it, which is
//! also the layout of these models' own `tokenizer.json`: every space becomes `▁`, and when
//! `tokenizer.ggml.add_space_prefix` is true (the default) each run of text — the whole text,
//! and the text after a special token — starts with one more `▁`. transformers builds Phi-3 this
//! way but other `llama` files with a `Metaspace` that adds no `▁` before text already starting
//! with a space; llama.cpp's reference vectors side with this layout. Gemma files
//! (`general.architecture` gemma, gemma2, gemma3) are built as transformers builds them: no
//! prefix `▁`, runs of spaces stored as spaces respelled `▁▁…`, merges in token order.
//! `tokenizer.ggml.add_eos_token` is not kept: kiln places EOS itself (templates, `render`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde_json::Value;

use super::tokenizer::Special;
use crate::formats::gguf::{MetaArray, MetaValue};
use crate::{KilnError, Result};

/// Token types as llama.cpp numbers them (`llama_token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const BYTE: i64 = 6;

/// What a SentencePiece vocabulary gives a `TextTokenizer`.
pub(super) struct Spm {
    pub tok: tokenizers::Tokenizer,
    pub bos: Option<Special>,
    pub eos: Option<Special>,
    pub pad: Option<Special>,
    /// `tokenizer.ggml.add_bos_token`; true when absent, as llama.cpp and transformers read
    /// SentencePiece files that predate the flag.
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// The text of byte-fallback token `b`, as SentencePiece spells it.
fn byte_token(b: u8) -> String {
    format!("<0x{b:02X}>")
}

/// The merges a vocabulary without a merge list implies, best first: every split of a token
/// into two tokens, ranked by the joined token's score (ties: the longer left part first, then
/// the longer right part), as transformers' `generate_merges` ranks them — the pair SentencePiece
/// joins first is the one whose result scores highest.
pub(super) fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    // (left, right, score, chars of left, chars of right)
    let mut all: Vec<(&str, &str, f64, usize, usize)> = Vec::new();
    for (t, score) in tokens.iter().zip(scores) {
        let mut local: Vec<(&str, &str, f64, usize, usize)> = Vec::new();
        for (n, (cut, _)) in t.char_indices().enumerate().skip(1) {
            let (l, r) = t.split_at(cut);
            if ids.contains_key(l) && ids.contains_key(r) {
                local.push((l, r, *score, n, t.chars().count() - n));
            }
        }
        local.sort_by_key(|m| (ids[m.0], ids[m.1]));
        all.extend(local);
    }
    // Stable, so equal keys keep the order above, as Python's `sorted(reverse=True)` does.
    all.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    all.into_iter().map(|(l, r, ..)| (l.to_string(), r.to_string())).collect()
}

/// Builds the tokenizer from a GGUF header's `tokenizer.ggml.*` metadata (`path` names the
/// file in errors). Every inconsistency is an error naming the key, never a panic.
pub(super) fn from_gguf_metadata(metadata: &[(String, MetaValue)], path: &Path) -> Result<Spm> {
    let get = |key: &str| metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let bad = |k: &str, detail: String| KilnError::Config { path: path.to_path_buf(), field: k.into(), detail };
    let stored = get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .and_then(MetaArray::strs)
        .ok_or_else(|| bad("tokenizer.ggml.tokens", "missing or not an array of strings".into()))?;
    // Gemma files store a token of two or more spaces as real spaces, which no text reaches
    // once spaces are `▁`: they are respelled, and their merges follow the file's token order,
    // not its scores (transformers' `gemma_tokenizer`).
    let arch = get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
    let respelled: Vec<String> = stored
        .iter()
        .map(|t| {
            if gemma && t.contains(' ') && t.chars().all(char::is_whitespace) {
                "▁".repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    let tokens: Vec<&str> = respelled.iter().map(String::as_str).collect();
    if tokens.is_empty() {
        return Err(bad("tokenizer.ggml.tokens", "is empty".into()));
    }
    let mut seen = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if let Some(first) = seen.insert(*t, i) {
            return Err(bad("tokenizer.ggml.tokens", format!("token {i} `{t}` repeats token {first}")));
        }
    }
    let per_token = |k: &str| super::tokenizer::per_token_numbers(get(k), k, tokens.len(), &bad);
    // A SentencePiece vocabulary's merge order is its scores: without them there is no model.
    let scores = per_token("tokenizer.ggml.scores")?.ok_or_else(|| {
        bad("tokenizer.ggml.scores", "missing (a SentencePiece vocabulary needs one score per token)".into())
    })?;
    if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
        return Err(bad("tokenizer.ggml.scores", format!("entry {i} is {}, not a finite number", scores[i])));
    }
    let types: Vec<i64> = match per_token("tokenizer.ggml.token_type")? {
        Some(t) => t.into_iter().map(|x| x as i64).collect(),
        None => vec![1; tokens.len()],
    };
    if let Some((i, t)) = types.iter().enumerate().find(|(_, t)| !(0..=6).contains(*t)) {
        return Err(bad("tokenizer.ggml.token_type", format!("entry {i} is {t} (token types are 0 to 6)")));
    }
    let flag = |k: &str, default: bool| -> Result<bool> {
        match get(k) {
            None => Ok(default),
            Some(MetaValue::Bool(b)) => Ok(*b),
            Some(v) => Err(bad(k, format!("{v:?} is not a boolean"))),
        }
    };
    // Gemma adds no prefix space (its files say so; transformers' Gemma build never does).
    let add_space_prefix = flag("tokenizer.ggml.add_space_prefix", !gemma)?;
    let add_bos = flag("tokenizer.ggml.add_bos_token", true)?;
    // A special token id outside the vocabulary is an error, not a token silently dropped.
    let special = |k: &str| -> Result<Option<Special>> {
        let Some(v) = get(k) else { return Ok(None) };
        let text = v.as_u64().and_then(|id| Some((id, tokens.get(usize::try_from(id).ok()?)?)));
        match text {
            Some((id, t)) => Ok(Some(Special { text: t.to_string(), id: id as u32 })),
            None => Err(bad(k, format!("{v:?} is not a token id (0 to {})", tokens.len() - 1))),
        }
    };
    let bos = special("tokenizer.ggml.bos_token_id")?;
    let eos = special("tokenizer.ggml.eos_token_id")?;
    let pad = special("tokenizer.ggml.padding_token_id")?;
    let unk = special("tokenizer.ggml.unknown_token_id")?;
    if add_bos && bos.is_none() {
        return Err(bad("tokenizer.ggml.bos_token_id", "missing, but tokenizer.ggml.add_bos_token is true".into()));
    }

    // Byte fallback: a character no token spells is written as its UTF-8 bytes, `<0x00>` to
    // `<0xFF>`. A vocabulary with some of those tokens must have all 256, else some text would
    // lose characters; one with none needs an unknown token to stand for them.
    let missing_bytes: Vec<String> = (0..=255u8).map(byte_token).filter(|b| !seen.contains_key(b.as_str())).collect();
    let byte_fallback = match missing_bytes.len() {
        0 => true,
        256 if unk.is_some() => false,
        256 => {
            return Err(bad(
                "tokenizer.ggml.tokens",
                "has no byte-fallback tokens <0x00>..<0xFF> and tokenizer.ggml.unknown_token_id is missing: \
                 characters outside the vocabulary could not be encoded"
                    .into(),
            ));
        }
        n => {
            return Err(bad(
                "tokenizer.ggml.tokens",
                format!(
                    "has {} of the 256 byte-fallback tokens; missing {}{}",
                    256 - n,
                    missing_bytes[..n.min(4)].join(", "),
                    if n > 4 { ", …" } else { "" }
                ),
            ));
        }
    };
    if let Some(i) = (0..tokens.len()).find(|&i| types[i] == BYTE && !is_byte_token(tokens[i])) {
        return Err(bad("tokenizer.ggml.token_type", format!("entry {i} marks `{}` as a byte token", tokens[i])));
    }

    let vocab: serde_json::Map<String, Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.to_string(), Value::from(i as u64))).collect();
    let order: Vec<f64>;
    let rank = if gemma {
        order = (0..tokens.len()).map(|i| -(i as f64)).collect();
        &order
    } else {
        &scores
    };
    let merges: Vec<Value> =
        merges_from_scores(&tokens, rank).into_iter().map(|(l, r)| serde_json::json!([l, r])).collect();
    // Control tokens (and BOS/EOS/PAD/UNK, which transformers registers as special whatever
    // their type) are special added tokens; user-defined ones are added tokens that are not
    // special. Both are matched whole in the text and never split.
    let named: HashSet<u32> = [&bos, &eos, &pad, &unk].into_iter().flatten().map(|s| s.id).collect();
    let added: Vec<Value> = types
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let special = *t == CONTROL || named.contains(&(i as u32));
            let user = *t == USER_DEFINED;
            (special || user).then(|| {
                serde_json::json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special && !user})
            })
        })
        .collect();
    let mut norm = Vec::new();
    if add_space_prefix {
        norm.push(serde_json::json!({"type": "Prepend", "prepend": "▁"}));
    }
    norm.push(serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut dec = vec![
        serde_json::json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        serde_json::json!({"type": "ByteFallback"}),
        serde_json::json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        dec.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": norm},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": dec},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk.as_ref().map(|u| u.text.clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
            "byte_fallback": byte_fallback, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let tok: tokenizers::Tokenizer = json
        .to_string()
        .parse()
        .map_err(|e| KilnError::Msg(format!("{}: building the SentencePiece tokenizer: {e}", path.display())))?;
    Ok(Spm {
        tok,
        bos,
        eos,
        pad,
        add_bos,
        chat_template: get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string),
    })
}

/// Whether `t` is spelled like a byte-fallback token (`<0x41>`).
fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_rank_by_score_then_length() {
        let tokens = ["a", "b", "c", "ab", "bc", "abc"];
        let scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5];
        let m = merges_from_scores(&tokens, &scores);
        let m: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        // "abc" scores best; its splits "ab|c" (longer left) before "a|bc".
        assert_eq!(m, vec![("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]);
    }

    #[test]
    fn byte_tokens_are_recognized() {
        assert!(is_byte_token("<0x0A>") && is_byte_token("<0xff>"));
        assert!(!is_byte_token("<0xG0>") && !is_byte_token("<0x0A") && !is_byte_token("<s>"));
    }
}
