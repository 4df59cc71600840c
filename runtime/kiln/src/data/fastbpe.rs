//! A faster encoder for the most common tokenizer shape — byte-level BPE with GPT-2's
//! pre-tokenization regex, optionally after splitting off each digit, no normalizer (GPT-2,
//! SmolLM, StarCoder, and the GGUF `gpt2` tokenizers whose `tokenizer.ggml.pre` selects those
//! regexes, or Llama 3's, Qwen2's or Qwen3.5's regex) — that gives the same ids and byte offsets
//! as the `tokenizers` crate. Any other pre-tokenizer (DeepSeek's, Falcon's, …) is declined and
//! goes through the crate.
//!
//! Why: the `tokenizers` crate spends most of its time on bookkeeping around the model (an
//! alignment-tracking string per pre-token, a `Token` with an owned `String` per id, fancy-regex
//! backtracking for one look-ahead), not in BPE itself. Here the text is split with a plain
//! `regex` DFA plus a fix-up for `\s+(?!\S)`, each pre-token is looked up in a cache of
//! pre-token → ids, and only misses go to the crate's own BPE model, so merges, ranks and ties
//! are exactly the crate's. A tokenizer of any other shape, or a text whose ids do not cover its
//! bytes, falls back to the crate (`encode` returns `None`).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use tokenizers::Model;

/// Token ids with the byte range of the input each came from.
#[derive(Clone, Debug, Default)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

/// GPT-2's pattern without its `\s+(?!\S)` alternative, which `split` emulates.
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Pre-token bytes → ids.
type Shard = HashMap<Box<[u8]>, Box<[u32]>>;

const SHARDS: usize = 16;
/// Cache entries per shard before it is cleared (bounds memory on huge vocabularies of words).
const SHARD_CAP: usize = 1 << 16;

/// Added tokens matched in the text before pre-tokenization, as the crate's added vocabulary
/// does: tokens that are not `normalized` first, then the normalized ones in what remains.
struct Added {
    matcher: AhoCorasick,
    ids: Vec<u32>,
}

pub(crate) struct FastByteLevel {
    re: regex::Regex,
    /// `\p{N}` when each digit is split off before GPT-2's regex (`Split` `Isolated`).
    digits: Option<regex::Regex>,
    /// Llama 3's shape: a whitespace piece ending in `\r`/`\n` came from `\s*[\r\n]+` (which
    /// precedes `\s+(?!\S)` there) and is kept whole.
    newline_runs: bool,
    added: Vec<Added>,
    /// Bytes of input each id stands for (byte-level: one char per byte).
    byte_len: Vec<u32>,
    byte_char: [char; 256],
    cache: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
}

/// GPT-2's byte → printable char table (`bytes_to_unicode`).
fn byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

