//! Models named `org/name[@revision]` from a Hugging Face cache laid out as huggingface_hub
//! lays it (`models--org--name/refs/<rev>` → `snapshots/<commit>/`), built in a temp folder with
//! the fixture models; `kiln info --model` printing a model's shape (folder and GGUF); and the
//! bad input: a dangling ref, a name absent offline, a path that is not there, an unknown
//! architecture. Every run sets `HF_HUB_OFFLINE=1`: nothing here reaches a network.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use kiln::formats::gguf::MetaValue;
use kiln::formats::gguf_write::{OutTensor, write_gguf};

const MAIN: &str = "0123456789abcdef0123456789abcdef01234567";
const V1: &str = "fedcba9876543210fedcba9876543210fedcba98";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("hub-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// `dir` with config.json's `max_position_embeddings` set to `ctx`: tells snapshots apart.
fn set_context(dir: &Path, ctx: u64) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["max_position_embeddings"] = ctx.into();
    std::fs::write(&p, v.to_string()).unwrap();
}

/// A cache under `root/hub` holding `org/tiny`: refs/main → MAIN (tiny-llama, context 64),
/// refs/v1 → V1 (context 128). Returns the cache folder.
fn cache_with_tiny(root: &Path) -> PathBuf {
    let cache = root.join("hub");
    let repo = cache.join("models--org--tiny");
    for (commit, ctx) in [(MAIN, 64), (V1, 128)] {
        let snap = repo.join("snapshots").join(commit);
        copy_dir(&fixtures().join("tiny-llama"), &snap);
        set_context(&snap, ctx);
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), MAIN).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{V1}\n")).unwrap();
    cache
}

fn kiln(cache: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.current_dir(cwd).env("HF_HUB_CACHE", cache).env("HF_HUB_OFFLINE", "1").env_remove("HF_HOME");
    c
}

fn info(cache: &Path, cwd: &Path, model: &str) -> Output {
    kiln(cache, cwd).args(["info", "--json", "--model", model]).output().unwrap()
}

fn shape_of(o: &Output) -> serde_json::Value {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["model"]["shape"].clone()
}

/// kiln's error: the last line of stderr (a graphics driver probed by `info` may print before
/// it), one sentence after `error:`.
fn failure(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.trim_end().lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("error: "), "{err}");
    last
}

#[test]
fn names_resolve_from_the_cache_by_ref_and_by_commit() {
    let t0 = std::time::Instant::now();
    let d = scratch("resolve");
    let cache = cache_with_tiny(&d);
    let o = info(&cache, &d, "org/tiny");
    let s = shape_of(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    let snap = cache.join("models--org--tiny/snapshots").join(MAIN);
    assert!(err.contains("Hugging Face cache") && err.contains(&*snap.to_string_lossy()), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("kiln: --model")).count(), 1, "one line says which model: {err}");
    // tiny-llama's config.json, read back whole.
    let want = [
        ("layers", 2.0),
        ("hidden_size", 32.0),
        ("heads", 4.0),
        ("kv_heads", 2.0),
        ("head_dim", 8.0),
        ("vocab_size", 96.0),
        ("context_length", 64.0),
        ("rope_theta", 10000.0),
    ];
    for (k, v) in want {
        assert_eq!(s[k].as_f64(), Some(v), "{k}: {s}");
    }
    assert!(s["rope_scaling"].as_str().is_some_and(|r| r.contains("Llama3") && r.contains("factor: 8.0")), "{s}");
    // A branch or tag through refs/, a whole commit, a commit's first digits.
    for (rev, ctx) in [("v1", 128.0), (V1, 128.0), (&MAIN[..9], 64.0), ("main", 64.0)] {
        let s = shape_of(&info(&cache, &d, &format!("org/tiny@{rev}")));
        assert_eq!(s["context_length"].as_f64(), Some(ctx), "@{rev}");
    }
    // The same through HF_HOME (its hub/ folder) instead of HF_HUB_CACHE.
    let o = kiln(&cache, &d)
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &d)
        .args(["info", "--json", "--model", "org/tiny@v1"])
        .output()
        .unwrap();
    assert_eq!(shape_of(&o)["context_length"].as_f64(), Some(128.0));
    eprintln!("hub: cache resolution (6 kiln info runs) in {:.2} s", t0.elapsed().as_secs_f64());
}

#[test]
fn an_existing_local_path_wins_over_a_name() {
    let d = scratch("local");
    let cache = cache_with_tiny(&d);
    let local = d.join("org/tiny");
    copy_dir(&fixtures().join("tiny-llama"), &local);
    set_context(&local, 32);
    let o = info(&cache, &d, "org/tiny");
    assert_eq!(shape_of(&o)["context_length"].as_f64(), Some(32.0));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("the local path") && err.contains("org/tiny"), "{err}");
}

