//! GGUF byte-level BPE tokenizers against llama.cpp's own test vectors: for every
//! `models/ggml-vocab-*.gguf` of llama.cpp (from the llama-cpp-python source package, fetched
//! once and cached under the target dir) whose model is `gpt2`, kiln's ids for each text of its
//! `.inp` equal the `.out` line (transformers' ids, which llama.cpp's own test checks itself
//! against). Also the refusals of bad tokenizer metadata: an unknown pre-tokenizer, merges of
//! tokens the vocabulary lacks, a BOS/EOS id outside it, token arrays of different lengths. And GGUF export's `tokenizer.ggml.pre`: SmolLM2 through a
//! transformers folder back to GGUF is `smollm` again, with the same ids.

mod common;
#[path = "common/llama_cpp.rs"]
mod llama_cpp;

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::data::tokenizer::TextTokenizer;
use kiln::formats::gguf::{GgufFile, MetaArray, MetaValue};

/// The byte-level BPE vocabularies with vectors: (file stem, `tokenizer.ggml.pre`).
const VOCABS: &[(&str, &str)] = &[
    ("gpt-2", "gpt-2"),
    ("mpt", "mpt"),
    ("starcoder", "starcoder"),
    ("refact", "refact"),
    ("command-r", "command-r"),
    ("falcon", "falcon"),
    ("llama-bpe", "llama-bpe"),
    ("qwen2", "qwen2"),
    ("qwen35", "qwen35"),
    ("deepseek-llm", "deepseek-llm"),
    ("deepseek-coder", "deepseek-coder"),
];

/// llama.cpp's `models/` folder: `KILN_LLAMA_VOCAB_DIR`, else the shared cached copy
/// (`tests/common/llama_cpp.rs`). `None` (with the reason printed) only outside CI.
fn vocab_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KILN_LLAMA_VOCAB_DIR") {
        return Some(PathBuf::from(p));
    }
    llama_cpp::llama_cpp_src().map(|src| src.join("models"))
}

/// The texts of a `.inp` file and the ids of its `.out` file, as llama.cpp's
/// `tests/test-tokenizer-0` reads them.
fn vectors(gguf: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let p = PathBuf::from(format!("{}.{ext}", gguf.display()));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    let inp = read("inp");
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if texts.last() == Some(&"") {
        texts.pop();
    }
    let out = read("out");
    let ids: Vec<Vec<u32>> =
        out.lines().map(|l| l.split_whitespace().map(|x| x.parse().expect("an id")).collect()).collect();
    assert_eq!(texts.len(), ids.len(), "{}: .inp and .out differ in length", gguf.display());
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

#[test]
fn llama_cpp_vocabularies_give_their_vectors() {
    let Some(dir) = vocab_dir() else { return };
    let t0 = Instant::now();
    let mut failures = vec![];
    for (stem, pre) in VOCABS {
        let path = dir.join(format!("ggml-vocab-{stem}.gguf"));
        let t = Instant::now();
        let g = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.get("tokenizer.ggml.pre").and_then(MetaValue::as_str), Some(*pre), "{stem}");
        let t_open = t.elapsed().as_secs_f64();
        let tok = TextTokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{e}"));
        let t_build = t.elapsed().as_secs_f64() - t_open;
        let cases = vectors(&path);
        let mut bad = 0;
        for (text, want) in &cases {
            let got = tok.encode(text).unwrap();
            // The fast path (where it applies) equals the crate on every text too.
            let slow = tok.encode_with_crate(text).unwrap();
            assert_eq!((&got.ids, &got.offsets), (&slow.ids, &slow.offsets), "{stem}: fast != crate on {text:?}");
            if got.ids != *want {
                bad += 1;
                failures.push(format!("{stem}: {text:?}: kiln {:?} != llama.cpp {want:?}", got.ids));
            }
        }
        eprintln!(
            "{stem} (pre {pre}, {} tokens, fast path {}): {}/{} texts match in {:.2}s \
             (open {t_open:.2}s, build {t_build:.2}s)",
            tok.vocab_size(),
            tok.has_fast_path(),
            cases.len() - bad,
            cases.len(),
            t.elapsed().as_secs_f64()
        );
    }
    eprintln!("all vocabularies in {:.1}s", t0.elapsed().as_secs_f64());
    assert!(failures.is_empty(), "{} texts differ:\n{}", failures.len(), failures.join("\n"));
}

/// A tiny byte-level vocabulary: the metadata of a GGUF tokenizer with `pre` (if any).
fn meta(pre: Option<&str>, merges: &[&str], bos: u32) -> Vec<(String, MetaValue)> {
    let tokens = ["a", "b", "ab", "Ġ", "1", "2", "12", "<s>"];
    let mut m = vec![
        ("tokenizer.ggml.model".to_string(), MetaValue::Str("gpt2".into())),
        ("tokenizer.ggml.tokens".to_string(), MetaValue::Array(MetaArray::Str(tokens.iter().collect()))),
        ("tokenizer.ggml.token_type".to_string(), MetaValue::Array(MetaArray::I32(vec![1, 1, 1, 1, 1, 1, 1, 3]))),
        ("tokenizer.ggml.merges".to_string(), MetaValue::Array(MetaArray::Str(merges.iter().collect()))),
        ("tokenizer.ggml.bos_token_id".to_string(), MetaValue::U32(bos)),
    ];
    if let Some(p) = pre {
        m.push(("tokenizer.ggml.pre".to_string(), MetaValue::Str(p.into())));
    }
    m
}

