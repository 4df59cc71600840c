//! GGUF reading and block quantization against the `gguf` package (fixture written by
//! tools/make_gguf_fixtures.py), and every kind of corrupt file.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use kiln::core::quant::{GgmlType, quantize};
use kiln::formats::gguf::{GgufFile, MetaArray, MetaValue};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/quants.gguf")
}

const CASES: [&str; 5] = ["normal", "wide", "zeros", "const", "ties"];

#[test]
fn metadata_of_every_value_type() {
    let g = GgufFile::open(&fixture()).unwrap();
    assert_eq!(g.version, 3);
    let want = [
        ("kiln.u8", MetaValue::U8(200)),
        ("kiln.i8", MetaValue::I8(-100)),
        ("kiln.u16", MetaValue::U16(60000)),
        ("kiln.i16", MetaValue::I16(-30000)),
        ("kiln.u32", MetaValue::U32(4_000_000_000)),
        ("kiln.i32", MetaValue::I32(-2_000_000_000)),
        ("kiln.f32", MetaValue::F32(1.5)),
        ("kiln.bool", MetaValue::Bool(true)),
        ("kiln.str", MetaValue::Str("kiln ✓".into())),
        ("kiln.u64", MetaValue::U64(1 << 40)),
        ("kiln.i64", MetaValue::I64(-(1 << 40))),
        ("kiln.f64", MetaValue::F64(0.1)),
        ("kiln.arr_i32", MetaValue::Array(MetaArray::I32(vec![1, -2, 3]))),
        ("kiln.arr_str", MetaValue::Array(MetaArray::Str(["a", "bc"].into_iter().collect()))),
        ("general.architecture", MetaValue::Str("kiln-test".into())),
    ];
    for (k, v) in want {
        assert_eq!(g.get(k), Some(&v), "{k}");
    }
}

#[test]
fn dequantization_is_bit_exact_with_gguf() {
    let g = GgufFile::open(&fixture()).unwrap();
    for case in CASES {
        let src = g.dequantize(&format!("src.{case}")).unwrap();
        let sv = src.to_vec_f32().unwrap();
        for ty in ["Q8_0", "Q4_0", "Q4_1", "Q5_0"] {
            let got = g.dequantize(&format!("{ty}.{case}")).unwrap();
            let want = g.dequantize(&format!("{ty}.{case}.deq")).unwrap();
            assert_eq!(got.dims(), src.dims(), "{ty}.{case} shape");
            let (gv, wv) = (got.to_vec_f32().unwrap(), want.to_vec_f32().unwrap());
            assert!(
                gv.iter().zip(&wv).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty}.{case}: dequantized values differ"
            );
        }
        let f16r: fn(f32) -> f32 = |x| half::f16::from_f32(x).to_f32();
        let bf16r: fn(f32) -> f32 = |x| half::bf16::from_f32(x).to_f32();
        for (ty, conv) in [("F16", f16r), ("BF16", bf16r)] {
            let got = g.dequantize(&format!("{ty}.{case}")).unwrap().to_vec_f32().unwrap();
            assert!(got.iter().zip(&sv).all(|(a, b)| a.to_bits() == conv(*b).to_bits()), "{ty}.{case}");
        }
    }
}

#[test]
fn k_quant_dequantization_is_bit_exact_with_gguf() {
    let g = GgufFile::open(&fixture()).unwrap();
    for ty in ["Q4_K", "Q5_K", "Q6_K"] {
        let got = g.dequantize(&format!("{ty}.rand")).unwrap().to_vec_f32().unwrap();
        let want = g.dequantize(&format!("{ty}.rand.deq")).unwrap().to_vec_f32().unwrap();
        assert_eq!(got.len(), 3 * 256);
        assert!(want.iter().all(|x| x.is_finite()));
        let bad = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
        assert!(bad.is_none(), "{ty}: value {bad:?} differs: {:?} vs {:?}", bad.map(|i| got[i]), bad.map(|i| want[i]));
    }
}

#[test]
fn quantization_bytes_equal_gguf() {
    let g = GgufFile::open(&fixture()).unwrap();
    for case in CASES {
        let src = g.dequantize(&format!("src.{case}")).unwrap().to_vec_f32().unwrap();
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::F16, GgmlType::BF16] {
            let t = g.tensor(&format!("{}.{case}", ty.name())).unwrap();
            assert_eq!(t.ty, ty);
            assert_eq!(quantize(ty, &src).unwrap(), g.bytes(t), "{}.{case}: quantized bytes differ", ty.name());
        }
    }
}

