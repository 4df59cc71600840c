//! The `tokenizer.ggml.*` metadata of a GGUF export of a transformers folder, written the way
//! llama.cpp's converter (`convert_hf_to_gguf.py` and gguf-py's `vocab.py`, llama-cpp-python
//! 0.3.36) writes it for the kind of tokenizer the model has:
//!
//! - **byte-level BPE** (GPT-2, Llama 3, Qwen2, SmolLM…): `model = gpt2`, the pre-tokenizer
//!   name chosen as the converter chooses it ([`super::pre_hash`]), tokens, token types, merges
//!   (`get_vocab_base` and `SpecialVocab(load_merges=True)`).
//! - **SentencePiece** (a `tokenizer.json` BPE with `byte_fallback` and the `▁` space layout,
//!   as Llama 2, Mistral v0.x, Gemma and Phi-3 ship): `model = llama`, `pre = default`, tokens,
//!   scores, token types (normal, unknown, control, user-defined, unused, byte) and
//!   `add_space_prefix`. The converter's own path for a folder without `tokenizer.model`
//!   (`LlamaHfVocab`) writes the score -1000 for every token, which leaves llama.cpp — merging
//!   the best-scoring pair first — no merge order at all; kiln writes scores that keep the
//!   `tokenizer.json` merge order instead (a token scores minus the rank of its first merge),
//!   so llama.cpp, transformers and kiln reading the file back split text as the folder does.
//!   Added tokens score -1000 as the converter's `tokenizer.model` path writes them; a
//!   user-defined token has its `▁` written as spaces, as that path does (llama.cpp matches it
//!   in the raw text).
//!
//! Both write the BOS/EOS/UNK/PAD ids, `add_bos_token`/`add_eos_token` (the post-processor's
//! template first, then `tokenizer_config.json`, as `SpecialVocab` reads them) and the chat
//! template. A tokenizer llama.cpp cannot express (WordPiece, WordLevel, Unigram, a
//! SentencePiece layout with another normalizer or pre-tokenizer) is refused by name before
//! anything is written.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::data::tokenizer::TextTokenizer;
use crate::formats::gguf::{MetaArray, MetaValue, StrArray};
use crate::{KilnError, Result};

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// The score the converter gives added (control, user-defined) tokens and padding rows.
const ADDED_SCORE: f32 = -1000.0;

fn s(v: &str) -> MetaValue {
    MetaValue::Str(v.into())
}

/// `tokenizer.ggml.*` for the tokenizer kiln loaded (with any tokens added in training), for a
/// model whose embedding has `vocab_size` rows; `pre` as [`super::pre_hash::pre_name`] takes it
/// (a byte-level BPE only).
pub fn tokenizer_metadata(
    tok: &TextTokenizer,
    vocab_size: usize,
    pre: Option<&str>,
) -> Result<Vec<(String, MetaValue)>> {
    let text = |s: &Option<crate::data::tokenizer::Special>| s.as_ref().map(|s| s.text.clone());
    let cfg = serde_json::json!({"bos_token": text(&tok.bos), "eos_token": text(&tok.eos), "pad_token": text(&tok.pad),
        "add_bos_token": tok.add_bos});
    metadata(&tok.to_json()?, &cfg, tok.chat_template.clone(), vocab_size, &tok.dir.join("tokenizer.json"), pre)
}

/// [`tokenizer_metadata`] from the `tokenizer.json` (+ `tokenizer_config.json`, chat template)
/// of the folder `dir`.
pub fn tokenizer_metadata_of_dir(dir: &Path, vocab_size: usize, pre: Option<&str>) -> Result<Vec<(String, MetaValue)>> {
    let read = |f: &str| -> Result<Value> {
        let p = dir.join(f);
        let text = std::fs::read_to_string(&p).map_err(|e| KilnError::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| KilnError::Config {
            path: p.clone(),
            field: "(json)".into(),
            detail: e.to_string(),
        })
    };
    let tj = read("tokenizer.json")?;
    let cfg = read("tokenizer_config.json").unwrap_or(Value::Null);
    let template = cfg["chat_template"]
        .as_str()
        .map(str::to_string)
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    metadata(&tj, &cfg, template, vocab_size, &dir.join("tokenizer.json"), pre)
}

/// Which GGUF tokenizer model a `tokenizer.json` is, or why it is none.
enum Kind {
    ByteLevel,
    /// With whether each run of text starts with `▁` (`add_space_prefix`).
    SentencePiece {
        add_space_prefix: bool,
    },
}