impl FastByteLevel {
    /// The fast path for `tok`, or `None` when its shape is not the one handled here.
    pub(crate) fn new(tok: &tokenizers::Tokenizer) -> Option<FastByteLevel> {
        // The settings that decide the shape, without serializing the vocabulary and merges.
        let tokenizers::ModelWrapper::BPE(bpe) = tok.get_model() else { return None };
        let j = serde_json::json!({
            "normalizer": serde_json::to_value(tok.get_normalizer()).ok()?,
            "pre_tokenizer": serde_json::to_value(tok.get_pre_tokenizer()).ok()?,
            "post_processor": serde_json::to_value(tok.get_post_processor()).ok()?,
            "model": {"type": "BPE", "dropout": bpe.dropout, "byte_fallback": bpe.byte_fallback,
                "continuing_subword_prefix": bpe.continuing_subword_prefix,
                "end_of_word_suffix": bpe.end_of_word_suffix},
        });
        let is =
            |v: &serde_json::Value, k: &str, want: serde_json::Value| v.get(k).cloned().unwrap_or_default() == want;
        if !j["normalizer"].is_null() {
            return None;
        }
        // GPT-2's `ByteLevel` alone, or after a `Split` that isolates each digit (the shape
        // `super::pretok` builds for `smollm`, `starcoder`, …).
        // Or one `Split` with Llama 3's (Qwen2's, Qwen3.5's) regex and `ByteLevel` without its
        // own: the `regex` crate runs it with `\s+` for its look-ahead tail, fixed up in `split`.
        let mut pre = &j["pre_tokenizer"];
        let (mut digits, mut pattern, mut byte_regex, mut newline_runs) = (None, GPT2_PATTERN.to_string(), true, false);
        if is(pre, "type", "Sequence".into()) {
            let steps = pre["pretokenizers"].as_array()?;
            let [split, last] = steps.as_slice() else { return None };
            let isolated = |r: &str| serde_json::json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false});
            use super::pretok::{DIGIT, LLAMA3, QWEN2, QWEN35, SPACE_TAIL};
            if *split == isolated(DIGIT) {
                digits = Some(regex::Regex::new(DIGIT).ok()?);
            } else if let Some(r) = [LLAMA3, QWEN2, QWEN35].into_iter().find(|r| *split == isolated(r)) {
                pattern = format!("{}|\\s+", r.strip_suffix(SPACE_TAIL)?);
                (byte_regex, newline_runs) = (false, true);
            } else {
                return None;
            }
            pre = last;
        }
        if !(is(pre, "type", "ByteLevel".into())
            && is(pre, "add_prefix_space", false.into())
            && is(pre, "use_regex", byte_regex.into()))
        {
            return None;
        }
        // Post-processors that move offsets (ByteLevel trimming, Roberta) are left to the crate.
        let post = &j["post_processor"];
        if !(post.is_null() || is(post, "type", "TemplateProcessing".into())) {
            return None;
        }
        let m = &j["model"];
        if !is(m, "type", "BPE".into()) || !m["dropout"].is_null() || m["byte_fallback"].as_bool() != Some(false) {
            return None;
        }
        if !m["continuing_subword_prefix"].is_null() || !m["end_of_word_suffix"].is_null() {
            return None;
        }
        let mut byte_len = vec![0u32; tok.get_vocab_size(true)];
        let byte_char = byte_chars();
        let mut char_ok = [false; 0x200];
        for c in byte_char {
            char_ok[c as usize] = true;
        }
        for (text, id) in tok.get_vocab(false) {
            // A vocabulary entry outside the byte alphabet cannot come out of byte-level BPE.
            if text.chars().all(|c| (c as usize) < char_ok.len() && char_ok[c as usize]) {
                *byte_len.get_mut(id as usize)? = text.chars().count() as u32;
            }
        }
        let mut groups: [Vec<(String, u32)>; 2] = [vec![], vec![]];
        for (id, t) in tok.get_added_tokens_decoder() {
            if t.single_word || t.lstrip || t.rstrip {
                return None;
            }
            *byte_len.get_mut(id as usize)? = t.content.len() as u32;
            groups[t.normalized as usize].push((t.content.clone(), id));
        }
        let mut added = vec![];
        for g in groups {
            if g.is_empty() {
                continue;
            }
            let matcher = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(g.iter().map(|(s, _)| s))
                .ok()?;
            added.push(Added { matcher, ids: g.iter().map(|(_, id)| *id).collect() });
        }
        Some(FastByteLevel {
            re: regex::Regex::new(&pattern).ok()?,
            digits,
            newline_runs,
            added,
            byte_len,
            byte_char,
            cache: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        })
    }

    /// Ids and byte offsets of `text`, or `None` to fall back to the crate.
    pub(crate) fn encode(&self, tok: &tokenizers::Tokenizer, text: &str) -> Option<Encoded> {
        let mut out = Encoded { ids: Vec::with_capacity(text.len() / 3), offsets: Vec::with_capacity(text.len() / 3) };
        self.segment(tok, text, 0, 0, &mut out)?;
        Some(out)
    }

    /// Splits `text[..]` (at `base` in the input) on added-token group `g` and below.
    fn segment(&self, tok: &tokenizers::Tokenizer, text: &str, base: usize, g: usize, out: &mut Encoded) -> Option<()> {
        let Some(added) = self.added.get(g) else { return self.pretokenize(tok, text, base, out) };
        let mut last = 0;
        for m in added.matcher.find_iter(text) {
            if m.start() > last {
                self.segment(tok, &text[last..m.start()], base + last, g + 1, out)?;
            }
            out.ids.push(added.ids[m.pattern().as_usize()]);
            out.offsets.push((base + m.start(), base + m.end()));
            last = m.end();
        }
        if last < text.len() {
            self.segment(tok, &text[last..], base + last, g + 1, out)?;
        }
        Some(())
    }

    /// Splits off each digit (when the pre-tokenizer does), then GPT-2's regex on the rest.
    fn pretokenize(&self, tok: &tokenizers::Tokenizer, text: &str, base: usize, out: &mut Encoded) -> Option<()> {
        let Some(digits) = &self.digits else { return self.gpt2(tok, text, base, out) };
        let mut last = 0;
        for m in digits.find_iter(text) {
            if m.start() > last {
                self.gpt2(tok, &text[last..m.start()], base + last, out)?;
            }
            self.bpe(tok, m.as_str(), base + m.start(), out)?;
            last = m.end();
        }
        if last < text.len() {
            self.gpt2(tok, &text[last..], base + last, out)?;
        }
        Some(())
    }

    /// GPT-2's regex on `text`, whose end ends the text for its `\s+(?!\S)`.
    fn gpt2(&self, tok: &tokenizers::Tokenizer, text: &str, base: usize, out: &mut Encoded) -> Option<()> {
        let mut pos = 0;
        while pos < text.len() {
            let m = self.re.find_at(text, pos)?;
            if m.start() != pos {
                return None; // the pattern covers every char; anything else is a surprise
            }
            let mut end = m.end();
            let piece = m.as_str();
            // `\s+(?!\S)`: a whitespace run followed by a non-space leaves its last char to
            // start the next pre-token.
            if end < text.len() && piece.chars().all(char::is_whitespace) {
                let last = piece.chars().next_back()?;
                if self.newline_runs && (last == '\r' || last == '\n') {
                    self.bpe(tok, piece, base + pos, out)?;
                    pos = end;
                    continue;
                }
                if piece.len() > last.len_utf8() {
                    end -= last.len_utf8();
                }
            }
            self.bpe(tok, &text[pos..end], base + pos, out)?;
            pos = end;
        }
        Some(())
    }

    fn bpe(&self, tok: &tokenizers::Tokenizer, piece: &str, base: usize, out: &mut Encoded) -> Option<()> {
        let key = piece.as_bytes();
        let shard = &self.cache[self.hasher.hash_one(key) as usize % SHARDS];
        // A hit is copied out under the lock (no allocation per pre-token).
        if let Some(ids) = shard.lock().ok()?.get(key) {
            return self.emit(ids, piece, base, out);
        }
        let mapped: String = key.iter().map(|&b| self.byte_char[b as usize]).collect();
        let ids: Box<[u32]> = tok.get_model().tokenize(&mapped).ok()?.iter().map(|t| t.id).collect();
        self.emit(&ids, piece, base, out)?;
        let mut s = shard.lock().ok()?;
        if s.len() >= SHARD_CAP {
            s.clear();
        }
        s.insert(key.into(), ids);
        Some(())
    }

    /// Appends `ids` (the BPE of `piece`, at `base` in the input) with their byte offsets.
    fn emit(&self, ids: &[u32], piece: &str, base: usize, out: &mut Encoded) -> Option<()> {
        let mut at = 0;
        for &id in ids {
            let len = *self.byte_len.get(id as usize)? as usize;
            if len == 0 || at + len > piece.len() {
                return None;
            }
            // A token holding part of a multi-byte char is given the whole char, as the crate
            // maps offsets back to the original text.
            let (mut a, mut b) = (at, at + len);
            while !piece.is_char_boundary(a) {
                a -= 1;
            }
            while !piece.is_char_boundary(b) {
                b += 1;
            }
            out.ids.push(id);
            out.offsets.push((base + a, base + b));
            at += len;
        }
        (at == piece.len()).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::rng::Rng;

    fn fixture() -> tokenizers::Tokenizer {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer/tokenizer.json");
        tokenizers::Tokenizer::from_file(dir).expect("fixture tokenizer")
    }

    fn same(tok: &tokenizers::Tokenizer, fast: &FastByteLevel, text: &str) {
        let want = tok.encode(text, false).expect("crate encode");
        let got = fast.encode(tok, text).unwrap_or_else(|| panic!("fast path declined {text:?}"));
        assert_eq!(got.ids, want.get_ids(), "ids of {text:?}");
        assert_eq!(got.offsets, want.get_offsets(), "offsets of {text:?}");
    }

    fn hard_text(tok: &tokenizers::Tokenizer, fast: &FastByteLevel) {
        for t in [
            "",
            " ",
            "hello world",
            "  two spaces before",
            "trailing   ",
            "tabs\t\tand\nnew\n\nlines \n x",
            "a  \n  b\r\n\r\n  c \n\t\n   d\n",
            "it's they're we've I'm you'll he'd IT'S",
            "numbers 12345 and ٣٤ and ½",
            "1 22 333 4444 x1y22 3.14159 -7 1e10 ١٢٣ Ⅻ ⑫",
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            "<|im_start|><|im_end|>glued<|endoftext|>",
            "émoji 🦀🔥 and 中文字符 and кириллица",
            "\u{3000}ideographic space\u{a0}nbsp\u{2028}",
            "punct!!! ... ?? ''' \"quoted\"",
        ] {
            same(tok, fast, t);
        }
    }

    fn random_text(tok: &tokenizers::Tokenizer, fast: &FastByteLevel, rounds: usize) {
        let pool: Vec<&str> = vec![
            "a",
            "b",
            "Z",
            "é",
            "ß",
            "中",
            "к",
            "1",
            "42",
            " 7",
            "٣",
            "²",
            " ",
            " ",
            "  ",
            "\n",
            "\t",
            "\r\n",
            "\u{a0}",
            "\u{3000}",
            "'",
            "'s",
            "'ll",
            "!",
            ".",
            "🦀",
            "-",
            "_",
            "<|im_start|>",
            "<|im_end|>",
            "the",
            " the",
            "pot",
        ];
        let mut rng = Rng::new(7);
        for _ in 0..rounds {
            let n = rng.below(24);
            let t: String = (0..n).map(|_| pool[rng.below(pool.len())]).collect();
            same(tok, fast, &t);
        }
    }

    #[test]
    fn equals_the_crate_on_hard_text() {
        let tok = fixture();
        let fast = FastByteLevel::new(&tok).expect("the fixture is byte-level BPE");
        hard_text(&tok, &fast);
    }

    #[test]
    fn equals_the_crate_on_random_text() {
        let tok = fixture();
        let fast = FastByteLevel::new(&tok).expect("the fixture is byte-level BPE");
        random_text(&tok, &fast, 3000);
    }

    /// Every GGUF pre-tokenizer the fast path takes gives the crate's ids and offsets; the ones
    /// it declines go to the crate.
    #[test]
    fn every_pre_tokenizer_it_takes_equals_the_crate() {
        let mut taken = vec![];
        for p in super::super::pretok::TABLE {
            let mut j: serde_json::Value = serde_json::to_value(fixture()).expect("json");
            j["pre_tokenizer"] = super::super::pretok::pre_tokenizer_json(p);
            let tok: tokenizers::Tokenizer = j.to_string().parse().expect("parse");
            let Some(fast) = FastByteLevel::new(&tok) else { continue };
            hard_text(&tok, &fast);
            random_text(&tok, &fast, 1000);
            taken.extend(p.names.iter().copied());
        }
        for name in ["gpt-2", "smollm", "starcoder", "command-r", "llama-bpe", "qwen2", "qwen35"] {
            assert!(taken.contains(&name), "{name} should take the fast path");
        }
        for name in ["default", "deepseek-coder", "falcon", "tekken", "gpt-4o"] {
            assert!(!taken.contains(&name), "{name} has no fast path");
        }
    }

    #[test]
    fn declines_other_shapes() {
        let mut j: serde_json::Value = serde_json::to_value(fixture()).expect("json");
        j["normalizer"] = serde_json::json!({"type": "NFC"});
        let tok: tokenizers::Tokenizer = j.to_string().parse().expect("parse");
        assert!(FastByteLevel::new(&tok).is_none());
    }
}