/// K-quants: kiln's quantizers give llama.cpp's reference bytes (`quantize_row_q*_K_ref`,
/// compiled by tools/make_kquant_fixtures.py) on varied inputs.
#[test]
fn k_quant_bytes_equal_llama_cpp_reference() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/kquants.gguf");
    let g = GgufFile::open(&path).unwrap();
    let mut checked = 0;
    for case in ["rows", "normal", "positive", "spike", "zeros", "const", "tiny"] {
        let src = g.dequantize(&format!("src.{case}")).unwrap().to_vec_f32().unwrap();
        for ty in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K] {
            let t = g.tensor(&format!("{}.{case}", ty.name())).unwrap();
            assert_eq!(t.ty, ty);
            let ours = quantize(ty, &src).unwrap();
            let want = g.bytes(t);
            let first = ours.iter().zip(want).position(|(a, b)| a != b);
            assert!(
                first.is_none() && ours.len() == want.len(),
                "{}.{case}: bytes differ from byte {first:?}",
                ty.name()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 21);
}

/// A change to a file's bytes.
type Edit = Box<dyn FnOnce(&mut Vec<u8>)>;

/// A copy of the fixture with `edit` applied to its bytes.
fn corrupt(tag: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(fixture()).unwrap();
    edit(&mut b);
    let p = std::env::temp_dir().join(format!("kiln-gguf-{tag}-{}.gguf", std::process::id()));
    std::fs::write(&p, b).unwrap();
    p
}

fn open_err(p: &Path) -> String {
    match GgufFile::open(p) {
        Ok(_) => panic!("{} opened but should not", p.display()),
        Err(e) => e.to_string(),
    }
}

/// Byte offset of the tensor info of `name` (its name's length prefix).
fn info_at(b: &[u8], name: &str) -> usize {
    let needle = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
    b.windows(needle.len()).position(|w| w == needle.as_slice()).unwrap()
}

#[test]
fn corrupt_files_are_errors_not_panics() {
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("magic", Box::new(|b: &mut Vec<u8>| b[0] = b'X'), "magic"),
        ("version", Box::new(|b: &mut Vec<u8>| b[4..8].copy_from_slice(&7u32.to_le_bytes())), "version 7"),
        ("ntensors", Box::new(|b: &mut Vec<u8>| b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes())), "tensor count"),
        ("nkv", Box::new(|b: &mut Vec<u8>| b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes())), "metadata count"),
        ("short", Box::new(|b: &mut Vec<u8>| b.truncate(100)), "cannot fit"),
        ("mid", Box::new(|b: &mut Vec<u8>| b.truncate(700)), "not a valid GGUF file"),
        ("header", Box::new(|b: &mut Vec<u8>| b.truncate(10)), "truncated"),
        ("data", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 40)), "outside the file"),
        (
            "type",
            Box::new(|b: &mut Vec<u8>| {
                let at = info_at(b, "src.normal") + 8 + "src.normal".len() + 4 + 16;
                b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
            }),
            "unknown type id 99",
        ),
        (
            "align",
            Box::new(|b: &mut Vec<u8>| {
                let at = info_at(b, "src.normal") + 8 + "src.normal".len() + 4 + 16 + 4;
                let off = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                b[at..at + 8].copy_from_slice(&(off + 4).to_le_bytes());
            }),
            "not aligned",
        ),
        (
            "huge",
            Box::new(|b: &mut Vec<u8>| {
                // dims [2^40 · 96, …]: a size no file can hold, and no overflow on the way.
                let at = info_at(b, "src.normal") + 8 + "src.normal".len() + 4;
                b[at..at + 8].copy_from_slice(&(96u64 << 40).to_le_bytes());
            }),
            "outside the file",
        ),
        (
            "dims",
            Box::new(|b: &mut Vec<u8>| {
                let at = info_at(b, "src.normal") + 8 + "src.normal".len();
                b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
            }),
            "9 dimensions",
        ),
    ];
    for (tag, edit, want) in cases {
        let p = corrupt(tag, edit);
        let e = open_err(&p);
        assert!(e.contains(want) && e.contains(p.to_str().unwrap()), "{tag}: {e}");
    }
    let e = open_err(Path::new("/nonexistent.gguf"));
    assert!(e.contains("/nonexistent.gguf"), "{e}");
}

