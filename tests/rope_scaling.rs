//! RoPE scaling against transformers and llama.cpp's converter (fixtures by
//! tools/make_rope_fixtures.py): YaRN and linear scaling from `config.json` (the inverse
//! frequencies, the cos/sin factor, logits and loss of tiny random models), and the same models
//! from GGUF files the converter wrote (`rope.scaling.*` keys, and the `rope_freqs.weight`
//! table it writes for llama3 scaling); kiln's GGUF export writes the scaling as the converter
//! does; bad GGUF RoPE settings are refused naming file and key.
//!
//! Tolerances as tests/reference.rs: logits 1e-5 and loss 2e-6 relative (measured figures are
//! printed with `--nocapture`).

use std::path::{Path, PathBuf};

use kiln::adapters::{LoraConfig, LoraSet, Target};
use kiln::core::{Tape, Tensor};
use kiln::data::batch::shift_targets;
use kiln::formats::WeightStore;
use kiln::formats::gguf::{GgufFile, MetaValue};
use kiln::formats::gguf_write::{OutTensor, write_gguf};
use kiln::model::{Inputs, Llama, ModelConfig, RopeKind, default_positions};

#[path = "common/compare.rs"]
mod compare;
use compare::{f32s, rel_err};

const LOGITS_TOL: f64 = 1e-5;
const LOSS_TOL: f64 = 2e-6;
/// kiln's inverse frequencies against transformers' buffer (both f32; kiln rounds θ^(2i/D)
/// from f64, torch computes it in f32).
const INV_FREQ_TOL: f64 = 1e-6;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures").join(name)
}

/// Logits and mean cross-entropy of `model` on the fixture's ids and labels, with `lora`.
fn run(model: &Llama, r: &WeightStore, lora: Option<&LoraSet>) -> (Vec<f32>, f64) {
    let ids = r.get("input_ids").unwrap();
    let (b, t) = (ids.dims()[0], ids.dims()[1]);
    let labels = r.get("labels").unwrap().as_slice::<i32>().unwrap().to_vec();
    let targets = Tensor::from_vec(shift_targets(&labels, b, t, None), [b, t]).unwrap();
    let pos = default_positions(b, t).unwrap();
    let inp = Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false };
    let tape = Tape::no_grad();
    let logits = model.forward(&tape, &inp, lora, false).unwrap();
    let ce = kiln::core::ops::cross_entropy(&tape, &logits, &targets).unwrap();
    (logits.value().to_vec_f32().unwrap(), ce.loss.value().item().unwrap())
}

/// Logits and loss of `model` against transformers' (`reference.safetensors` of `folder`).
fn against_transformers(what: &str, model: &Llama, folder: &str) -> (f64, f64) {
    let r = WeightStore::open(&fixture(folder).join("reference.safetensors")).unwrap();
    let (logits, loss) = run(model, &r, None);
    let e = rel_err(&format!("{what}: logits"), &logits, &f32s(&r, "logits"));
    let want = r.get("loss").unwrap().item().unwrap();
    let le = ((loss - want) / want).abs();
    assert!(e <= LOGITS_TOL, "{what}: logits relative error {e:e} (tolerance {LOGITS_TOL:e})");
    assert!(le <= LOSS_TOL, "{what}: loss {loss} vs {want} (rel {le:e}, tolerance {LOSS_TOL:e})");
    (e, le)
}

/// A config.json model: kiln's frequencies and attention factor equal transformers' buffers,
/// and logits and loss match.
fn folder_matches(name: &str) -> ModelConfig {
    let model = Llama::load(&fixture(name), false).unwrap();
    let c = &model.config;
    let r = WeightStore::open(&fixture(name).join("reference.safetensors")).unwrap();
    let fe = rel_err(&format!("{name}: inv_freq"), &c.inv_freq().unwrap().to_vec_f32().unwrap(), &f32s(&r, "inv_freq"));
    assert!(fe <= INV_FREQ_TOL, "{name}: inv_freq relative error {fe:e}");
    let af = f32s(&r, "attention_scaling")[0] as f64;
    let m = c.rope_mscale() as f64;
    assert!((m / af - 1.0).abs() < 1e-6, "{name}: RoPE scale {m} vs transformers' attention factor {af}");
    assert_eq!(c.attention_scale(), 1.0 / (c.head_dim as f64).sqrt());
    let (e, le) = against_transformers(name, &model, name);
    eprintln!("{name}: inv_freq rel {fe:.2e}, factor {af}, logits rel {e:.2e}, loss rel {le:.2e}");
    model.config.clone()
}