fn kind(tj: &Value, path: &Path) -> Result<Kind> {
    let bad = |field: &str, d: String| KilnError::Config { path: path.to_path_buf(), field: field.into(), detail: d };
    let model = &tj["model"];
    let ty = model["type"].as_str().unwrap_or("(none)");
    match ty {
        "BPE" => {}
        "Unigram" => {
            return Err(bad(
                "model.type",
                "a Unigram (SentencePiece unigram) tokenizer cannot be written as a GGUF tokenizer: llama.cpp's \
                 `llama` model joins the best-scoring pair of pieces, which splits text differently from a \
                 unigram model's best segmentation"
                    .into(),
            ));
        }
        other => {
            return Err(bad(
                "model.type",
                format!(
                    "a {other} tokenizer cannot be written as a GGUF tokenizer kiln's exports use (byte-level \
                     BPE as `gpt2`, SentencePiece BPE as `llama`)"
                ),
            ));
        }
    }
    if model["byte_fallback"].as_bool() != Some(true) {
        return Ok(Kind::ByteLevel);
    }
    // SentencePiece's layout: spaces become `▁` (a Replace normalizer, or a Metaspace
    // pre-tokenizer that does not split), and maybe one `▁` before the text. Anything else
    // would make llama.cpp split text differently from this tokenizer.
    let mut prepend = None;
    let mut spaces = false;
    let norm = &tj["normalizer"];
    let norms: Vec<&Value> = match norm["type"].as_str() {
        None => vec![],
        Some("Sequence") => norm["normalizers"].as_array().map(|v| v.iter().collect()).unwrap_or_default(),
        Some(_) => vec![norm],
    };
    for n in norms {
        match n["type"].as_str() {
            Some("Prepend") if n["prepend"] == "▁" => prepend = Some(true),
            Some("Replace") if n["pattern"]["String"] == " " && n["content"] == "▁" => spaces = true,
            other => {
                return Err(bad(
                    "normalizer",
                    format!(
                        "the SentencePiece tokenizer's normalizer {} cannot be expressed in a GGUF `llama` tokenizer \
                         (only the ▁ space layout: Prepend ▁, Replace ' ' → ▁)",
                        other.unwrap_or("(untyped)")
                    ),
                ));
            }
        }
    }
    let pre = &tj["pre_tokenizer"];
    match pre["type"].as_str() {
        None => {}
        Some("Metaspace") if pre["replacement"] == "▁" && pre["split"].as_bool() != Some(true) => {
            spaces = true;
            let scheme = pre["prepend_scheme"].as_str();
            prepend = Some(match scheme {
                Some(s) => s != "never",
                None => pre["add_prefix_space"].as_bool().unwrap_or(true),
            });
        }
        // Gemma's layout: a Split on " " after the normalizer has turned every space into `▁`
        // never matches, so it splits nothing.
        Some("Split") if spaces && pre["pattern"]["String"] == " " => {}
        Some(other) => {
            return Err(bad(
                "pre_tokenizer",
                format!(
                    "the SentencePiece tokenizer's pre-tokenizer {other} cannot be expressed in a GGUF `llama` \
                     tokenizer (only a Metaspace ▁ that does not split)"
                ),
            ));
        }
    }
    if !spaces {
        return Err(bad(
            "normalizer",
            "a BPE tokenizer with byte fallback that does not write spaces as ▁ is not SentencePiece-style; \
             a GGUF `llama` tokenizer would split its text differently"
                .into(),
        ));
    }
    Ok(Kind::SentencePiece { add_space_prefix: prepend.unwrap_or(false) })
}

/// Added tokens that the converter makes control tokens though `tokenizer.json` does not mark
/// them special (`does_token_look_special`).
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}

/// The merges of a `tokenizer.json` as pairs (either spelling: `"a b"` or `["a", "b"]`).
fn merge_pairs(tj: &Value) -> Vec<(String, String)> {
    tj["model"]["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Value::String(x) => x.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(p) => Some((p.first()?.as_str()?.to_string(), p.get(1)?.as_str()?.to_string())),
            _ => None,
        })
        .collect()
}

