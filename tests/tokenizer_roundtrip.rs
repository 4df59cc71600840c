//! The round trip of every tokenizer family through kiln's GGUF export: Llama 3 (`llama-bpe`)
//! and Qwen2 byte-level BPE, SentencePiece Llama 2 / Mistral (`llama-spm`), Phi-3, and a tiny
//! Gemma vocabulary (user-defined tokens, runs of spaces). On hard texts (digits, code, CJK,
//! emoji, whitespace runs, newlines, special tokens):
//!
//! transformers on the folder (committed ids) = kiln on the folder = kiln on its own GGUF export
//! = transformers on that GGUF (committed by tools/make_tokenizer_roundtrip_fixtures.py, valid
//! while the digest of the tokenizer metadata kiln writes is unchanged).
//!
//! The folders are what transformers 5.25 saves after loading llama.cpp's vocabulary GGUFs
//! (llama-cpp-python 0.3.36 sdist, fetched and cached at test time): their tokenizer.json is
//! committed without its vocabulary and merges, rebuilt here from the GGUF and checked against
//! the digests of transformers' own lists. One exception is pinned, not hidden: a folder whose
//! Metaspace adds `▁` to the first run of text only (transformers' Llama 2 layout) cannot be
//! said in a GGUF; kiln, like llama.cpp, reads the export adding it before text that starts with
//! a space and after special tokens too, so on such texts kiln's reading of the export is llama.cpp's reading of the
//! original vocabulary instead.

use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln::data::tokenizer::TextTokenizer;
use kiln::export::gguf_tokenizer::tokenizer_metadata;
use kiln::export::pre_hash::sha256_hex;
use kiln::formats::gguf::{GgufFile, MetaValue};
use kiln::formats::gguf_write::write_gguf;
use serde_json::Value;

#[path = "common/llama_cpp.rs"]
mod llama_cpp;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn strs<'a>(g: &'a GgufFile, key: &str) -> Vec<&'a str> {
    g.get(key).and_then(MetaValue::as_array).and_then(|a| a.strs()).map(|s| s.iter().collect()).unwrap_or_default()
}

/// The family's source vocabulary GGUF.
fn source(name: &str, fam: &Value, src: Option<&Path>) -> Option<PathBuf> {
    match fam["source"].as_str().unwrap() {
        "fixture" => Some(fixtures().join(format!("fixtures/spm/{name}.gguf"))),
        _ => src.map(|s| s.join(format!("models/ggml-vocab-{name}.gguf"))),
    }
}

/// transformers' folder for the family, written under the target folder: committed whole, or
/// its tokenizer.json's vocabulary and merges rebuilt from the source GGUF (checked against the
/// digests of transformers' lists).
fn hf_folder(name: &str, fam: &Value, gguf: &GgufFile) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tokenizer-roundtrip").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (f, text) in fam["files"].as_object().unwrap() {
        std::fs::write(dir.join(f), text.as_str().unwrap()).unwrap();
    }
    let mut tj = fam["tokenizer_json"].clone();
    if fam["source"] == "llama-cpp" {
        let tokens = strs(gguf, "tokenizer.ggml.tokens");
        let merges: Vec<(String, String)> = match gguf.get("tokenizer.ggml.merges") {
            Some(_) => strs(gguf, "tokenizer.ggml.merges")
                .iter()
                .map(|m| {
                    let (a, b) = m.split_once(' ').unwrap();
                    (a.to_string(), b.to_string())
                })
                .collect(),
            None => {
                let scores = gguf.get("tokenizer.ggml.scores").unwrap().as_array().unwrap().to_f64s().unwrap();
                kiln::data::tokenizer::sentencepiece_merges(&tokens, &scores)
            }
        };
        let digest = |v: &Value| sha256_hex(serde_json::to_string(v).unwrap().as_bytes());
        let token_list = Value::from(tokens.clone());
        let merge_list: Value = merges.iter().map(|(a, b)| Value::from(vec![a.as_str(), b.as_str()])).collect();
        assert_eq!(digest(&token_list), fam["vocab_digest"].as_str().unwrap(), "{name}: vocabulary ≠ transformers'");
        assert_eq!(digest(&merge_list), fam["merges_digest"].as_str().unwrap(), "{name}: merges ≠ transformers'");
        tj["model"]["vocab"] = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), Value::from(i))).collect();
        tj["model"]["merges"] = merge_list;
    }
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    dir
}

/// Reads `path` back with the `gguf` package (tools/gguf_dump.py): its tokenizer keys as kiln
/// wrote them.
fn gguf_package_reads(path: &Path, meta: &[(String, MetaValue)]) {
    let prefix = path.with_extension("dump");
    let tool = fixtures().join("../tools/gguf_dump.py");
    let out = std::process::Command::new("python3").arg(&tool).arg(path).arg(&prefix).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        other => {
            assert!(std::env::var_os("CI").is_none(), "gguf_dump.py failed on {}: {other:?}", path.display());
            eprintln!("SKIP gguf package check: {other:?}");
            return;
        }
    };
    drop(out);
    let dump: Value =
        serde_json::from_str(&std::fs::read_to_string(prefix.with_extension("dump.json")).unwrap()).unwrap();
    let m = &dump["metadata"];
    for (k, v) in meta {
        match v {
            MetaValue::Str(s) => assert_eq!(m[k].as_str(), Some(s.as_str()), "{k}"),
            MetaValue::Bool(b) => assert_eq!(m[k].as_bool(), Some(*b), "{k}"),
            MetaValue::U32(x) => assert_eq!(m[k].as_u64(), Some(*x as u64), "{k}"),
            MetaValue::Array(a) => assert_eq!(m[k]["len"].as_u64(), Some(a.len() as u64), "{k}"),
            other => panic!("{k}: unexpected {other:?}"),
        }
    }
}