/// Random mutations of `seed` (the fuzz targets' stable stand-in: flipped bytes, extreme
/// little-endian integers, truncation, duplication), deterministic per `i`.
pub fn mutate(seed: &[u8], i: u64) -> Vec<u8> {
    let mut rng = kiln::core::rng::Rng::new(i);
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len().max(1));
        match rng.below(5) {
            0 => {
                if let Some(x) = b.get_mut(at) {
                    *x ^= 1 << rng.below(8);
                }
            }
            1 => {
                let v: u64 = [0, 1, u32::MAX as u64, u64::MAX, 1 << 60, 1 << 31][rng.below(6)];
                for (k, byte) in v.to_le_bytes().iter().enumerate() {
                    if let Some(x) = b.get_mut(at + k) {
                        *x = *byte;
                    }
                }
            }
            2 => b.truncate(at),
            3 => {
                let end = (at + rng.below(64)).min(b.len());
                let chunk = b[at..end].to_vec();
                b.splice(at..at, chunk);
            }
            _ => {
                if let Some(x) = b.get_mut(at) {
                    *x = rng.below(256) as u8;
                }
            }
        }
    }
    b
}

/// The `gguf_header` fuzz target's property on 20 000 mutations of the fixtures: an error or
/// a header whose tensors lie inside the bytes, end to end, with unique names; never a panic.
#[test]
fn gguf_header_survives_mutations() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    let (mut ok, mut err) = (0, 0);
    for name in ["quants.gguf", "kquants.gguf"] {
        let seed = std::fs::read(dir.join(name)).unwrap();
        for i in 0..10_000 {
            let b = mutate(&seed, i);
            match kiln::formats::gguf::parse_header(&b, Path::new(name)) {
                Ok(h) => {
                    ok += 1;
                    let mut next = h.tensors.first().map_or(0, |t| t.start);
                    let mut names = std::collections::HashSet::new();
                    for t in &h.tensors {
                        assert!(t.start + t.n_bytes <= b.len(), "mutation {i} of {name}: {} out of bounds", t.name);
                        assert!(
                            t.start == next && names.insert(&t.name),
                            "mutation {i} of {name}: {} misplaced",
                            t.name
                        );
                        next = t.start + t.n_bytes.next_multiple_of(h.alignment);
                    }
                }
                Err(e) => {
                    err += 1;
                    assert!(e.to_string().contains(name), "errors name the file: {e}");
                }
            }
        }
    }
    eprintln!("gguf mutations: {ok} parsed, {err} refused");
    assert!(ok > 100 && err > 1000, "the mutations must exercise both outcomes ({ok} ok, {err} refused)");
}

/// The `safetensors_header` fuzz target's property, likewise.
#[test]
fn safetensors_header_survives_mutations() {
    let seed = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/safetensors_header/small.safetensors"),
    )
    .unwrap();
    let (mut ok, mut err) = (0, 0);
    for i in 0..20_000 {
        let b = mutate(&seed, i);
        match kiln::formats::safetensors::index_safetensors(&b, Path::new("m.safetensors")) {
            Ok(ts) => {
                ok += 1;
                for (name, dtype, shape, start) in ts {
                    let end = start + dtype.bytes(shape.iter().product());
                    assert!(end <= b.len(), "mutation {i}: {name} out of bounds");
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().contains("m.safetensors"), "errors name the file: {e}");
            }
        }
    }
    eprintln!("safetensors mutations: {ok} parsed, {err} refused");
    assert!(ok > 100 && err > 1000, "the mutations must exercise both outcomes ({ok} ok, {err} refused)");
}

/// Inputs the fuzz targets once crashed on (tests/fixtures/gguf/fuzz-regressions): each is now
/// refused with an error.
#[test]
fn fuzz_regressions_are_refused() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf/fuzz-regressions");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let b = std::fs::read(&p).unwrap();
        let err = kiln::formats::gguf::parse_header(&b, &p).err();
        assert!(err.is_some(), "{} parsed", p.display());
        assert!(GgufFile::open(&p).is_err());
        n += 1;
    }
    assert!(n >= 1);
}