#[test]
fn bad_names_and_paths_fail_with_one_clear_sentence() {
    let d = scratch("bad");
    let cache = cache_with_tiny(&d);
    // A ref naming a snapshot that is not there: the ref's file is named.
    let repo = cache.join("models--org--tiny");
    std::fs::write(repo.join("refs/broken"), "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef").unwrap();
    let err = failure(&info(&cache, &d, "org/tiny@broken"));
    assert!(err.contains(&*repo.join("refs/broken").to_string_lossy()) && err.contains("deadbeef"), "{err}");
    // An unknown revision, and a model the cache lacks, offline: the name, the folder searched
    // and how to get it.
    for (name, folder) in [("org/tiny@v9", "models--org--tiny"), ("org/absent", "models--org--absent")] {
        let err = failure(&info(&cache, &d, name));
        assert!(
            err.contains(name)
                && err.contains(&*cache.join(folder).to_string_lossy())
                && err.contains("HF_HUB_OFFLINE")
                && err.contains("huggingface-cli download"),
            "{err}"
        );
    }
    // Neither a path nor `org/name`: one sentence naming it, for every command that loads.
    for m in ["./nope/model.gguf", "gpt2", "a/b/c"] {
        let err = failure(&info(&cache, &d, m));
        assert!(err.contains(m) && err.contains("no such file or folder") && err.contains("org/name"), "{err}");
    }
    let o = kiln(&cache, &d).args(["generate", "--model", "missing.gguf", "--prompt", "hello"]).output().unwrap();
    assert!(failure(&o).contains("missing.gguf: no such file or folder"));
}

#[test]
fn train_dry_run_takes_a_name() {
    let d = scratch("train");
    let cache = d.join("hub");
    let snap = cache.join("models--org--tiny-chat/snapshots").join(MAIN);
    let model = common::tiny_model(&d, 5);
    copy_dir(&model, &snap);
    std::fs::create_dir_all(cache.join("models--org--tiny-chat/refs")).unwrap();
    std::fs::write(cache.join("models--org--tiny-chat/refs/main"), MAIN).unwrap();
    let rows: String = (0..8)
        .map(|i| format!("{}\n", serde_json::json!({"prompt": format!("colour {i}?"), "completion": "blue"})))
        .collect();
    std::fs::write(d.join("data.jsonl"), rows).unwrap();
    let o = kiln(&cache, &d)
        .args(["train", "--dry-run", "--model", "org/tiny-chat", "--data", "data.jsonl", "--out", "out"])
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{log}");
    assert!(log.contains("plan:") && log.contains(&*snap.to_string_lossy()), "{log}");
    assert!(!d.join("out/config.toml").exists());
}

#[test]
fn info_prints_a_gguf_models_shape() {
    let Some(gguf) = common::smollm2() else { return };
    let o = Command::new(env!("CARGO_BIN_EXE_kiln")).args(["info", "--model"]).arg(&gguf).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // SmolLM2-135M's config.json, as its GGUF carries it.
    assert!(
        text.contains(
            "shape: 30 layers, hidden 576 (MLP 1536), 9 heads, 3 KV heads, head dim 64, vocab 49152, context 8192, RoPE theta 100000.0 scaling none"
        ),
        "{text}"
    );
    // The same model named from a cache that holds only its GGUF (a GGUF-only repository).
    let d = scratch("gguf");
    let snap = d.join("hub/models--org--smol-gguf/snapshots").join(MAIN);
    std::fs::create_dir_all(&snap).unwrap();
    std::os::unix::fs::symlink(&gguf, snap.join("smol.Q4_1.gguf")).unwrap();
    let s = shape_of(&info(&d.join("hub"), &d, &format!("org/smol-gguf@{MAIN}")));
    assert_eq!((s["layers"].as_u64(), s["vocab_size"].as_u64()), (Some(30), Some(49152)), "{s}");
}

#[test]
fn unknown_architectures_are_refused_naming_the_supported_ones() {
    let d = scratch("arch");
    let folder = d.join("neox");
    copy_dir(&fixtures().join("tiny-llama"), &folder);
    let cfg = std::fs::read_to_string(folder.join("config.json")).unwrap().replace("\"llama\"", "\"gpt_neox\"");
    std::fs::write(folder.join("config.json"), cfg).unwrap();
    // A GGUF naming an architecture kiln does not run, with every shape key and a block.
    let file = d.join("neox.gguf");
    let meta: Vec<(String, MetaValue)> = [
        ("general.architecture", MetaValue::Str("gpt_neox".into())),
        ("gpt_neox.block_count", MetaValue::U32(1)),
        ("gpt_neox.attention.head_count", MetaValue::U32(2)),
        ("gpt_neox.embedding_length", MetaValue::U32(8)),
        ("gpt_neox.feed_forward_length", MetaValue::U32(16)),
        ("gpt_neox.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let t = OutTensor {
        name: "blk.0.attn_norm.weight".into(),
        ty: kiln::core::quant::GgmlType::F32,
        shape: vec![8],
        data: vec![0; 32],
    };
    write_gguf(&file, &meta, &[t]).unwrap();
    for m in [&folder, &file] {
        let err = failure(&info(&d, &d, &m.to_string_lossy()));
        assert!(err.contains("gpt_neox") && err.contains("llama") && err.contains("qwen2"), "{err}");
    }
}