/// Whether the post-processor's single-sequence template adds BOS (first) and EOS (last), as
/// `SpecialVocab` reads it; `None` where it says nothing.
fn template_adds(tj: &Value, bos: Option<&str>, eos: Option<&str>) -> (Option<bool>, Option<bool>) {
    let post = &tj["post_processor"];
    let procs: Vec<&Value> = match post["type"].as_str() {
        Some("Sequence") => post["processors"].as_array().map(|v| v.iter().collect()).unwrap_or_default(),
        Some(_) => vec![post],
        None => vec![],
    };
    let (mut add_bos, mut add_eos) = (None, None);
    for p in procs {
        match p["type"].as_str() {
            Some("ByteLevel") => {
                add_bos.get_or_insert(false);
                add_eos.get_or_insert(false);
            }
            Some("TemplateProcessing") => {
                let single = p["single"].as_array().map(Vec::as_slice).unwrap_or_default();
                if single.len() > 1 {
                    let special = |v: &Value| v["SpecialToken"]["id"].as_str().map(str::to_string);
                    if let Some(first) = single.first().and_then(special) {
                        add_bos = Some(Some(first.as_str()) == bos);
                    }
                    if let Some(last) = single.last().and_then(special) {
                        add_eos = Some(Some(last.as_str()) == eos);
                    }
                }
            }
            _ => {}
        }
    }
    (add_bos, add_eos)
}

fn metadata(
    tj: &Value,
    cfg: &Value,
    template: Option<String>,
    vocab_size: usize,
    path: &Path,
    pre: Option<&str>,
) -> Result<Vec<(String, MetaValue)>> {
    let bad = |field: &str, d: String| KilnError::Config { path: path.to_path_buf(), field: field.into(), detail: d };
    let kind = kind(tj, path)?;
    let spm = matches!(kind, Kind::SentencePiece { .. });
    if spm && let Some(p) = pre.filter(|p| *p != "default") {
        return Err(KilnError::Msg(format!(
            "--gguf-pre `{p}`: {} is a SentencePiece tokenizer, written as the GGUF `llama` model, which has no \
             pre-tokenizer to choose",
            path.display()
        )));
    }
    let vocab = tj["model"]["vocab"].as_object().ok_or_else(|| bad("model.vocab", "missing or not a map".into()))?;
    let unk = tj["model"]["unk_token"].as_str();
    let mut tokens = vec![String::new(); vocab_size];
    let mut types = vec![NORMAL; vocab_size];
    for (t, id) in vocab {
        if let Some(i) = id.as_u64().map(|i| i as usize).filter(|&i| i < vocab_size) {
            tokens[i] = t.clone();
            if spm && is_byte_token(t) {
                types[i] = BYTE;
            } else if Some(t.as_str()) == unk {
                types[i] = UNKNOWN;
            }
        }
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(i), Some(t)) = (a["id"].as_u64().map(|i| i as usize), a["content"].as_str())
            && i < vocab_size
        {
            let special = a["special"].as_bool() == Some(true) || looks_special(t);
            types[i] = if spm && Some(t) == unk {
                UNKNOWN
            } else if special {
                CONTROL
            } else {
                USER_DEFINED
            };
            // The converter writes a SentencePiece user-defined token's ▁ as the spaces it
            // stands for: llama.cpp finds such tokens in the text before spaces become ▁.
            tokens[i] = if spm && types[i] == USER_DEFINED { t.replace('▁', " ") } else { t.to_string() };
        }
    }
    for (i, t) in tokens.iter_mut().enumerate().filter(|(_, t)| t.is_empty()) {
        *t = format!("[PAD{i}]");
        types[i] = UNUSED;
    }
    let merges = merge_pairs(tj);
    let name = |key: &str| -> Option<String> {
        let v = &cfg[key];
        v.as_str().or_else(|| v["content"].as_str()).map(str::to_string)
    };
    let (bos, eos) = (name("bos_token"), name("eos_token"));
    let mut m = match kind {
        Kind::ByteLevel => vec![
            ("tokenizer.ggml.model".into(), s("gpt2")),
            ("tokenizer.ggml.pre".into(), s(super::pre_hash::pre_name(tj, path.parent().unwrap_or(path), pre)?)),
            ("tokenizer.ggml.tokens".into(), MetaValue::Array(MetaArray::Str(tokens.iter().collect()))),
            ("tokenizer.ggml.token_type".into(), MetaValue::Array(MetaArray::I32(types.clone()))),
            (
                "tokenizer.ggml.merges".into(),
                // A space inside a merge's part is written U+0120, as `SpecialVocab` does.
                MetaValue::Array(MetaArray::Str(
                    merges.iter().map(|(a, b)| format!("{} {}", a.replace(' ', "Ġ"), b.replace(' ', "Ġ"))).collect(),
                )),
            ),
        ],
        Kind::SentencePiece { add_space_prefix } => {
            let scores = spm_scores(&tokens, &types, &merges);
            vec![
                ("tokenizer.ggml.model".into(), s("llama")),
                ("tokenizer.ggml.pre".into(), s("default")),
                ("tokenizer.ggml.tokens".into(), MetaValue::Array(MetaArray::Str(tokens.iter().collect::<StrArray>()))),
                ("tokenizer.ggml.scores".into(), MetaValue::Array(MetaArray::F32(scores))),
                ("tokenizer.ggml.token_type".into(), MetaValue::Array(MetaArray::I32(types.clone()))),
                ("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(add_space_prefix)),
            ]
        }
    };
    let id_of = |text: Option<&str>| -> Option<u32> {
        let text = text?;
        tokens.iter().position(|t| t == text).map(|i| i as u32)
    };
    for (text, key) in [
        (bos.as_deref(), "bos"),
        (eos.as_deref(), "eos"),
        (unk.filter(|_| spm), "unknown"),
        (name("unk_token").as_deref().filter(|_| !spm), "unknown"),
        (name("pad_token").as_deref(), "padding"),
    ] {
        if let Some(id) = id_of(text) {
            m.push((format!("tokenizer.ggml.{key}_token_id"), MetaValue::U32(id)));
        }
    }
    let (t_bos, t_eos) = template_adds(tj, bos.as_deref(), eos.as_deref());
    // llama.cpp (and kiln) read a SentencePiece file without the flag as adding BOS: write it.
    let add_bos = t_bos.or(cfg["add_bos_token"].as_bool()).or(spm.then_some(false));
    let add_eos = t_eos.or(cfg["add_eos_token"].as_bool()).or(spm.then_some(false));
    for (key, v) in [("add_bos_token", add_bos), ("add_eos_token", add_eos)] {
        if let Some(b) = v {
            m.push((format!("tokenizer.ggml.{key}"), MetaValue::Bool(b)));
        }
    }
    if let Some(t) = template {
        m.push(("tokenizer.chat_template".into(), s(&t)));
    }
    Ok(m)
}

