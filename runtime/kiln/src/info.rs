//! `kiln info`: version, compiled and available backends, CPU threads and SIMD level, wgpu
//! adapters, CUDA devices, and why a backend is unavailable; with a model, its shape (read from
//! `config.json` or GGUF metadata before anything is allocated), what it holds and what it
//! costs in memory. Also the process's memory figures other reports quote.

use std::path::Path;

use kiln_core::{Tape, Tensor};
use serde_json::{Value, json};

use crate::Result;
use crate::data::tokenizer::TextTokenizer;
use crate::formats::gguf::{GgufFile, MetaValue};
use crate::model::gguf::config_from_gguf;
use crate::model::{Inputs, Llama, ModelConfig, RopeKind, default_positions};

/// The SIMD level the CPU kernels can use here.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "avx2+fma";
        }
        if is_x86_feature_detected!("sse4.2") {
            return "sse4.2";
        }
        "sse2"
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon"
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar"
    }
}

/// Resident memory of this process in bytes: `(total, anonymous, file-backed)` from
/// /proc/self/status (Linux); zeros elsewhere.
pub fn rss_bytes() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |k: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"), field("RssFile:"))
}

/// Everything `kiln info` reports, as JSON.
pub fn report() -> Value {
    let cuda = kiln_cuda::probe();
    let wgpu = kiln_wgpu::probe();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "backends": {
            "cpu": {
                "compiled": true,
                "available": true,
                "threads": rayon::current_num_threads(),
                "simd": simd_level(),
                "arch": std::env::consts::ARCH,
            },
            "cuda": {
                "compiled": cuda.compiled,
                "available": cuda.unavailable.is_none(),
                "nvrtc": cuda.nvrtc,
                "devices": cuda.devices.iter().map(|d| json!({
                    "ordinal": d.ordinal, "name": d.name,
                    "compute_capability": format!("{}.{}", d.compute_capability.0, d.compute_capability.1),
                    "memory_mb": d.total_mem_bytes / (1 << 20),
                })).collect::<Vec<_>>(),
                "unavailable_reason": cuda.unavailable,
            },
            "cuda-emu": {
                "compiled": cfg!(feature = "cuda-emu"),
                "available": cfg!(feature = "cuda-emu"),
                "kernels": kiln_cuda::kernels::SOURCES.iter().map(|(_, s)| kiln_cuda::kernels::entry_points(s).len()).sum::<usize>(),
                "unavailable_reason": (!cfg!(feature = "cuda-emu")).then_some("not compiled (feature `cuda-emu`)"),
            },
            "wgpu": {
                "compiled": wgpu.compiled,
                "available": wgpu.unavailable.is_none(),
                "adapters": wgpu.adapters.iter().map(|a| json!({
                    "name": a.name, "backend": a.backend, "device_type": a.device_type,
                    "driver": a.driver, "shader_f16": a.shader_f16, "subgroups": a.subgroups,
                })).collect::<Vec<_>>(),
                "unavailable_reason": wgpu.unavailable,
            },
        },
    })
}