#[test]
fn every_family_round_trips_through_the_gguf_export() {
    let e: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("fixtures/tokenizer_roundtrip/expected.json")).unwrap(),
    )
    .unwrap();
    let write = std::env::var_os("KILN_ROUNDTRIP_WRITE").map(PathBuf::from);
    let src = llama_cpp::llama_cpp_src();
    let t_all = Instant::now();
    let mut done = 0;
    for (name, fam) in e["families"].as_object().unwrap() {
        let Some(path) = source(name, fam, src.as_deref()) else { continue };
        let t0 = Instant::now();
        let g = GgufFile::open(&path).unwrap();
        // llama.cpp's reading of the original vocabulary (tests/gguf_spm.rs and
        // tests/gguf_vocab.rs check kiln's against llama.cpp's vectors).
        let original = TextTokenizer::from_gguf(&g).unwrap();
        let dir = hf_folder(name, fam, &g);
        let hf = TextTokenizer::load(&dir).unwrap();
        let texts: Vec<&str> = fam["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        for (i, t) in texts.iter().enumerate() {
            assert_eq!(hf.encode(t).unwrap().ids, ids(&fam["hf"][i]), "{name}: kiln on the folder, text {i} {t:?}");
        }

        // The export's tokenizer, written as `kiln export --format gguf` writes it.
        let arch = fam["arch"].as_str().unwrap();
        let meta = tokenizer_metadata(&hf, hf.vocab_size(), None).unwrap();
        let digest = sha256_hex(format!("{meta:?}").as_bytes());
        let dir_out = write.clone().unwrap_or_else(|| dir.clone());
        let out = dir_out.join(format!("{name}.gguf"));
        let mut all = vec![("general.architecture".to_string(), MetaValue::Str(arch.into()))];
        all.extend(meta.iter().cloned());
        write_gguf(&out, &all, &[]).unwrap();
        let back = TextTokenizer::from_gguf(&GgufFile::open(&out).unwrap()).unwrap();
        let mut differs = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let got = back.encode(t).unwrap().ids;
            assert_eq!(got, original.encode(t).unwrap().ids, "{name}: kiln on its export ≠ on the original, text {i}");
            if got != ids(&fam["hf"][i]) {
                differs.push(i);
                // Only where a run of text starts with a space or follows a special token (see
                // the top of the file).
                let special = hf.added_tokens().iter().any(|(_, s, _)| t.contains(s.as_str()));
                assert!(t.starts_with(' ') || special, "{name}: text {i}");
            }
        }
        let id = |s: &Option<kiln::data::tokenizer::Special>| s.as_ref().map(|s| s.id as u64);
        assert_eq!(id(&back.bos), fam["hf_bos"].as_u64(), "{name}: BOS");
        assert_eq!(id(&back.eos), fam["hf_eos"].as_u64(), "{name}: EOS");
        let model = meta.iter().find(|(k, _)| k == "tokenizer.ggml.model").unwrap().1.as_str().unwrap();
        eprintln!(
            "{name}: {} tokens as `{model}`, {} texts: kiln on the folder = transformers; kiln on its export = \
             the folder except texts {differs:?} ({:.2}s)",
            hf.vocab_size(),
            texts.len(),
            t0.elapsed().as_secs_f64()
        );
        if let Some(w) = &write {
            let j = serde_json::json!({"digest": digest, "differs": differs});
            std::fs::write(w.join(format!("{name}.json")), j.to_string()).unwrap();
            continue;
        }
        assert_eq!(
            Value::from(differs),
            fam["kiln_gguf_differs"],
            "{name}: texts where kiln reads the export differently"
        );
        assert_eq!(
            digest,
            fam["export_digest"].as_str().unwrap(),
            "{name}: the exported tokenizer changed: rerun tools/make_tokenizer_roundtrip_fixtures.py"
        );
        assert_eq!(fam["gguf_transformers"], fam["hf"], "{name}: transformers on the export");
        gguf_package_reads(&out, &meta);
        done += 1;
    }
    // Every family whose source is here (llama.cpp's vocabularies are fetched; under CI a
    // failed fetch has already failed the test), none skipped.
    let here =
        e["families"].as_object().unwrap().values().filter(|f| f["source"] == "fixture" || src.is_some()).count();
    assert!(write.is_some() || done == here, "{done} of {here} families round-tripped");
    eprintln!("{done} families round-tripped in {:.2}s", t_all.elapsed().as_secs_f64());
}