#[test]
fn yarn_from_config_json_matches_transformers() {
    let c = folder_matches("rope/yarn-qwen2");
    assert!(matches!(c.rope, RopeKind::Yarn(y) if y.factor == 4.0 && y.beta_fast == 32.0 && y.truncate));
    // Every optional field set: betas, truncate false, attention factor from mscale/mscale_all_dim.
    let c = folder_matches("rope/yarn-llama");
    assert!(matches!(c.rope, RopeKind::Yarn(y) if y.beta_fast == 8.0 && y.beta_slow == 2.0 && !y.truncate));
    // The scaling round-trips through the config kiln writes.
    let back = ModelConfig::from_json(&c.to_hf_json(), Path::new("x/config.json")).unwrap();
    assert_eq!(back.rope, c.rope);
}

#[test]
fn yarn_in_the_older_rope_scaling_spelling() {
    // Qwen2.5's config.json: top-level rope_theta, rope_scaling with `type`.
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("rope/yarn-qwen2/config.json")).unwrap()).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("rope_parameters");
    o.insert("rope_theta".into(), 10000.0.into());
    o.insert(
        "rope_scaling".into(),
        serde_json::json!({"factor": 4.0, "original_max_position_embeddings": 16, "type": "yarn"}),
    );
    let old = ModelConfig::from_json(&v, Path::new("c.json")).unwrap();
    let new = ModelConfig::load(&fixture("rope/yarn-qwen2")).unwrap();
    assert_eq!(old.rope, new.rope);
    assert_eq!(old.inv_freq().unwrap().to_vec_f32().unwrap(), new.inv_freq().unwrap().to_vec_f32().unwrap());
}

#[test]
fn linear_from_config_json_matches_transformers() {
    let c = folder_matches("rope/linear-llama");
    assert_eq!(c.rope, RopeKind::Linear(2.0));
}

/// kiln on each GGUF llama.cpp's converter wrote gives transformers' logits of its source.
#[test]
fn gguf_yarn_and_linear_match_transformers() {
    for (file, folder) in [("rope/yarn.gguf", "rope/yarn-qwen2"), ("rope/linear.gguf", "rope/linear-llama")] {
        let model = Llama::load(&fixture(file), false).unwrap();
        let want = ModelConfig::load(&fixture(folder)).unwrap();
        assert_eq!(model.config.rope, want.rope, "{file}");
        let (e, le) = against_transformers(file, &model, folder);
        eprintln!("{file}: logits rel {e:.2e}, loss rel {le:.2e}");
    }
}

