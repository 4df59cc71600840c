//! SentencePiece tokenizers from GGUF (`tokenizer.ggml.model = llama`) against two oracles:
//! llama.cpp's reference token vectors (`models/ggml-vocab-{llama-spm,phi-3}.gguf` with their
//! `.inp`/`.out`, and `ggml-vocab-baichuan.gguf`, from the llama-cpp-python 0.3.36 sdist, fetched
//! and cached at test time) and
//! transformers 5.25 loading the same files (ids written to tests/fixtures/spm/expected.json by
//! tools/make_spm_fixtures.py), plus the committed tiny vocabularies and every kind of bad
//! tokenizer metadata.

use std::path::{Path, PathBuf};

use kiln::data::tokenizer::TextTokenizer;
use kiln::formats::gguf::{GgufFile, MetaArray, MetaValue};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/spm")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[path = "common/llama_cpp.rs"]
mod llama_cpp;
use llama_cpp::llama_cpp_src as llama_cpp;

fn tokenizer(path: &Path) -> TextTokenizer {
    TextTokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap()
}

/// kiln's ids and decoded text for each hard text equal the SentencePiece layout's; where
/// transformers' own build of the file differs (a `Metaspace` adds no `▁` before text that
/// starts with a space nor after a special token, and ignores `add_space_prefix = false`), the
/// difference is counted and printed.
fn check_expected(name: &str, tok: &TextTokenizer) {
    let e = expected();
    let texts = e["texts"].as_array().unwrap();
    let v = &e["vocabs"][name];
    assert_eq!(tok.bos.as_ref().map(|s| s.id as u64), v["bos"].as_u64(), "{name}: BOS");
    assert_eq!(tok.eos.as_ref().map(|s| s.id as u64), v["eos"].as_u64(), "{name}: EOS");
    assert_eq!(tok.add_bos, v["add_bos"].as_bool().unwrap(), "{name}: add_bos");
    let mut same_as_transformers = 0;
    for (i, t) in texts.iter().enumerate() {
        let t = t.as_str().unwrap();
        let got = tok.encode(t).unwrap().ids;
        assert_eq!(got, ids(&v["sentencepiece"][i]), "{name}: text {i} {t:?}");
        same_as_transformers += usize::from(got == ids(&v["transformers"][i]));
        let back = tok.decode(&got).unwrap();
        assert_eq!(back, v["decoded"][i].as_str().unwrap(), "{name}: decoding text {i} {t:?}");
        // Text without special tokens comes back as it was written.
        if !t.contains('<') {
            assert_eq!(back, t, "{name}: round trip of text {i}");
        }
    }
    eprintln!(
        "{name}: {} hard texts equal to the SentencePiece layout; {same_as_transformers} equal to transformers' own build",
        texts.len()
    );
}

#[test]
fn tiny_vocabularies_match_the_oracles() {
    let t0 = std::time::Instant::now();
    let tok = tokenizer(&fixtures().join("tiny-spm.gguf"));
    assert!(tok.vocab_size() <= 1024);
    check_expected("tiny-spm", &tok);
    // The control token is special, the user-defined one an added token that is not.
    let added = tok.added_tokens();
    let find = |s: &str| added.iter().find(|a| a.1 == s).map(|a| a.2);
    assert_eq!(
        (find("<|end|>"), find("<tool>"), find("<s>"), find("<0x41>")),
        (Some(true), Some(false), Some(true), None)
    );
    // A character no token spells falls back to its UTF-8 bytes, and decodes back.
    let e = tok.encode("€").unwrap().ids;
    let pieces: Vec<String> = e.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, ["▁", "<0xE2>", "<0x82>", "<0xAC>"]);
    assert_eq!(tok.decode(&e).unwrap(), "€");

    let np = tokenizer(&fixtures().join("tiny-spm-noprefix.gguf"));
    check_expected("tiny-spm-noprefix", &np);
    assert_ne!(np.encode("Hello").unwrap().ids, tok.encode("Hello").unwrap().ids, "add_space_prefix has no effect");
    // Gemma: runs of spaces stored as real spaces are respelled `▁▁…` and reached; merges
    // follow the token order.
    let gemma = tokenizer(&fixtures().join("tiny-gemma.gguf"));
    check_expected("tiny-gemma", &gemma);
    let four = gemma.encode("four    spaces").unwrap().ids;
    assert!(four.iter().any(|&i| gemma.id_to_token(i).as_deref() == Some("▁▁▁")), "{four:?}");
    eprintln!("tiny SentencePiece vocabularies checked in {:.2}s", t0.elapsed().as_secs_f64());
}