fn kiln(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = kiln(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "kiln {}: {err}", args.join(" "));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A vocabulary grown with `--add-special-tokens` on a GGUF base: the GGUF and merged exports
/// hold the added tokens (token list as long as the embedding, control type, same ids) and
/// load back in kiln.
#[test]
fn grown_vocabulary_exports_load_back() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gguf-grown-vocab");
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 3);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let base = d.join("base.gguf");
    ok(&["export", "--model", &s(&m), "--format", "gguf", "--quant", "f32", "--out", &s(&base)]);
    let rows = (0..4)
        .map(|i| format!("{{\"prompt\": \"call {i}\", \"completion\": \"<tool>go {i}</tool>\"}}\n"))
        .collect::<String>();
    std::fs::write(d.join("data.jsonl"), rows).unwrap();
    let run = d.join("run");
    ok(&[
        "train",
        "--model",
        &s(&base),
        "--data",
        &s(&d.join("data.jsonl")),
        "--out",
        &s(&run),
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--eval-split",
        "0",
        "--packing",
        "false",
        "--add-special-tokens",
        "<tool>,</tool>",
    ]);
    let adapter = s(&run.join("adapter"));
    let n_base = GgufFile::open(&base).unwrap().tensor("token_embd.weight").unwrap().dims[1] as usize;
    let grown = d.join("grown.gguf");
    ok(&[
        "export",
        "--model",
        &s(&base),
        "--adapter",
        &adapter,
        "--format",
        "gguf",
        "--quant",
        "f32",
        "--out",
        &s(&grown),
    ]);
    let g = GgufFile::open(&grown).unwrap();
    let rows = g.tensor("token_embd.weight").unwrap().dims[1] as usize;
    assert_eq!(rows, n_base + 2, "the embedding grew by the two added tokens");
    let tokens = g.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array).and_then(|a| a.strs()).unwrap();
    assert_eq!(tokens.len(), rows, "one token per embedding row");
    assert_eq!((tokens.get(n_base), tokens.get(n_base + 1)), (Some("<tool>"), Some("</tool>")));
    match g.get("tokenizer.ggml.token_type").and_then(MetaValue::as_array) {
        Some(MetaArray::I32(t)) => assert_eq!((t.len(), t[n_base], t[n_base + 1]), (rows, 3, 3)),
        other => panic!("token_type: {other:?}"),
    }
    // llama.cpp's own reader (the `gguf` package, when installed) sees the same lengths.
    let dump = d.join("dump");
    let py = Command::new("python3").arg("../../tools/gguf_dump.py").arg(&grown).arg(&dump).output();
    match py {
        Ok(o) if o.status.success() => {
            let j: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dump.with_extension("json")).unwrap()).unwrap();
            for k in ["tokenizer.ggml.tokens", "tokenizer.ggml.token_type"] {
                assert_eq!(j["metadata"][k]["len"].as_u64(), Some(rows as u64), "{k} as gguf reads it");
            }
        }
        _ => {
            assert!(std::env::var_os("CI").is_none(), "CI must have python3 with gguf and numpy");
            eprintln!("SKIP the gguf package read-back: python3 cannot import gguf and numpy");
        }
    }
    let (model, tok) = kiln::model::load_with_tokenizer(&grown, false).unwrap();
    assert_eq!(model.config.vocab_size, rows);
    assert_eq!(tok.encode("<tool>").unwrap().ids, vec![n_base as u32]);
    ok(&["generate", "--model", &s(&grown), "--prompt", "call <tool>", "--raw", "--max-new-tokens", "2"]);
    // The merged folder's tokenizer files carry the added tokens too.
    let merged = d.join("merged");
    ok(&["export", "--model", &s(&base), "--adapter", &adapter, "--format", "merged", "--out", &s(&merged)]);
    let (model, tok) = kiln::model::load_with_tokenizer(&merged, false).unwrap();
    assert_eq!(model.config.vocab_size, rows);
    assert_eq!(tok.encode("</tool>").unwrap().ids, vec![n_base as u32 + 1]);
    ok(&["generate", "--model", &s(&merged), "--prompt", "call <tool>", "--raw", "--max-new-tokens", "2"]);
    // And a GGUF exported from the merged folder (a config.json source) loads as well.
    let again = d.join("again.gguf");
    ok(&["export", "--model", &s(&merged), "--format", "gguf", "--quant", "f32", "--out", &s(&again)]);
    let (model, tok) = kiln::model::load_with_tokenizer(&again, false).unwrap();
    assert_eq!((model.config.vocab_size, tok.encode("<tool>").unwrap().ids), (rows, vec![n_base as u32]));
    // llama.cpp's LoRA GGUF holds A/B pairs only: the grown embedding is refused by name, not
    // silently dropped.
    let lora = d.join("lora.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["export", "--model", &s(&base), "--adapter", &adapter, "--format", "gguf-lora", "--out", &s(&lora)])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("modules_to_save") && err.contains("embed_tokens"), "{err}");
    assert!(!lora.exists());
}

