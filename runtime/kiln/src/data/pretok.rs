//! GGUF `tokenizer.ggml.pre` names → the pre-tokenizer each stands for: the regexes llama.cpp
//! applies (`src/llama-vocab.cpp`, the `LLAMA_VOCAB_PRE_TYPE_*` cases of
//! `llm_tokenizer_bpe`), as a `tokenizers` pre-tokenizer built the way transformers builds it:
//! a `Sequence` of `Split` regexes (each match and each gap between matches its own piece,
//! `Isolated`), then `ByteLevel` without its own regex.
//!
//! Where llama.cpp rewrote a regex for its own engine and kept the original from
//! `tokenizer.json` in a comment (`(?i:'s|…)` for `(?:'[sS]|…)`, the `\p{Lu}\p{Lt}…` classes of
//! tekken and gpt-4o for lookaheads), the original is used here: it is what transformers runs,
//! and the two agree wherever llama.cpp matches transformers.
//!
//! Names that share one pre-tokenizer (one row below):
//! - GPT-2's regex alone: `gpt-2`, `phi-2`, `mpt`, `olmo`, `jais`, `trillion`,
//!   `granite-docling`, `exaone4`, `gigachat`, `a.x-4.0`, `mellum`.
//! - digits one by one, then GPT-2's regex: `starcoder`, `refact`, `command-r`, `smollm`,
//!   `codeshell`, `exaone`, `minerva-7b`, `mellum2`.
//! - Llama 3 (digits 1–3 at a time, a letter run takes one leading non-letter): `llama3`,
//!   `llama-bpe`, `llama-v3`, `falcon3`, `falcon-h1`, `pixtral`, `midm-2.0`, `lfm2`,
//!   `jina-v5-nano`, `glm4`, `glm5` (whole-word vocabulary hits skip the merges), and
//!   `dbrx`, `smaug-bpe`, `chatglm-bpe` (the same regex, merges always applied).
//! - Qwen2 (Llama 3's with single digits): `qwen2`, `deepseek-r1-qwen`, `kormo`, `f2llmv2`,
//!   `megrez`, `stablelm2`, `hunyuan`, `solar-open`, `grok-2`.
//! - DeepSeek V3: `deepseek-v3`, `hunyuan-dense`, `joyai-llm`, `hy_v4`.
//! - GPT-4o: `gpt-4o`, `llama4`, `kanana2`, `talkie`, `minimax-m2`.
//! - BLOOM: `bloom`, `poro-chat`, `gpt3-finnish`.
//! - one name each: `default` (also a GGUF without the key, as in llama.cpp), `qwen35`,
//!   `deepseek-llm`, `deepseek-coder`, `falcon`, `viking`, `tekken`, `chameleon`,
//!   `seed-coder`, `jais-2`, `minicpm5`.
//!
//! Not here (refused as unknown): the names whose llama.cpp splitting is custom code rather
//! than a regex (`kimi-k2`, `afmoe`, `superbpe`), the ones without GPT-2 byte encoding
//! (`gemma4`, `sarvam-moe`, `whitespace`), possessive-quantifier ones (`bailingmoe`,
//! `llada-moe`), and encoder-only vocabularies (`jina-*`, `roberta-bpe`, `modern-bert`, …).

use serde_json::{Value, json};

/// One pre-tokenizer: the names that select it, its regexes (applied in order, each on the
/// pieces the previous one left), and whether a pre-token found whole in the vocabulary skips
/// the merges (llama.cpp's `ignore_merges`, transformers' BPE `ignore_merges`).
pub(crate) struct PreTokenizer {
    pub names: &'static [&'static str],
    pub regexes: &'static [&'static str],
    pub ignore_merges: bool,
}

/// GPT-2's regex as llama.cpp writes it (transformers' `ByteLevel` regex adds a final `|\s+`,
/// which only ever matches what this one leaves as a gap: the same pieces).
pub(crate) const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Each digit its own piece.
pub(crate) const DIGIT: &str = r"\p{N}";
pub(crate) const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN2: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(crate) const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// How [`LLAMA3`], [`QWEN2`] and [`QWEN35`] end: the only look-around in them.
pub(crate) const SPACE_TAIL: &str = r"|\s+(?!\S)|\s+";
const BLOOM: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