/// SentencePiece scores that keep a BPE `tokenizer.json`'s merge order: llama.cpp joins the
/// adjacent pair whose joined token scores highest, and transformers (and kiln) rebuild the
/// merges from the scores the same way, so a token produced by merge `r` (its first) scores
/// `-(r + 1)`. Byte tokens score 0 and added tokens -1000, as SentencePiece and the converter
/// write them; a normal token no merge produces (single characters) ranks after every merge.
fn spm_scores(tokens: &[String], types: &[i32], merges: &[(String, String)]) -> Vec<f32> {
    let mut first: HashMap<String, usize> = HashMap::with_capacity(merges.len());
    for (r, (a, b)) in merges.iter().enumerate() {
        first.entry(format!("{a}{b}")).or_insert(r);
    }
    let n = merges.len();
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (t, ty))| match *ty {
            BYTE => 0.0,
            NORMAL => match first.get(t) {
                Some(r) => -((r + 1) as f32),
                None => -((n + 1 + i) as f32),
            },
            _ => ADDED_SCORE,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tj(normalizer: Value, pre: Value, byte_fallback: bool) -> Value {
        serde_json::json!({"model": {"type": "BPE", "byte_fallback": byte_fallback, "unk_token": "<unk>",
            "vocab": {"<unk>": 0, "<s>": 1, "<0x41>": 2, "▁": 3, "a": 4, "▁a": 5, "b": 6, "▁ab": 7, "c": 8},
            "merges": [["▁", "a"], ["▁a", "b"]]},
            "added_tokens": [{"id": 0, "content": "<unk>", "special": true}, {"id": 1, "content": "<s>", "special": true},
                {"id": 9, "content": "▁▁x", "special": false}],
            "normalizer": normalizer, "pre_tokenizer": pre,
            "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}]}})
    }

    fn get<'a>(m: &'a [(String, MetaValue)], k: &str) -> &'a MetaValue {
        &m.iter().find(|(x, _)| x == k).unwrap_or_else(|| panic!("no {k}")).1
    }

    #[test]
    fn sentencepiece_layouts_are_written_as_the_llama_model() {
        let p = Path::new("m/tokenizer.json");
        let cfg = serde_json::json!({"bos_token": "<s>"});
        let meta =
            serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false});
        let m = metadata(&tj(Value::Null, meta, true), &cfg, None, 11, p, None).unwrap();
        assert_eq!(get(&m, "tokenizer.ggml.model"), &s("llama"));
        assert_eq!(get(&m, "tokenizer.ggml.add_space_prefix"), &MetaValue::Bool(true));
        assert_eq!(get(&m, "tokenizer.ggml.add_bos_token"), &MetaValue::Bool(true));
        assert_eq!(get(&m, "tokenizer.ggml.add_eos_token"), &MetaValue::Bool(false));
        assert_eq!(get(&m, "tokenizer.ggml.bos_token_id"), &MetaValue::U32(1));
        assert_eq!(get(&m, "tokenizer.ggml.unknown_token_id"), &MetaValue::U32(0));
        let types = get(&m, "tokenizer.ggml.token_type").as_array().unwrap().to_f64s().unwrap();
        assert_eq!(types, [2., 3., 6., 1., 1., 1., 1., 1., 1., 4., 5.]);
        let tokens: Vec<&str> = get(&m, "tokenizer.ggml.tokens").as_array().unwrap().strs().unwrap().iter().collect();
        assert_eq!((tokens[9], tokens[10]), ("  x", "[PAD10]"));
        // Merge order kept: ▁a (first merge) above ▁ab (second), both above unmerged tokens.
        let sc = get(&m, "tokenizer.ggml.scores").as_array().unwrap().to_f64s().unwrap();
        assert_eq!((sc[5], sc[7], sc[2], sc[1]), (-1.0, -2.0, 0.0, -1000.0));
        assert!(sc[4] < sc[7] && sc[8] < sc[7]);
        // The legacy layout: a Prepend + Replace normalizer; Gemma's: Replace alone.
        let prepend = serde_json::json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let m = metadata(&tj(prepend, Value::Null, true), &cfg, None, 10, p, None).unwrap();
        assert_eq!(get(&m, "tokenizer.ggml.add_space_prefix"), &MetaValue::Bool(true));
        let replace = serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let m = metadata(&tj(replace, Value::Null, true), &cfg, None, 10, p, None).unwrap();
        assert_eq!(get(&m, "tokenizer.ggml.add_space_prefix"), &MetaValue::Bool(false));
    }

    #[test]
    fn tokenizers_llama_cpp_cannot_express_are_refused_by_name() {
        let p = Path::new("m/tokenizer.json");
        let cfg = Value::Null;
        let nfkc = serde_json::json!({"type": "NFKC"});
        let e = metadata(&tj(nfkc, Value::Null, true), &cfg, None, 10, p, None).unwrap_err().to_string();
        assert!(e.contains("m/tokenizer.json") && e.contains("normalizer NFKC"), "{e}");
        let split = serde_json::json!({"type": "Whitespace"});
        let e = metadata(&tj(Value::Null, split, true), &cfg, None, 10, p, None).unwrap_err().to_string();
        assert!(e.contains("pre-tokenizer Whitespace"), "{e}");
        let e = metadata(&tj(Value::Null, Value::Null, true), &cfg, None, 10, p, None).unwrap_err().to_string();
        assert!(e.contains("not SentencePiece-style"), "{e}");
        for (ty, says) in [("WordPiece", "a WordPiece tokenizer"), ("Unigram", "Unigram"), ("WordLevel", "WordLevel")] {
            let mut t = tj(Value::Null, Value::Null, false);
            t["model"]["type"] = s_json(ty);
            let e = metadata(&t, &cfg, None, 10, p, None).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("model.type"), "{e}");
        }
        let meta = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"});
        let e = metadata(&tj(Value::Null, meta, true), &cfg, None, 10, p, Some("llama-bpe")).unwrap_err().to_string();
        assert!(e.contains("--gguf-pre `llama-bpe`") && e.contains("SentencePiece"), "{e}");
    }

    fn s_json(v: &str) -> Value {
        Value::String(v.into())
    }

    #[test]
    fn added_tokens_that_look_special_are_control() {
        assert!(looks_special("<|im_start|>") && looks_special("<unused12>") && looks_special("<pad>"));
        assert!(!looks_special("<tool>") && !looks_special("[PAD3]"));
    }
}