/// Llama 3.1-style llama3 scaling: the converter writes no scaling keys but the
/// `rope_freqs.weight` divisors. tiny-llama (llama3, factor 8) from GGUF, with the PEFT LoRA of
/// tests/reference.rs, gives transformers' logits; without it, kiln's logits on the folder and
/// transformers' base loss.
#[test]
fn gguf_rope_freqs_match_llama3_in_transformers() {
    let path = fixture("rope/llama3.gguf");
    let model = Llama::load(&path, false).unwrap();
    let RopeKind::Factors(t) = &model.config.rope else { panic!("{:?}", model.config.rope) };
    assert!(t.iter().any(|&d| d > 1.0), "divisors {t:?}");
    let folder = Llama::load(&fixture("tiny-llama"), false).unwrap();
    let fe = rel_err(
        "inv_freq",
        &model.config.inv_freq().unwrap().to_vec_f32().unwrap(),
        &folder.config.inv_freq().unwrap().to_vec_f32().unwrap(),
    );
    assert!(fe <= INV_FREQ_TOL, "rope_freqs inv_freq vs llama3: {fe:e}");

    let r = WeightStore::open(&fixture("tiny-llama").join("reference.safetensors")).unwrap();
    let (base, base_loss) = run(&model, &r, None);
    let (from_folder, _) = run(&folder, &r, None);
    let ke = rel_err("base logits vs folder", &base, &from_folder);
    assert!(ke <= LOGITS_TOL, "GGUF vs folder logits {ke:e}");
    let full = WeightStore::open(&fixture("tiny-llama").join("full.safetensors")).unwrap();
    let want = full.get("loss").unwrap().item().unwrap();
    let ble = ((base_loss - want) / want).abs();
    assert!(ble <= LOSS_TOL, "base loss {base_loss} vs transformers {want} (rel {ble:e})");

    let mut lora = LoraSet::new(
        &model.config,
        LoraConfig { r: 4, alpha: 8.0, rslora: false, targets: Target::ALL.to_vec(), dropout: 0.0 },
        0,
    )
    .unwrap();
    let mut set = 0;
    for l in 0..model.config.num_layers {
        for t in Target::ALL {
            let m = format!("model.layers.{l}.{}", t.module());
            lora.set(l, t, r.get(&format!("lora_A.{m}")).unwrap(), r.get(&format!("lora_B.{m}")).unwrap()).unwrap();
            set += 1;
        }
    }
    assert_eq!(set, 2 * Target::ALL.len());
    let (logits, _) = run(&model, &r, Some(&lora));
    let e = rel_err("LoRA logits", &logits, &f32s(&r, "logits"));
    assert!(e <= LOGITS_TOL, "GGUF + LoRA logits vs transformers {e:e}");
    // A config.json written for this model names llama3 settings giving the same table.
    let back = ModelConfig::from_json(&model.config.to_hf_json(), Path::new("x/config.json")).unwrap();
    assert!(matches!(back.rope, RopeKind::Llama3(s) if s.factor == 8.0), "{:?}", back.rope);
    let be = rel_err(
        "inv_freq of the written config",
        &back.inv_freq().unwrap().to_vec_f32().unwrap(),
        &model.config.inv_freq().unwrap().to_vec_f32().unwrap(),
    );
    assert!(be <= INV_FREQ_TOL, "written llama3 settings: {be:e}");
    // kiln's GGUF export of it keeps the table (a re-export that dropped it would rotate with
    // unscaled frequencies) and reads back to the same logits.
    let out = std::env::temp_dir().join(format!("kiln-rope-export-{}.gguf", std::process::id()));
    kiln::export::export_gguf(&model, None, &path, kiln::export::quant_type("f32").unwrap(), false, &out).unwrap();
    let again = Llama::load(&out, false).unwrap();
    assert_eq!(again.config.rope, model.config.rope);
    let xe = rel_err("exported logits", &run(&again, &r, None).0, &base);
    assert!(xe <= LOGITS_TOL, "exported GGUF logits {xe:e}");
    let _ = std::fs::remove_file(&out);
    eprintln!(
        "llama3.gguf: exported {xe:.2e}, inv_freq rel {fe:.2e}, logits vs folder {ke:.2e}, base loss rel {ble:.2e}, LoRA logits rel {e:.2e}, written config {be:.2e}"
    );
}