/// Arrays cost what they cost in the file: a million u8 items are a million bytes, and a
/// string array round-trips through the writer.
#[test]
fn arrays_are_stored_compactly_and_round_trip() {
    use kiln::formats::gguf::StrArray;
    use kiln::formats::gguf_write::write_gguf;
    let p = std::env::temp_dir().join(format!("kiln-gguf-arrays-{}.gguf", std::process::id()));
    let strs: StrArray = ["", "é", "ab c"].into_iter().collect();
    let meta = vec![
        ("kiln.bytes".to_string(), MetaValue::Array(MetaArray::U8(vec![7; 1 << 20]))),
        ("kiln.strs".to_string(), MetaValue::Array(MetaArray::Str(strs.clone()))),
        ("kiln.f64".to_string(), MetaValue::Array(MetaArray::F64(vec![0.5, -1.0]))),
    ];
    write_gguf(&p, &meta, &[]).unwrap();
    let g = GgufFile::open(&p).unwrap();
    match g.get("kiln.bytes") {
        Some(MetaValue::Array(MetaArray::U8(v))) => assert!(v.len() == 1 << 20 && v.capacity() < (1 << 20) + 64),
        other => panic!("{other:?}"),
    }
    assert_eq!(g.get("kiln.strs"), Some(&MetaValue::Array(MetaArray::Str(strs))));
    assert_eq!(g.get("kiln.f64").and_then(MetaValue::as_array).and_then(|a| a.to_f64s()), Some(vec![0.5, -1.0]));
    // A duplicate key is refused on writing as on reading.
    let dup = vec![("a".to_string(), MetaValue::U8(1)), ("a".to_string(), MetaValue::U8(2))];
    let e = write_gguf(&p, &dup, &[]).unwrap_err().to_string();
    assert!(e.contains("`a`") && e.contains("twice"), "{e}");
    let _ = std::fs::remove_file(&p);
}

/// The tokenizer built from GGUF metadata survives mutations of the token arrays (the
/// `gguf_tokenizer` fuzz target's property on stable): an error or a tokenizer whose special
/// ids lie inside its vocabulary, never a panic.
#[test]
fn gguf_tokenizer_survives_mutations() {
    use kiln::data::tokenizer::TextTokenizer;
    use kiln::formats::gguf::parse_header;
    let seed = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/bad_inputs/models-eps-negative.gguf"),
    )
    .unwrap();
    // Mutate the tokenizer part of the header only (after `tokenizer.ggml.model`).
    let at = seed.windows(20).position(|w| w == b"tokenizer.ggml.model").unwrap();
    let (mut ok_n, mut err_n) = (0, 0);
    for i in 0..3000u64 {
        let mut b = seed[at..].to_vec();
        b = mutate(&b, i);
        let mut full = seed[..at].to_vec();
        full.extend(b);
        let p = Path::new("mutant.gguf");
        let Ok(h) = parse_header(&full, p) else {
            err_n += 1;
            continue;
        };
        match TextTokenizer::from_gguf_metadata(&h.metadata, p) {
            Ok(t) => {
                for s in [&t.bos, &t.eos, &t.pad].into_iter().flatten() {
                    assert!((s.id as usize) < t.vocab_size(), "mutation {i}: special id {}", s.id);
                }
                ok_n += 1;
            }
            Err(_) => err_n += 1,
        }
    }
    eprintln!("tokenizer mutations: {ok_n} built, {err_n} refused");
    assert!(err_n > 100, "the mutations must be refused sometimes ({ok_n} built, {err_n} refused)");
}