/// llama.cpp's reference vectors: for each `.inp` text, kiln's ids equal the `.out` line (as
/// llama.cpp's test-tokenizer-0 tokenizes it: no BOS, no special tokens parsed); and the hard
/// texts against transformers loading the same file.
#[test]
fn llama_cpp_vocabularies_match_the_reference_vectors() {
    let Some(src) = llama_cpp() else { return };
    for name in ["llama-spm", "phi-3"] {
        let t0 = std::time::Instant::now();
        let path = src.join(format!("models/ggml-vocab-{name}.gguf"));
        let tok = tokenizer(&path);
        let built = t0.elapsed().as_secs_f64();
        let inp = std::fs::read_to_string(path.with_extension("gguf.inp")).unwrap();
        let out = std::fs::read_to_string(path.with_extension("gguf.out")).unwrap();
        let inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
        let outputs: Vec<&str> = out.split('\n').collect();
        assert!(inputs.len() > 40 && outputs.len() >= inputs.len(), "{name}: {} inputs", inputs.len());
        let mut bad = Vec::new();
        for (i, (t, o)) in inputs.iter().zip(&outputs).enumerate() {
            let want: Vec<u32> = o.split_whitespace().map(|x| x.parse().unwrap()).collect();
            let got = tok.encode(t).unwrap().ids;
            if got != want {
                bad.push(format!("{i} {t:?}: kiln {got:?}, llama.cpp {want:?}"));
            }
            // No special-token spellings in these texts: decoding gives the text back.
            assert_eq!(tok.decode(&got).unwrap(), *t, "{name}: round trip of {t:?}");
        }
        assert!(bad.is_empty(), "{name}: {} of {} vectors differ:\n{}", bad.len(), inputs.len(), bad.join("\n"));
        check_expected(name, &tok);
        eprintln!(
            "{name}: {}/{} llama.cpp vectors equal (tokenizer built in {built:.2}s, all in {:.2}s)",
            inputs.len(),
            inputs.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    // Baichuan has no reference vectors: the hard texts against transformers' builder.
    let t0 = std::time::Instant::now();
    check_expected("baichuan", &tokenizer(&src.join("models/ggml-vocab-baichuan.gguf")));
    eprintln!("baichuan checked in {:.2}s", t0.elapsed().as_secs_f64());
}

/// A Llama GGUF with a SentencePiece tokenizer loads as a model (what `kiln info --model` and
/// `kiln generate --model` do): the prompt starts with BOS (`add_bos_token`), and generated ids
/// decode.
#[test]
fn a_sentencepiece_model_loads_and_generates() {
    let path = fixtures().join("tiny-spm.gguf");
    let v = kiln::info::model(&path).unwrap();
    assert_eq!(
        (v["tokenizer"].as_str(), v["vocab"].as_u64(), v["layers"].as_u64()),
        (Some("llama"), Some(1000), Some(1))
    );
    let m = kiln::model::load::load(&kiln::model::load::LoadSpec { model: Some(path), adapter: None }).unwrap();
    let prompt = kiln::infer::raw_prompt(&m.tokenizer, "Hello world").unwrap();
    let want: Vec<i32> =
        std::iter::once(1).chain(m.tokenizer.encode("Hello world").unwrap().ids.iter().map(|&i| i as i32)).collect();
    assert_eq!(prompt, want);
    let opts = kiln::infer::GenOptions { max_new_tokens: 4, ..Default::default() };
    let mut cache = kiln::infer::Cache::new(&m.model);
    let out =
        kiln::infer::generate_text(&m.model, &mut cache, &m.tokenizer, &prompt, &opts, &[], None, &mut |_| {}).unwrap();
    assert!(!out.generated.tokens.is_empty(), "nothing generated");
    eprintln!("tiny SentencePiece model generated {:?}", out.text);
}

/// Bad tokenizer metadata: an error naming the file and the key, never a panic.
#[test]
fn bad_metadata_is_refused_with_the_key() {
    let path = fixtures().join("tiny-spm.gguf");
    let g = GgufFile::open(&path).unwrap();
    let n = match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => a.len(),
        _ => panic!("no tokens"),
    };
    let tokens: Vec<String> = match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(MetaArray::Str(s))) => s.iter().map(str::to_string).collect(),
        _ => unreachable!(),
    };
    let with = |key: &str, v: Option<MetaValue>| {
        let mut m: Vec<(String, MetaValue)> = g.metadata.iter().filter(|(k, _)| k != key).cloned().collect();
        if let Some(v) = v {
            m.push((key.to_string(), v));
        }
        m
    };
    let renamed = |from: &str, to: &str| {
        let s: Vec<String> = tokens.iter().map(|t| if t == from { to.to_string() } else { t.clone() }).collect();
        MetaValue::Array(MetaArray::Str(s.iter().collect()))
    };
    let mut nan = vec![0f32; n];
    nan[7] = f32::NAN;
    type Meta = Vec<(String, MetaValue)>;
    let cases: Vec<(&str, Meta, &str)> = vec![
        (
            "tokenizer.ggml.scores",
            with("tokenizer.ggml.scores", Some(MetaValue::Array(MetaArray::F32(vec![0.0; n - 1])))),
            "has 999 entries but tokenizer.ggml.tokens has 1000",
        ),
        (
            "tokenizer.ggml.token_type",
            with("tokenizer.ggml.token_type", Some(MetaValue::Array(MetaArray::I32(vec![1; n + 1])))),
            "has 1001 entries",
        ),
        (
            "tokenizer.ggml.scores",
            with("tokenizer.ggml.scores", Some(MetaValue::Array(MetaArray::F32(nan)))),
            "entry 7 is NaN",
        ),
        ("tokenizer.ggml.scores", with("tokenizer.ggml.scores", None), "missing"),
        (
            "tokenizer.ggml.bos_token_id",
            with("tokenizer.ggml.bos_token_id", Some(MetaValue::U32(n as u32))),
            "not a token id",
        ),
        (
            "tokenizer.ggml.eos_token_id",
            with("tokenizer.ggml.eos_token_id", Some(MetaValue::I32(-1))),
            "not a token id",
        ),
        ("tokenizer.ggml.bos_token_id", with("tokenizer.ggml.bos_token_id", None), "add_bos_token is true"),
        ("tokenizer.ggml.tokens", with("tokenizer.ggml.tokens", Some(renamed("<0x41>", "A-byte"))), "missing <0x41>"),
        ("tokenizer.ggml.tokens", with("tokenizer.ggml.tokens", Some(renamed("<s>", "</s>"))), "repeats token"),
        (
            "tokenizer.ggml.token_type",
            with("tokenizer.ggml.token_type", Some(MetaValue::Array(MetaArray::I32(vec![9; n])))),
            "token types are 0 to 6",
        ),
        (
            "tokenizer.ggml.add_space_prefix",
            with("tokenizer.ggml.add_space_prefix", Some(MetaValue::U8(1))),
            "not a boolean",
        ),
    ];
    for (key, meta, says) in cases {
        let e = match TextTokenizer::from_gguf_metadata(&meta, &path) {
            Ok(_) => panic!("{key} ({says}): accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("tiny-spm.gguf") && e.contains(key) && e.contains(says), "{key}: {e}");
    }
    // No byte tokens at all is refused without an unknown token to stand for what they spell…
    let mut m: Vec<(String, MetaValue)> = with("tokenizer.ggml.unknown_token_id", None);
    let no_bytes: Vec<&String> = tokens.iter().filter(|t| !(t.len() == 6 && t.starts_with("<0x"))).collect();
    let k = no_bytes.len();
    for (key, v) in [
        ("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::Str(no_bytes.iter().collect()))),
        ("tokenizer.ggml.scores", MetaValue::Array(MetaArray::F32(vec![0.0; k]))),
        ("tokenizer.ggml.token_type", MetaValue::Array(MetaArray::I32(vec![1; k]))),
    ] {
        m.retain(|(x, _)| x != key);
        m.push((key.into(), v));
    }
    let e = TextTokenizer::from_gguf_metadata(&m, &path).err().unwrap().to_string();
    assert!(e.contains("tokenizer.ggml.tokens") && e.contains("unknown_token_id"), "{e}");
    // …and with one, characters outside the vocabulary become it.
    m.push(("tokenizer.ggml.unknown_token_id".into(), MetaValue::U32(0)));
    let t = TextTokenizer::from_gguf_metadata(&m, &path).unwrap();
    assert!(t.encode("a€").unwrap().ids.contains(&0));
}

/// Random byte mutations of a SentencePiece file's tokenizer metadata: an error or a tokenizer
/// whose special ids lie inside its vocabulary and that encodes, never a panic.
#[test]
fn mutated_metadata_never_panics() {
    use kiln::formats::gguf::parse_header;
    let t0 = std::time::Instant::now();
    let seed = std::fs::read(fixtures().join("tiny-spm-noprefix.gguf")).unwrap();
    let at = seed.windows(20).position(|w| w == b"tokenizer.ggml.model").unwrap();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut built, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut b = seed.clone();
        for _ in 0..1 + next() % 4 {
            let i = at + (next() as usize) % (b.len() - at);
            b[i] = match next() % 3 {
                0 => b[i] ^ (1 << (next() % 8)),
                1 => 0xFF,
                _ => 0,
            };
        }
        let p = Path::new("mutant.gguf");
        let Ok(h) = parse_header(&b, p) else {
            refused += 1;
            continue;
        };
        match TextTokenizer::from_gguf_metadata(&h.metadata, p) {
            Ok(t) => {
                for s in [&t.bos, &t.eos, &t.pad].into_iter().flatten() {
                    assert!((s.id as usize) < t.vocab_size(), "special id {}", s.id);
                }
                t.encode("Hello  world € <tool>").unwrap();
                built += 1;
            }
            Err(_) => refused += 1,
        }
    }
    eprintln!("SentencePiece mutations: {built} built, {refused} refused in {:.2}s", t0.elapsed().as_secs_f64());
    assert!(refused > 20 && built > 20, "{built} built, {refused} refused");
}