/// kiln's GGUF export of a config.json model writes its RoPE scaling as llama.cpp's converter
/// does (the converter's files are the reference: same `rope.scaling.*` values, the same
/// `rope_freqs.weight` divisors) and reads back to transformers' logits.
#[test]
fn gguf_export_writes_rope_scaling_as_the_converter() {
    use kiln::data::tokenizer::TextTokenizer;
    for (folder, converted) in [
        ("tiny-llama", "rope/llama3.gguf"),
        ("rope/linear-llama", "rope/linear.gguf"),
        ("rope/yarn-qwen2", "rope/yarn.gguf"),
    ] {
        let model = Llama::load(&fixture(folder), false).unwrap();
        let conv = GgufFile::open(&fixture(converted)).unwrap();
        // The tiny models have no tokenizer of their own: the converted file's stub vocabulary.
        let tok = TextTokenizer::from_gguf(&conv).unwrap();
        let out = std::env::temp_dir().join(format!("kiln-rope-cfg-export-{}.gguf", std::process::id()));
        let f32_ = kiln::export::quant_type("f32").unwrap();
        kiln::export::export_gguf_with_tokenizer(&model, None, Some(&tok), None, &fixture(folder), f32_, false, &out)
            .unwrap();
        let ours = GgufFile::open(&out).unwrap();
        let rope_keys = |g: &GgufFile| -> Vec<(String, f64)> {
            let mut v: Vec<(String, f64)> = g
                .metadata
                .iter()
                .filter(|(k, _)| k.contains(".rope.scaling.") && !k.contains("yarn_beta"))
                .map(|(k, x)| {
                    (k.clone(), x.as_f64().unwrap_or_else(|| if x.as_str() == Some("yarn") { 2.0 } else { 1.0 }))
                })
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        assert_eq!(rope_keys(&ours), rope_keys(&conv), "{folder}");
        let table =
            |g: &GgufFile| g.tensor("rope_freqs.weight").map(|t| g.dequantize(&t.name).unwrap().to_vec_f32().unwrap());
        let (a, b) = (table(&ours), table(&conv));
        assert_eq!(a.is_some(), b.is_some(), "{folder}: rope_freqs.weight");
        let te = match (a, b) {
            (Some(a), Some(b)) => rel_err(&format!("{folder}: rope_freqs"), &a, &b),
            _ => 0.0,
        };
        assert!(te <= INV_FREQ_TOL, "{folder}: rope_freqs vs the converter's {te:e}");
        let back = Llama::load(&out, false).unwrap();
        let r = WeightStore::open(&fixture(folder).join("reference.safetensors")).unwrap();
        let xe = rel_err(&format!("{folder}: exported"), &run(&back, &r, None).0, &run(&model, &r, None).0);
        assert!(xe <= LOGITS_TOL, "{folder}: exported GGUF logits vs the folder {xe:e}");
        let _ = std::fs::remove_file(&out);
        eprintln!("{folder} → GGUF: rope_freqs vs converter {te:.2e}, logits vs folder {xe:.2e}");
    }
    // GGUF cannot say truncate = false (llama.cpp always rounds): refused, not approximated.
    let model = Llama::load(&fixture("rope/yarn-llama"), false).unwrap();
    let tok = TextTokenizer::from_gguf(&GgufFile::open(&fixture("rope/yarn.gguf")).unwrap()).unwrap();
    let out = std::env::temp_dir().join(format!("kiln-rope-trunc-{}.gguf", std::process::id()));
    let f32_ = kiln::export::quant_type("f32").unwrap();
    let e = kiln::export::export_gguf_with_tokenizer(
        &model,
        None,
        Some(&tok),
        None,
        &fixture("rope/yarn-llama"),
        f32_,
        false,
        &out,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("truncate"), "{e}");
    assert!(!out.exists());
}

/// `src` rewritten with metadata `set` (a `None` value removes the key) and the tensor
/// `rope_freqs.weight` replaced by `freqs` (F32, when given).
fn edited(src: &str, tag: &str, set: &[(&str, Option<MetaValue>)], freqs: Option<&[f32]>) -> PathBuf {
    let g = GgufFile::open(&fixture(src)).unwrap();
    let mut meta: Vec<(String, MetaValue)> =
        g.metadata.iter().filter(|(k, _)| !set.iter().any(|(s, _)| s == k)).cloned().collect();
    meta.extend(set.iter().filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v))));
    let mut tensors: Vec<OutTensor> = g
        .tensors
        .iter()
        .filter(|t| freqs.is_none() || t.name != "rope_freqs.weight")
        .map(|t| OutTensor { name: t.name.clone(), ty: t.ty, shape: t.shape(), data: g.bytes(t).to_vec() })
        .collect();
    if let Some(f) = freqs {
        tensors.push(OutTensor {
            name: "rope_freqs.weight".into(),
            ty: kiln::core::quant::GgmlType::F32,
            shape: vec![f.len()],
            data: f.iter().flat_map(|x| x.to_le_bytes()).collect(),
        });
    }
    let p = std::env::temp_dir().join(format!("kiln-rope-{tag}-{}.gguf", std::process::id()));
    write_gguf(&p, &meta, &tensors).unwrap();
    p
}

