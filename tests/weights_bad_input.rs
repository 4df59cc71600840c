//! Bad model files give errors that name the file and the tensor or field — never a panic or an
//! out-of-bounds read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln::model::Llama;
use safetensors::tensor::{Dtype, TensorView};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama")
}

/// A fresh copy of the tiny Llama fixture in its own temp directory.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), d.join(f)).unwrap();
    }
    d
}

/// Rewrites `file` with `edit` applied to its (name → (dtype, shape, bytes)) map.
fn rewrite(file: &Path, edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut m: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut m);
    let views: Vec<(String, TensorView<'_>)> =
        m.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(file, out).unwrap();
}

fn load_err(dir: &Path) -> String {
    match Llama::load(dir, false) {
        Ok(_) => panic!("{} loaded but should not", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named() {
    let d = scratch("missing");
    rewrite(&d.join("model.safetensors"), |m| {
        m.remove("model.layers.1.mlp.up_proj.weight");
    });
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("model.layers.1.mlp.up_proj.weight") && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let d = scratch("shape");
    rewrite(&d.join("model.safetensors"), |m| {
        let e = m.get_mut("model.layers.0.self_attn.k_proj.weight").unwrap();
        e.1 = vec![e.1[1], e.1[0]];
    });
    let e = load_err(&d);
    assert!(e.contains("model.layers.0.self_attn.k_proj.weight") && e.contains("shape"), "{e}");
}

#[test]
fn wrong_dtype_is_named() {
    let d = scratch("dtype");
    rewrite(&d.join("model.safetensors"), |m| {
        m.get_mut("model.norm.weight").unwrap().0 = Dtype::I32;
    });
    let e = load_err(&d);
    assert!(e.contains("model.norm.weight") && e.contains("i32"), "{e}");
    let d = scratch("dtype64");
    rewrite(&d.join("model.safetensors"), |m| {
        let t = m.get_mut("model.norm.weight").unwrap();
        t.0 = Dtype::I64;
        t.1 = vec![t.1[0] / 2];
    });
    let e = load_err(&d);
    assert!(e.contains("model.norm.weight") && e.contains("I64"), "{e}");
}

#[test]
fn truncated_file_is_an_error() {
    let d = scratch("trunc");
    let f = d.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 20, 7, 0] {
        std::fs::write(&f, &bytes[..cut]).unwrap();
        let e = load_err(&d);
        assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "cut at {cut}: {e}");
    }
}

#[test]
fn corrupt_header_is_an_error() {
    let d = scratch("header");
    let f = d.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    // Header length far beyond the file.
    let mut b1 = bytes.clone();
    b1[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&f, &b1).unwrap();
    assert!(load_err(&d).contains("not a valid safetensors"));
    // Broken JSON inside the header.
    bytes[9] = b'#';
    std::fs::write(&f, &bytes).unwrap();
    assert!(load_err(&d).contains("not a valid safetensors"));
    // Offsets pointing past the data: rewrite one offset in the JSON text.
    let good = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(good[8..8 + n].to_vec()).unwrap();
    let at = header.find("data_offsets\":[").unwrap() + "data_offsets\":[".len();
    let mut h2 = header.clone();
    h2.replace_range(at..at + 1, "9");
    let mut b3 = good[..8].to_vec();
    b3.extend_from_slice(h2.as_bytes());
    b3.extend_from_slice(&good[8 + n..]);
    std::fs::write(&f, &b3).unwrap();
    assert!(load_err(&d).contains("not a valid safetensors"));
}

#[test]
fn index_with_missing_shard_is_named() {
    let d = scratch("index");
    std::fs::rename(d.join("model.safetensors"), d.join("model-00001-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
        "lm_head.weight": "model-00002-of-00002.safetensors"}});
    std::fs::write(d.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let e = load_err(&d);
    assert!(e.contains("model.safetensors.index.json") && e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn sharded_model_loads() {
    let d = scratch("sharded");
    let src = d.join("model.safetensors");
    let bytes = std::fs::read(&src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView<'_>)> = part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        std::fs::write(d.join(&file), safetensors::serialize(views, None).unwrap()).unwrap();
        for n in part {
            map.insert(n.clone(), file.clone().into());
        }
    }
    drop(st);
    std::fs::remove_file(&src).unwrap();
    std::fs::write(d.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string()).unwrap();
    let m = Llama::load(&d, false).unwrap();
    assert_eq!(m.named_weights().len(), names.len());
}

#[test]
fn unknown_architecture_lists_supported_ones() {
    let d = scratch("arch");
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap().replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(d.join("config.json"), cfg).unwrap();
    let e = load_err(&d);
    assert!(e.contains("gpt_neox") && e.contains("llama, mistral, qwen2, qwen3") && e.contains("config.json"), "{e}");
}