pub(crate) const TABLE: &[PreTokenizer] = &[
    PreTokenizer {
        names: &["default"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &[
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
            "gigachat",
            "a.x-4.0",
            "mellum",
        ],
        regexes: &[GPT2],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b", "mellum2"],
        regexes: &[DIGIT, GPT2],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &[
            "llama3",
            "llama-bpe",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
            "glm4",
            "glm5",
        ],
        regexes: &[LLAMA3],
        ignore_merges: true,
    },
    PreTokenizer { names: &["dbrx", "smaug-bpe", "chatglm-bpe"], regexes: &[LLAMA3], ignore_merges: false },
    PreTokenizer {
        names: &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        regexes: &[QWEN2],
        ignore_merges: false,
    },
    PreTokenizer { names: &["qwen35"], regexes: &[QWEN35], ignore_merges: false },
    PreTokenizer {
        names: &["deepseek-llm"],
        regexes: &[
            r"[\r\n]",
            r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
            r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
            r"\s+$",
            r"[一-龥ࠀ-一가-퟿]+",
            r"\p{N}+",
        ],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        regexes: &[
            r"\p{N}{1,3}",
            r"[一-龥぀-ゟ゠-ヿ]+",
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["deepseek-coder"],
        regexes: &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}"],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["falcon"],
        regexes: &[
            r"[\p{P}\$\+<=>\^~\|`]+",
            r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
            r"[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
    },
    PreTokenizer { names: &["bloom", "poro-chat", "gpt3-finnish"], regexes: &[BLOOM], ignore_merges: false },
    PreTokenizer { names: &["viking"], regexes: &[BLOOM, DIGIT], ignore_merges: false },
    PreTokenizer {
        names: &["tekken"],
        regexes: &[
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        ignore_merges: true,
    },
    PreTokenizer {
        names: &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        regexes: &[
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["chameleon"],
        regexes: &[
            r"<sentinel:[0-9]+>",
            r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
            r"([\t\n]|    |  )",
            r"\p{N}",
            r"[\p{P}!-/:-@\[-`{-~]",
            GPT2,
        ],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["seed-coder"],
        regexes: &[
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["jais-2"],
        regexes: &[
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
        ],
        ignore_merges: false,
    },
    PreTokenizer {
        names: &["minicpm5"],
        regexes: &[
            r"\p{N}{1,3}",
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ],
        ignore_merges: true,
    },
];

/// The pre-tokenizer a `tokenizer.ggml.pre` name selects.
pub(crate) fn find(name: &str) -> Option<&'static PreTokenizer> {
    TABLE.iter().find(|p| p.names.contains(&name))
}

/// Every name [`find`] knows, sorted.
pub(crate) fn known_names() -> Vec<&'static str> {
    let mut v: Vec<&str> = TABLE.iter().flat_map(|p| p.names.iter().copied()).collect();
    v.sort_unstable();
    v
}

/// `ByteLevel` as the last step: its own regex on (GPT-2's) or off.
fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The `pre_tokenizer` of `tokenizer.json` for `p`. GPT-2's regex last is left to `ByteLevel`
/// itself (as GPT-2's and SmolLM2's own `tokenizer.json` do), which is the shape kiln's fast
/// encoder handles; every other regex becomes a `Split`.
pub(crate) fn pre_tokenizer_json(p: &PreTokenizer) -> Value {
    match p.regexes.split_last() {
        Some((&GPT2, [])) => byte_level(true),
        Some((&GPT2, rest)) => {
            let mut steps: Vec<Value> = rest.iter().map(|r| split(r)).collect();
            steps.push(byte_level(true));
            json!({"type": "Sequence", "pretokenizers": steps})
        }
        _ => {
            let mut steps: Vec<Value> = p.regexes.iter().map(|r| split(r)).collect();
            steps.push(byte_level(false));
            json!({"type": "Sequence", "pretokenizers": steps})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_pre_tokenizer_builds() {
        let names = known_names();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(names, dedup, "a name in two rows");
        for p in TABLE {
            let json = json!({"type": "BPE", "vocab": {}, "merges": []});
            let tok = json!({"version": "1.0", "pre_tokenizer": pre_tokenizer_json(p), "model": json,
                "added_tokens": [], "normalizer": null, "post_processor": null, "decoder": null,
                "truncation": null, "padding": null});
            let built: Result<tokenizers::Tokenizer, _> = tok.to_string().parse();
            assert!(built.is_ok(), "{}: {:?}", p.names[0], built.err());
        }
    }
}