/// Human-readable form of [`report`] (with its `model`, when present).
pub fn render(v: &Value) -> String {
    let mut s = format!("kiln {}\n", v["version"].as_str().unwrap_or("?"));
    let b = &v["backends"];
    let cpu = &b["cpu"];
    s += &format!(
        "  cpu   available  {} threads, {} ({})\n",
        cpu["threads"],
        cpu["simd"].as_str().unwrap_or("?"),
        cpu["arch"].as_str().unwrap_or("?")
    );
    for name in ["cuda", "cuda-emu", "wgpu"] {
        let x = &b[name];
        let state = match (x["compiled"].as_bool(), x["available"].as_bool()) {
            (Some(false), _) => "not compiled",
            (_, Some(true)) => "available",
            _ => "unavailable",
        };
        s += &format!("  {name:<5} {state}");
        if name == "cuda-emu" && state == "available" {
            s += &format!(": the {} CUDA kernels on this CPU (correctness, not speed)", x["kernels"]);
        }
        if let Some(r) = x["unavailable_reason"].as_str() {
            s += &format!(": {r}");
        }
        s += "\n";
        if name == "cuda" {
            s +=
                &format!("        nvrtc: {}\n", if x["nvrtc"].as_bool() == Some(true) { "found" } else { "not found" });
        }
        // The index is what `--device` takes.
        for (i, d) in x["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(x["adapters"].as_array().into_iter().flatten())
            .enumerate()
        {
            s += &format!("        [{i}] {}\n", d);
        }
    }
    if let Some(m) = v.get("model") {
        s += &render_model(m);
    }
    s
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`), when the OS reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<f64>().ok()?;
    Some(kb / 1024.0)
}

/// What `kiln info --model` adds: a `.gguf` file's header, validated as loading would (the
/// model's shape against its tensors, its tokenizer), or a model folder loaded, with its memory
/// before and after one short forward.
pub fn model(path: &Path) -> Result<Value> {
    if path.extension().is_some_and(|e| e == "gguf") { gguf_model(path) } else { dir_model(path) }
}

/// The shape of a model as its config gives it: what `kiln info --model` prints for any model
/// kiln reads.
pub fn shape(c: &ModelConfig) -> Value {
    let scaling = match &c.rope {
        RopeKind::Default => None,
        // A GGUF's per-frequency table is summarized: its entries say little one by one.
        RopeKind::Factors(f) => {
            let (lo, hi) = f.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
            Some(format!("rope_freqs table of {} factors in [{lo}, {hi}]", f.len()))
        }
        RopeKind::LongRope(l) => Some(format!(
            "longrope ({} short and long factors, long beyond {} positions, attention factor {:.6})",
            l.short_factor.len(),
            l.original_max_position_embeddings,
            l.attention_factor
        )),
        other => Some(format!("{other:?}")),
    };
    let mut v = json!({
        "arch": format!("{:?}", c.arch),
        "layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rotary_dim": c.rotary_dim,
        "vocab_size": c.vocab_size,
        "context_length": c.max_position_embeddings,
        "rope_theta": c.rope_theta,
        "rope_scaling": scaling,
        "sliding_window": c.sliding_window,
        "tie_word_embeddings": c.tie_word_embeddings,
    });
    if let Some(g) = &c.gemma {
        // Gemma: the window applies to the sliding layers only, which rotate with their own base.
        let global: Vec<usize> = g.sliding.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).collect();
        v["sliding_window"] = g.sliding_window.into();
        v["sliding_layers"] = g.sliding.iter().filter(|s| **s).count().into();
        v["global_layers"] = json!(global);
        v["rope_local_theta"] = g.local_rope_theta.into();
        v["query_pre_attn_scalar"] = g.query_pre_attn_scalar.into();
        v["attn_softcap"] = g.attn_softcap.into();
        v["final_softcap"] = g.final_softcap.into();
    }
    v
}

fn render_shape(s: &Value) -> String {
    format!(
        "  shape: {} layers, hidden {} (MLP {}), {} heads, {} KV heads, head dim {}{}, vocab {}, context {}, RoPE theta {} scaling {}{}\n",
        s["layers"],
        s["hidden_size"],
        s["intermediate_size"],
        s["heads"],
        s["kv_heads"],
        s["head_dim"],
        // Partial rotary (Phi-4-mini): only the first dims of each head are rotated.
        Some(&s["rotary_dim"]).filter(|r| **r != s["head_dim"]).map(|r| format!(" ({r} rotated)")).unwrap_or_default(),
        s["vocab_size"],
        s["context_length"],
        s["rope_theta"],
        s["rope_scaling"].as_str().unwrap_or("none"),
        s["sliding_window"].as_u64().map(|w| format!(", sliding window {w}")).unwrap_or_default()
    ) + &gemma_line(s)
}

/// Gemma's extra shape: which layers slide, their RoPE base, the soft-caps.
fn gemma_line(s: &Value) -> String {
    if s["sliding_layers"].is_null() {
        return String::new();
    }
    let cap = |k: &str| s[k].as_f64().map(|c| c.to_string()).unwrap_or_else(|| "none".into());
    format!(
        "  gemma: {} sliding layers (RoPE theta {}), global layers {}, query_pre_attn_scalar {}, attention soft-cap {}, logit soft-cap {}\n",
        s["sliding_layers"],
        s["rope_local_theta"],
        s["global_layers"],
        s["query_pre_attn_scalar"],
        cap("attn_softcap"),
        cap("final_softcap")
    )
}

fn dir_model(dir: &Path) -> Result<Value> {
    // The config first: an unknown model_type or a bad size is refused before any weight maps.
    let config = ModelConfig::load(dir)?;
    let before = rss_bytes();
    let m = Llama::load(dir, false)?;
    let after = rss_bytes();
    let bytes: usize = m.named_weights().iter().map(|(_, w)| w.value().numel() * w.value().dtype().size()).sum();
    let mapped = m.named_weights().iter().filter(|(_, w)| w.value().is_mapped()).count();
    // One short no-grad forward touches every weight: the map's pages become resident
    // (file-backed RSS) while anonymous memory grows only by activations and temporaries.
    let ids = Tensor::from_vec((0..8).map(|i| i % m.config.vocab_size as i32).collect::<Vec<i32>>(), [1, 8])?;
    let pos = default_positions(1, 8)?;
    let tape = Tape::no_grad();
    m.forward(&tape, &Inputs { ids: &ids, pos: &pos, seg: None, shared_prefix: false, base_only: false }, None, false)?;
    let fwd = rss_bytes();
    Ok(json!({
        "path": dir.display().to_string(),
        "shape": shape(&config),
        "arch": format!("{:?}", m.config.arch),
        "params": m.config.num_params(),
        "layers": m.config.num_layers,
        "hidden_size": m.config.hidden_size,
        "vocab_size": m.config.vocab_size,
        "weight_bytes": bytes,
        "tensors_mapped": mapped,
        "tensors": m.named_weights().len(),
        "rss_before_load_mb": before.0 as f64 / 1048576.0,
        "rss_after_load_mb": after.0 as f64 / 1048576.0,
        "anon_rss_growth_mb": (after.1 as f64 - before.1 as f64) / 1048576.0,
        "rss_after_forward_mb": fwd.0 as f64 / 1048576.0,
        "file_rss_after_forward_mb": fwd.2 as f64 / 1048576.0,
        "anon_rss_after_forward_mb": fwd.1 as f64 / 1048576.0,
    }))
}

fn gguf_model(path: &Path) -> Result<Value> {
    let t0 = std::time::Instant::now();
    let g = GgufFile::open(path)?;
    // "Validated" means what loading it would check, for what the file claims to hold: a
    // model's shape against the tensors present (when it names a block count) and its tokenizer
    // metadata (when it names a tokenizer), not only the header's bounds. A GGUF of other
    // tensors (a quantization test file, a LoRA) is described as it is.
    let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    let config = match g.get(&format!("{arch}.block_count")) {
        Some(_) => Some(config_from_gguf(&g)?),
        None => None,
    };
    let layers = config.as_ref().map(|c| c.num_layers);
    if g.get("tokenizer.ggml.model").is_some() {
        TextTokenizer::from_gguf(&g)?;
    }
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut types = std::collections::BTreeMap::<&str, usize>::new();
    for t in &g.tensors {
        *types.entry(t.ty.name()).or_insert(0) += 1;
    }
    let vocab = match g.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => a.len(),
        _ => 0,
    };
    Ok(json!({
        "path": path.display().to_string(),
        "version": g.version,
        "arch": g.get("general.architecture").and_then(|v| v.as_str()),
        "name": g.get("general.name").and_then(|v| v.as_str()),
        "params": g.tensors.iter().map(|t| t.numel()).sum::<u64>(),
        "layers": layers,
        "shape": config.as_ref().map(shape),
        "tensors": g.tensors.len(),
        "tensor_types": types,
        "file_bytes": g.file_bytes(),
        "tokenizer": g.get("tokenizer.ggml.model").and_then(|v| v.as_str()),
        "vocab": vocab,
        "chat_template": g.get("tokenizer.chat_template").is_some(),
        "open_ms": open_ms,
    }))
}

/// Human-readable form of [`model`]'s object (a GGUF's header, or a loaded folder's memory).
fn render_model(m: &Value) -> String {
    let f = |k: &str| m[k].as_f64().unwrap_or(0.0);
    let shape = m.get("shape").filter(|s| s.is_object()).map(render_shape).unwrap_or_default();
    let text = if m.get("version").is_some() {
        format!(
            "model {} (GGUF v{})\n  architecture {}, {} params, {} tensors {}, {:.1} MB on disk, opened and validated in {:.1} ms\n  tokenizer: {} ({} tokens); chat template: {}\n",
            m["path"].as_str().unwrap_or(""),
            m["version"],
            m["arch"].as_str().unwrap_or("?"),
            m["params"],
            m["tensors"],
            m["tensor_types"],
            f("file_bytes") / 1048576.0,
            f("open_ms"),
            m["tokenizer"].as_str().unwrap_or("none"),
            m["vocab"],
            if m["chat_template"].as_bool() == Some(true) { "found" } else { "none" }
        )
    } else {
        format!(
            "model {}\n  {} params, {} layers, weights {:.1} MB, {}/{} tensors used from the memory map, anonymous RSS grew {:.1} MB on load\n  after an 8-token forward: RSS {:.1} MB = {:.1} MB file-backed (the map) + {:.1} MB anonymous\n",
            m["path"].as_str().unwrap_or(""),
            m["params"],
            m["layers"],
            f("weight_bytes") / 1048576.0,
            m["tensors_mapped"],
            m["tensors"],
            f("anon_rss_growth_mb"),
            f("rss_after_forward_mb"),
            f("file_rss_after_forward_mb"),
            f("anon_rss_after_forward_mb")
        )
    };
    // The shape goes under the model's first line.
    match text.split_once('\n') {
        Some((head, rest)) => format!("{head}\n{shape}{rest}"),
        None => text + &shape,
    }
}