fn load_err(p: &Path) -> String {
    match Llama::load(p, false) {
        Ok(_) => panic!("{} loaded", p.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_gguf_rope_settings_are_refused_naming_file_and_key() {
    let s = |x: &str| Some(MetaValue::Str(x.into()));
    let f = |x: f32| Some(MetaValue::F32(x));
    /// (tag, source file, metadata edits, replacement divisors, text the error must hold)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, Option<MetaValue>)>, Option<Vec<f32>>, &'a str);
    let cases: Vec<Case> = vec![
        ("freqs-short", "rope/llama3.gguf", vec![], Some(vec![1.0, 8.0, 8.0]), "rope_freqs.weight"),
        ("freqs-zero", "rope/llama3.gguf", vec![], Some(vec![1.0, 0.0, 8.0, 8.0]), "entry 1 is 0"),
        ("freqs-neg", "rope/llama3.gguf", vec![], Some(vec![1.0, 2.0, -8.0, 8.0]), "entry 2 is -8"),
        ("freqs-nan", "rope/llama3.gguf", vec![], Some(vec![f32::NAN, 2.0, 8.0, 8.0]), "entry 0 is NaN"),
        ("freqs-inf", "rope/llama3.gguf", vec![], Some(vec![1.0, 2.0, 8.0, f32::INFINITY]), "entry 3 is inf"),
        (
            "freqs-and-type",
            "rope/llama3.gguf",
            vec![("llama.rope.scaling.type", s("linear")), ("llama.rope.scaling.factor", f(2.0))],
            None,
            "llama.rope.scaling.type",
        ),
        ("type-unknown", "rope/linear.gguf", vec![("llama.rope.scaling.type", s("ntk-magic"))], None, "ntk-magic"),
        ("type-longrope", "rope/linear.gguf", vec![("llama.rope.scaling.type", s("longrope"))], None, "longrope"),
        ("type-number", "rope/linear.gguf", vec![("llama.rope.scaling.type", f(1.0))], None, "llama.rope.scaling.type"),
        (
            "linear-zero",
            "rope/linear.gguf",
            vec![("llama.rope.scaling.factor", f(0.0))],
            None,
            "llama.rope.scaling.factor",
        ),
        ("linear-missing", "rope/linear.gguf", vec![("llama.rope.scaling.factor", None)], None, "missing"),
        ("yarn-zero", "rope/yarn.gguf", vec![("qwen2.rope.scaling.factor", f(0.0))], None, "qwen2.rope.scaling.factor"),
        ("yarn-neg", "rope/yarn.gguf", vec![("qwen2.rope.scaling.factor", f(-4.0))], None, "positive"),
        ("yarn-nan", "rope/yarn.gguf", vec![("qwen2.rope.scaling.factor", f(f32::NAN))], None, "positive"),
        (
            "yarn-ctx",
            "rope/yarn.gguf",
            vec![("qwen2.rope.scaling.original_context_length", Some(MetaValue::I32(-16)))],
            None,
            "qwen2.rope.scaling.original_context_length",
        ),
        (
            "yarn-beta",
            "rope/yarn.gguf",
            vec![("qwen2.rope.scaling.yarn_beta_fast", f(-1.0))],
            None,
            "qwen2.rope.scaling.yarn_beta_fast",
        ),
        (
            "yarn-ext",
            "rope/yarn.gguf",
            vec![("qwen2.rope.scaling.yarn_ext_factor", f(0.5))],
            None,
            "qwen2.rope.scaling.yarn_ext_factor",
        ),
        (
            "attn-linear",
            "rope/linear.gguf",
            vec![("llama.rope.scaling.attn_factor", f(2.0))],
            None,
            "llama.rope.scaling.attn_factor",
        ),
    ];
    let n = cases.len();
    for (tag, src, set, freqs, want) in cases {
        let p = edited(src, tag, &set, freqs.as_deref());
        let e = load_err(&p);
        assert!(e.contains(want) && e.contains(&p.display().to_string()), "{tag}: {e}");
        let _ = std::fs::remove_file(&p);
    }
    assert_eq!(n, 18);
    // The keys that are optional change nothing when written with their defaults, and an
    // explicit `none` is no scaling.
    let p = edited(
        "rope/yarn.gguf",
        "defaults",
        &[
            ("qwen2.rope.scaling.yarn_beta_fast", f(32.0)),
            ("qwen2.rope.scaling.yarn_beta_slow", f(1.0)),
            ("qwen2.rope.scaling.yarn_ext_factor", f(1.0)),
        ],
        None,
    );
    let m = Llama::load(&p, false).unwrap();
    assert_eq!(m.config.rope, ModelConfig::load(&fixture("rope/yarn-qwen2")).unwrap().rope);
    let _ = std::fs::remove_file(&p);
    let p = edited("rope/linear.gguf", "none", &[("llama.rope.scaling.type", s("none"))], None);
    assert_eq!(Llama::load(&p, false).unwrap().config.rope, RopeKind::Default);
    let _ = std::fs::remove_file(&p);
}