/// The `adapter_files` fuzz target's property on stable: mutations of an adapter (config JSON,
/// NUL, safetensors) are refused or accepted with tensors of exactly the claimed rank.
#[test]
fn adapter_files_survive_mutations() {
    let seed =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/adapter_files/valid")).unwrap();
    let model = serde_json::json!({"model_type": "llama", "vocab_size": 16, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1});
    let model = kiln::model::ModelConfig::from_json(&model, Path::new("config.json")).unwrap();
    let (cp, file) = (Path::new("adapter_config.json"), Path::new("adapter_model.safetensors"));
    let (mut ok_n, mut err_n) = (0, 0);
    for i in 0..5000u64 {
        let b = mutate(&seed, i);
        let split = b.iter().position(|&x| x == 0).unwrap_or(b.len());
        let parsed = std::str::from_utf8(&b[..split])
            .ok()
            .and_then(|t| kiln::adapters::lora::parse_adapter_config(t, cp).ok())
            .zip(kiln::formats::safetensors::index_safetensors(b.get(split + 1..).unwrap_or(&[]), file).ok());
        let Some((config, index)) = parsed else {
            err_n += 1;
            continue;
        };
        let shapes: Vec<(String, Vec<usize>)> = index.into_iter().map(|(n, _, s, _)| (n, s)).collect();
        if kiln::adapters::lora::check_peft_tensors(&shapes, file, cp, &config, &model).is_err() {
            err_n += 1;
            continue;
        }
        ok_n += 1;
        for (name, shape) in shapes.iter().filter(|(n, _)| n.contains(".lora_")) {
            let r = if name.contains(".lora_A.") { shape.first() } else { shape.get(1) };
            assert_eq!(r, Some(&config.r), "mutation {i}: {name} {shape:?}");
        }
    }
    eprintln!("adapter mutations: {ok_n} accepted, {err_n} refused");
    assert!(ok_n > 10 && err_n > 1000, "the mutations must exercise both outcomes ({ok_n} ok, {err_n} refused)");
}

/// `tokenizer.ggml.pre` of a GGUF export: found from a transformers folder's tokenizer (the
/// fixture's is GPT-2's byte-level one: `gpt-2`), named with `--gguf-pre` (checked against the
/// names kiln implements), kept from a GGUF source; a tokenizer that is neither in llama.cpp's
/// table nor one kiln builds is refused naming the folder, its hash and `--gguf-pre`.
#[test]
fn gguf_export_writes_the_tokenizers_pre_tokenizer() {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gguf-export-pre-name");
    let _ = std::fs::remove_dir_all(&d);
    let m = common::tiny_model(&d, 5);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let pre =
        |p: &Path| GgufFile::open(p).unwrap().get("tokenizer.ggml.pre").and_then(MetaValue::as_str).map(String::from);
    let export = |model: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec!["export", "--format", "gguf", "--quant", "f32", "--overwrite"];
        a.extend(extra);
        let (model, out) = (s(model), s(out));
        a.extend(["--model", &model, "--out", &out]);
        kiln(&a)
    };
    let base = d.join("base.gguf");
    assert!(export(&m, &base, &[]).status.success());
    assert_eq!(pre(&base).as_deref(), Some("gpt-2"));
    let forced = d.join("forced.gguf");
    assert!(export(&m, &forced, &["--gguf-pre", "smollm"]).status.success());
    assert_eq!(pre(&forced).as_deref(), Some("smollm"));
    // It loads back in kiln splitting digits one by one, as `smollm` does.
    let (_, tok) = kiln::model::load_with_tokenizer(&forced, false).unwrap();
    assert_eq!(tok.encode("123").unwrap().ids.len(), 3);
    let stderr = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = stderr(export(&m, &forced, &["--gguf-pre", "kimi-k2"]));
    assert!(e.contains("kimi-k2") && e.contains("llama-bpe"), "{e}");
    // A GGUF source keeps its own name: the same one is accepted, another refused.
    let again = d.join("again.gguf");
    assert!(export(&base, &again, &[]).status.success());
    assert_eq!(pre(&again).as_deref(), Some("gpt-2"));
    assert!(export(&base, &again, &["--gguf-pre", "gpt-2"]).status.success());
    let e = stderr(export(&base, &again, &["--gguf-pre", "smollm"]));
    assert!(e.contains("base.gguf") && e.contains("keeps its own") && e.contains("gpt-2"), "{e}");
    let merged = s(&d.join("merged"));
    let e = stderr(kiln(&["export", "--gguf-pre", "smollm", "--model", &s(&m), "--out", &merged]));
    assert!(e.contains("--gguf-pre applies to --format gguf"), "{e}");
    // An unknown pre-tokenizer (GPT-2's byte-level step without its regex) is refused.
    let tj = m.join("tokenizer.json");
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tj).unwrap()).unwrap();
    j["pre_tokenizer"]["use_regex"] = serde_json::Value::Bool(false);
    std::fs::write(&tj, j.to_string()).unwrap();
    let out = d.join("unknown.gguf");
    let e = stderr(export(&m, &out, &[]));
    for want in [&s(&m), "tokenizer.ggml.pre", "check-text hash", "--gguf-pre", "smollm"] {
        assert!(e.contains(want), "{want}: {e}");
    }
    assert!(!out.exists(), "nothing written");
    assert!(export(&m, &out, &["--gguf-pre", "gpt-2"]).status.success(), "the way out works");
}