fn refused(m: &[(String, MetaValue)]) -> String {
    match TextTokenizer::from_gguf_metadata(m, Path::new("bad.gguf")) {
        Ok(_) => panic!("a bad tokenizer was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pre_tokenizer_names_select_their_regexes() {
    let ids = |pre: Option<&str>| {
        let tok = TextTokenizer::from_gguf_metadata(&meta(pre, &["a b", "1 2"], 7), Path::new("t.gguf")).unwrap();
        tok.encode("ab12").unwrap().ids
    };
    // GPT-2 keeps a digit run whole; smollm (and starcoder, …) split each digit off first.
    assert_eq!(ids(Some("gpt-2")), [2, 6]);
    assert_eq!(ids(Some("smollm")), [2, 4, 5]);
    assert_eq!(ids(Some("qwen2")), [2, 4, 5]);
    assert_eq!(ids(Some("llama-bpe")), [2, 6]);
    // No key (or an empty name) is llama.cpp's `default`.
    assert_eq!(ids(None), ids(Some("default")));
    assert_eq!(ids(Some("")), ids(Some("default")));
}

#[test]
fn bad_tokenizer_metadata_is_refused_naming_file_and_key() {
    let e = refused(&meta(Some("no-such-pre"), &["a b"], 7));
    for want in ["bad.gguf", "tokenizer.ggml.pre", "no-such-pre", "llama-bpe", "qwen2", "smollm"] {
        assert!(e.contains(want), "{want} not in: {e}");
    }
    let mut m = meta(None, &["a b"], 7);
    m.push(("tokenizer.ggml.pre".into(), MetaValue::U32(3)));
    let e = refused(&m);
    assert!(e.contains("bad.gguf") && e.contains("tokenizer.ggml.pre"), "{e}");
    let e = refused(&meta(Some("gpt-2"), &["a c"], 7));
    for want in ["bad.gguf", "tokenizer.ggml.merges", "entry 0", "`c`"] {
        assert!(e.contains(want), "{want} not in: {e}");
    }
    let e = refused(&meta(Some("gpt-2"), &["b a"], 7));
    assert!(e.contains("tokenizer.ggml.merges") && e.contains("`ba`"), "{e}");
    let e = refused(&meta(Some("gpt-2"), &["a b"], 8));
    assert!(e.contains("bad.gguf") && e.contains("tokenizer.ggml.bos_token_id"), "{e}");
    let mut m = meta(Some("gpt-2"), &["a b"], 7);
    m.push(("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(99)));
    let e = refused(&m);
    assert!(e.contains("bad.gguf") && e.contains("tokenizer.ggml.eos_token_id"), "{e}");
    // Token arrays that disagree in length.
    let mut m = meta(Some("gpt-2"), &["a b"], 7);
    m.retain(|(k, _)| k != "tokenizer.ggml.token_type");
    m.push(("tokenizer.ggml.token_type".into(), MetaValue::Array(MetaArray::I32(vec![1; 5]))));
    let e = refused(&m);
    for want in ["bad.gguf", "tokenizer.ggml.token_type", "5 entries", "8"] {
        assert!(e.contains(want), "{want} not in: {e}");
    }
}

/// SmolLM2 (a GGUF whose `tokenizer.ggml.pre` is `smollm`) written as a transformers folder and
/// exported from it to GGUF again: the folder's tokenizer hashes to llama.cpp's `smollm`
/// (855059…6249, as transformers 5.25 on the same GGUF: tests/fixtures/smollm2/pre.json), the
/// export writes `smollm`, and kiln on the exported GGUF gives the folder's ids on a hard text,
/// which are transformers' ids on the source GGUF. (A GGUF source keeping its name:
/// tests/gguf.rs.)
#[test]
fn smollm2_exports_its_own_pre_tokenizer() {
    use kiln::core::quant::GgmlType;
    let Some(src) = common::smollm2() else { return };
    let t0 = Instant::now();
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gguf-export-pre");
    let _ = std::fs::remove_dir_all(&d);
    let (model, tok) = kiln::model::load_with_tokenizer(&src, false).unwrap();
    let folder = d.join("hf");
    // The folder's tokenizer files are all a folder source's tokenizer metadata comes from.
    std::fs::create_dir_all(&folder).unwrap();
    tok.save_hf(&folder).unwrap();
    let hf = TextTokenizer::load(&folder).unwrap();
    let tj = hf.to_json().unwrap();
    assert_eq!(
        kiln::export::pre_hash::check_hash(&tj, &folder).unwrap(),
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    );
    assert_eq!(kiln::export::pre_hash::pre_name(&tj, &folder, None).unwrap(), "smollm");
    let out = d.join("again.gguf");
    kiln::export::export_gguf(&model, None, &folder, GgmlType::F16, false, &out).unwrap();
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get("tokenizer.ggml.pre").and_then(MetaValue::as_str), Some("smollm"));
    let back = TextTokenizer::from_gguf(&g).unwrap();
    // The hard text and transformers' ids for it on the source GGUF (tools/make_pre_fixtures.py).
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/smollm2/pre.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(fx["chkhsh"], "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249");
    let hard = fx["text"].as_str().unwrap();
    let transformers: Vec<u32> = serde_json::from_value(fx["ids"].clone()).unwrap();
    let want = hf.encode(hard).unwrap().ids;
    assert_eq!(back.encode(hard).unwrap().ids, want);
    assert_eq!(want, transformers, "transformers on the source GGUF");
    assert_eq!(tok.encode(hard).unwrap().ids, want, "the source GGUF's own tokenizer");
    // Digits one at a time (the `smollm` split), special tokens whole.
    assert_eq!(hf.decode(&want[..5]).unwrap(), "12345");
    assert!(want.contains(&hf.encode("<|im_start|>").unwrap().ids[0]));
    eprintln!("smollm2 folder → GGUF export with its pre-tokenizer: {:.1} s", t0.elapsed().as_secs_f64());
}
