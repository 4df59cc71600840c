//! Gemma 2 and Gemma 3 (text): what their `config.json` and GGUF metadata say beyond the Llama
//! shape, and how their weights differ in storage.
//!
//! The decoder itself is [`super::llama`]'s, with the pieces these models add: (1 + w) RMSNorm,
//! sandwich norms around attention and the MLP, embeddings times √hidden, GeGLU, q/k norms
//! (Gemma 3), the attention scale `query_pre_attn_scalar^-½`, sliding-window layers between
//! global ones (each with its RoPE base), and Gemma 2's attention and final-logit soft-caps.
//!
//! Norm weights: transformers stores `w` and multiplies by `1 + w`; llama.cpp's converter stores
//! `1 + w`. kiln holds `1 + w` in memory (so the norm is the plain RMSNorm every backend has):
//! a safetensors folder gets the 1 added on load ([`HfSource`]) and taken off again wherever
//! weights are written in transformers' layout ([`to_hf_layout`]); a GGUF is read as stored.
//!
//! `config.json` is read as transformers 5 reads it: the class defaults fill absent fields
//! (Gemma 3's vision-language configs hold the language model in `text_config`), `layer_types`
//! or else the older `sliding_window_pattern` (Gemma 3; 6 by default) chooses the sliding
//! layers, and RoPE settings come as `rope_parameters` keyed by layer type or as the older
//! `rope_theta` / `rope_local_base_freq` / `rope_scaling` (which applies to global layers).

use std::path::Path;

use kiln_core::{DType, Tensor};
use serde_json::{Map, Value, json};

use super::config::{Arch, ModelConfig, RopeKind};
use super::gguf::WeightSource;
use crate::formats::WeightStore;
use crate::formats::gguf::{GgufFile, MetaArray, MetaValue};
use crate::{KilnError, Result};

/// What Gemma 2/3 add to [`ModelConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    /// The attention scale is `query_pre_attn_scalar^-½` (not `head_dim^-½`).
    pub query_pre_attn_scalar: f64,
    /// The window of the sliding layers (`None`: every layer sees every earlier key).
    pub sliding_window: Option<usize>,
    /// Per layer: a sliding-window layer (else global).
    pub sliding: Vec<bool>,
    /// RoPE of the sliding layers (global layers use the config's `rope_theta` and `rope`).
    pub local_rope_theta: f64,
    pub local_rope: RopeKind,
    /// Attention scores become `cap·tanh(s/cap)` (Gemma 2: 50).
    pub attn_softcap: Option<f64>,
    /// Logits become `cap·tanh(z/cap)` (Gemma 2: 30).
    pub final_softcap: Option<f64>,
    /// Read from a vision-language config (`Gemma3ForConditionalGeneration`): only the language
    /// model is loaded.
    pub multimodal: bool,
}

impl ModelConfig {
    /// The attention window of layer `i`: Gemma's sliding layers, or Mistral's and Phi-3's window
    /// on every layer (transformers' `create_sliding_window_causal_mask` for both). The one
    /// place a layer's window is chosen; Qwen's `use_sliding_window` is not applied (see
    /// [`ModelConfig::applies_window`]).
    pub fn layer_window(&self, i: usize) -> Option<usize> {
        match &self.gemma {
            Some(g) => g.sliding_window.filter(|_| g.sliding.get(i).copied().unwrap_or(false)),
            None => self.sliding_window.filter(|_| self.applies_window()),
        }
    }

    /// Whether kiln applies the config's windows (Gemma, Mistral, Phi-3). A `sliding_window`
    /// it does not apply (Qwen's windowed layers from `max_window_layers` on) bounds the
    /// sequence length instead: longer rows are refused.
    pub fn applies_window(&self) -> bool {
        self.gemma.is_some() || matches!(self.arch, Arch::Mistral | Arch::Phi3)
    }

    /// Whether layer `i` rotates with the local RoPE (Gemma's sliding layers).
    pub fn local_rope(&self, i: usize) -> bool {
        self.gemma.as_ref().is_some_and(|g| g.sliding.get(i).copied().unwrap_or(false))
    }

    /// Whether this is Gemma 2 or 3.
    pub fn is_gemma(&self) -> bool {
        matches!(self.arch, Arch::Gemma2 | Arch::Gemma3)
    }
}

/// `model_type` names (and classes) of Gemma; `None` for other families.
fn gemma_name(name: &str) -> Option<Arch> {
    match name {
        "gemma2" | "Gemma2ForCausalLM" => Some(Arch::Gemma2),
        "gemma3" | "gemma3_text" | "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => Some(Arch::Gemma3),
        _ => None,
    }
}

fn err(path: &Path, field: &str, detail: impl Into<String>) -> KilnError {
    KilnError::Config { path: path.to_path_buf(), field: field.into(), detail: detail.into() }
}

/// transformers 5.25's class defaults (`Gemma2Config`, `Gemma3TextConfig`) for the fields the
/// generic parser reads: real configs leave some out (Gemma 3's `text_config` often has no
/// `vocab_size` or `head_dim`).
fn defaults(arch: Arch) -> Value {
    let common = json!({"hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": true, "query_pre_attn_scalar": 256, "sliding_window": 4096});
    let mut v = common;
    let extra = match arch {
        Arch::Gemma2 => json!({"vocab_size": 256000, "max_position_embeddings": 8192,
            "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "rope_theta": 10000.0}),
        _ => json!({"vocab_size": 262208, "max_position_embeddings": 131072}),
    };
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

/// A Gemma `config.json` object rewritten into the shape the generic parser reads (`None` for
/// other families): the language model of a vision-language config, class defaults for absent
/// fields, and the global layers' RoPE as the top-level `rope_parameters` (the sliding layers'
/// kept under `_local_rope` for [`settings`]).
pub fn prepare(v: &Value, path: &Path) -> Result<Option<Value>> {
    let name = v
        .get("model_type")
        .and_then(|x| x.as_str())
        .or_else(|| v.get("architectures").and_then(|a| a.get(0)).and_then(|x| x.as_str()));
    let Some(arch) = name.and_then(gemma_name) else { return Ok(None) };
    let multimodal = matches!(name, Some("gemma3" | "Gemma3ForConditionalGeneration"));
    let mut o: Map<String, Value> = if multimodal {
        let text = v.get("text_config").and_then(|t| t.as_object()).ok_or_else(|| {
            err(path, "text_config", "missing (a gemma3 vision-language config holds its language model there)")
        })?;
        let mut o = text.clone();
        // The top-level tie applies to the whole model (transformers ties the language model's head).
        if let Some(t) = v.get("tie_word_embeddings").filter(|t| !t.is_null()) {
            o.entry("tie_word_embeddings").or_insert(t.clone());
        }
        o
    } else {
        v.as_object().cloned().ok_or_else(|| err(path, "(json)", "not an object"))?
    };
    o.insert("model_type".into(), if arch == Arch::Gemma2 { "gemma2" } else { "gemma3_text" }.into());
    o.insert("_multimodal".into(), multimodal.into());
    if let Some(d) = defaults(arch).as_object() {
        for (k, x) in d {
            o.entry(k.clone()).or_insert(x.clone());
        }
    }
    // transformers reads `hidden_activation`; an older `hidden_act` beside it is ignored.
    o.remove("hidden_act");
    if arch == Arch::Gemma3 {
        let (full, local) = gemma3_rope(&o, path)?;
        o.remove("rope_scaling");
        o.remove("rope_theta");
        o.insert("rope_parameters".into(), full);
        o.insert("_local_rope".into(), local);
    }
    Ok(Some(Value::Object(o)))
}

/// Gemma 3's RoPE for global and for sliding layers, as `Gemma3TextConfig` derives them.
fn gemma3_rope(o: &Map<String, Value>, path: &Path) -> Result<(Value, Value)> {
    let keyed = o
        .get("rope_parameters")
        .and_then(|p| p.as_object())
        .filter(|p| p.contains_key("full_attention") || p.contains_key("sliding_attention"));
    let (mut full, mut local) = match keyed {
        Some(p) => (
            p.get("full_attention").cloned().unwrap_or(Value::Null),
            p.get("sliding_attention").cloned().unwrap_or(Value::Null),
        ),
        None => {
            let flat = o.get("rope_parameters").or_else(|| o.get("rope_scaling")).cloned().unwrap_or(Value::Null);
            (flat, Value::Null)
        }
    };
    for (p, field) in [(&mut full, "full_attention"), (&mut local, "sliding_attention")] {
        if p.is_null() {
            *p = json!({"rope_type": "default"});
        }
        if !p.is_object() {
            return Err(err(path, &format!("rope_parameters.{field}"), format!("must be an object, got {p}")));
        }
    }
    let theta = |k: &str, d: f64| o.get(k).filter(|x| !x.is_null()).cloned().unwrap_or(d.into());
    if let Some(f) = full.as_object_mut() {
        f.entry("rope_theta").or_insert(theta("rope_theta", 1_000_000.0));
    }
    if let Some(l) = local.as_object_mut() {
        l.entry("rope_theta").or_insert(theta("rope_local_base_freq", 10_000.0));
    }
    Ok((full, local))
}

/// The Gemma settings of a config object [`prepare`]d; `num_layers` as parsed.
pub fn settings(arch: Arch, v: &Value, path: &Path, num_layers: usize, rope_theta: f64) -> Result<Option<GemmaConfig>> {
    if !matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
        return Ok(None);
    }
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    let positive = |k: &str| -> Result<Option<f64>> {
        match get(k) {
            None => Ok(None),
            Some(x) => match x.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => Ok(Some(f)),
                _ => Err(err(path, k, format!("must be a positive number, got {x}"))),
            },
        }
    };
    let query_pre_attn_scalar =
        positive("query_pre_attn_scalar")?.ok_or_else(|| err(path, "query_pre_attn_scalar", "missing"))?;
    let act = get("hidden_activation").and_then(|x| x.as_str()).unwrap_or("gelu_pytorch_tanh");
    if !matches!(act, "gelu_pytorch_tanh" | "gelu_new") {
        return Err(err(
            path,
            "hidden_activation",
            format!("`{act}` is not supported (gelu_pytorch_tanh: the tanh approximation of GELU)"),
        ));
    }
    if get("use_bidirectional_attention").and_then(|x| x.as_bool()) == Some(true) {
        return Err(err(path, "use_bidirectional_attention", "true (an embedding model) is not supported"));
    }
    let sliding_window = match get("sliding_window") {
        None => None,
        Some(x) => Some(
            x.as_u64()
                .filter(|&w| w > 0)
                .ok_or_else(|| err(path, "sliding_window", format!("must be a positive integer, got {x}")))?
                as usize,
        ),
    };
    let sliding: Vec<bool> = match get("layer_types") {
        Some(t) => {
            let a = t.as_array().ok_or_else(|| err(path, "layer_types", format!("must be a list, got {t}")))?;
            if a.len() != num_layers {
                return Err(err(
                    path,
                    "layer_types",
                    format!("has {} entries, but num_hidden_layers is {num_layers}", a.len()),
                ));
            }
            a.iter()
                .enumerate()
                .map(|(i, x)| match x.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(err(
                        path,
                        &format!("layer_types[{i}]"),
                        format!("{x} is not a layer type (sliding_attention, full_attention)"),
                    )),
                })
                .collect::<Result<_>>()?
        }
        None => {
            // Gemma 2 alternates (transformers ignores a pattern there); Gemma 3's older
            // configs give every n-th layer as global.
            let pattern = match (arch, get("sliding_window_pattern")) {
                (Arch::Gemma3, Some(x)) => x.as_u64().filter(|&n| n > 0).ok_or_else(|| {
                    err(path, "sliding_window_pattern", format!("must be a positive integer, got {x}"))
                })? as usize,
                (Arch::Gemma3, None) => 6,
                _ => 2,
            };
            (0..num_layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    let (local_rope_theta, local_rope) = match get("_local_rope") {
        Some(p) => local_rope(v, p, path)?,
        None => (rope_theta, RopeKind::Default),
    };
    Ok(Some(GemmaConfig {
        query_pre_attn_scalar,
        sliding_window,
        sliding,
        local_rope_theta,
        local_rope,
        attn_softcap: positive("attn_logit_softcapping")?,
        final_softcap: positive("final_logit_softcapping")?,
        multimodal: get("_multimodal").and_then(|x| x.as_bool()).unwrap_or(false),
    }))
}

/// The sliding layers' RoPE, parsed by the same code as any `rope_parameters` (a config of the
/// same shape with these parameters); errors name `rope_parameters.sliding_attention.*`.
fn local_rope(v: &Value, p: &Value, path: &Path) -> Result<(f64, RopeKind)> {
    let mut probe = json!({"model_type": "llama", "rope_parameters": p});
    for k in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "max_position_embeddings",
    ] {
        if let Some(x) = v.get(k) {
            probe[k] = x.clone();
        }
    }
    let c = ModelConfig::from_json(&probe, path).map_err(|e| match e {
        KilnError::Config { path, field, detail } => KilnError::Config {
            path,
            field: field.replace("rope_parameters", "rope_parameters.sliding_attention"),
            detail,
        },
        other => other,
    })?;
    Ok((c.rope_theta, c.rope))
}

/// Checks what kiln does not run for Gemma after the generic parse.
pub fn check(c: &ModelConfig, path: &Path) -> Result<()> {
    if let Some(g) = &c.gemma
        && (matches!(c.rope, RopeKind::Yarn(_)) || matches!(g.local_rope, RopeKind::Yarn(_)))
    {
        return Err(err(
            path,
            "rope_parameters.rope_type",
            "yarn is not supported for Gemma (its cos/sin factor differs per layer type)",
        ));
    }
    Ok(())
}

/// transformers' config fields for a Gemma model (written with exported models).
pub fn hf_json(c: &ModelConfig, g: &GemmaConfig, v: &mut Value) {
    let Some(o) = v.as_object_mut() else { return };
    for k in ["hidden_act", "mlp_bias", "use_sliding_window"] {
        o.remove(k);
    }
    o.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
    // An integer in transformers' config classes (its strict validation refuses 16.0).
    let q = g.query_pre_attn_scalar;
    o.insert("query_pre_attn_scalar".into(), if q.fract() == 0.0 { json!(q as u64) } else { q.into() });
    o.insert("sliding_window".into(), g.sliding_window.into());
    let types: Vec<&str> = g.sliding.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect();
    o.insert("layer_types".into(), json!(types));
    o.insert("attn_logit_softcapping".into(), g.attn_softcap.into());
    o.insert("final_logit_softcapping".into(), g.final_softcap.into());
    if c.arch == Arch::Gemma3 {
        let full = o.remove("rope_parameters").unwrap_or(json!({"rope_type": "default"}));
        let local = match &g.local_rope {
            RopeKind::Linear(f) => json!({"rope_type": "linear", "factor": f, "rope_theta": g.local_rope_theta}),
            _ => json!({"rope_type": "default", "rope_theta": g.local_rope_theta}),
        };
        o.remove("rope_theta");
        o.insert("rope_parameters".into(), json!({"full_attention": full, "sliding_attention": local}));
    }
}

/// The sliding layers' RoPE inverse frequencies (`None` when no layer slides or the model is
/// not Gemma 3, whose sliding layers have their own base).
pub fn local_inv_freq(c: &ModelConfig) -> Result<Option<Tensor>> {
    let Some(g) = c.gemma.as_ref().filter(|g| c.arch == Arch::Gemma3 && g.sliding.iter().any(|&s| s)) else {
        return Ok(None);
    };
    let mut local = c.clone();
    local.rope_theta = g.local_rope_theta;
    local.rope = g.local_rope.clone();
    Ok(Some(local.inv_freq()?))
}

/// The embedding normalizer √hidden, rounded to the embedding's dtype as transformers rounds it
/// (`embed_scale.to(weight.dtype)`: 55.4256 becomes 55.5 in bf16); f32 for quantized weights,
/// as llama.cpp scales.
pub fn embed_scale(c: &ModelConfig, embed: DType) -> Option<f64> {
    if !c.is_gemma() {
        return None;
    }
    let s = (c.hidden_size as f64).sqrt() as f32;
    Some(match embed {
        DType::BF16 => half::bf16::from_f32(s).to_f64(),
        DType::F16 => half::f16::from_f32(s).to_f64(),
        _ => s as f64,
    })
}

/// Whether `name` is a weight that transformers applies as `1 + w` (every Gemma RMSNorm).
pub fn is_offset_norm(c: &ModelConfig, name: &str) -> bool {
    c.is_gemma() && name.ends_with("norm.weight")
}

fn shift(t: &Tensor, by: f32) -> Result<Tensor> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.to_vec_f32()?.into_iter().map(|x| x + by).collect();
    Ok(Tensor::from_vec(v, t.dims().to_vec())?)
}

/// A tensor kiln holds, as transformers stores it: Gemma norms lose the 1 folded in on load.
pub fn to_hf_layout(c: &ModelConfig, name: &str, t: Tensor) -> Result<Tensor> {
    if is_offset_norm(c, name) { shift(&t.to_cpu()?, -1.0) } else { Ok(t) }
}

/// The name a text-model tensor has in `store`: `model.*` as given, or under a vision-language
/// checkpoint's language model (`language_model.model.*` as released, `model.language_model.*`
/// as transformers 5 saves it).
pub fn stored_name(store: &WeightStore, name: &str) -> String {
    if store.contains(name) {
        return name.to_string();
    }
    let candidates = match name.strip_prefix("model.") {
        Some(rest) => vec![format!("model.language_model.{rest}"), format!("language_model.model.{rest}")],
        None => vec![format!("language_model.{name}")],
    };
    candidates.into_iter().find(|n| store.contains(n)).unwrap_or_else(|| name.to_string())
}

/// A Gemma safetensors folder as a weight source: names of a vision-language checkpoint's
/// language model mapped to the text model's, and 1 added to every norm weight.
pub struct HfSource<'a> {
    pub store: &'a WeightStore,
}

impl WeightSource for HfSource<'_> {
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.store.get_shaped(&stored_name(self.store, name), shape)?;
        if name.ends_with("norm.weight") { shift(&t, 1.0) } else { Ok(t) }
    }
}

/// The llama.cpp name of a Gemma tensor where it differs from the Llama mapping: Gemma's
/// `post_attention_layernorm` follows attention (llama.cpp's `post_attention_norm`), the MLP's
/// input norm is `pre_feedforward_layernorm` (`ffn_norm`).
pub fn gguf_name_for(arch: Arch, hf: &str) -> Option<String> {
    if matches!(arch, Arch::Gemma2 | Arch::Gemma3)
        && let Some(rest) = hf.strip_prefix("model.layers.")
        && let Some((layer, module)) = rest.split_once('.')
    {
        let m = match module {
            "post_attention_layernorm.weight" => Some("post_attention_norm.weight"),
            "pre_feedforward_layernorm.weight" => Some("ffn_norm.weight"),
            "post_feedforward_layernorm.weight" => Some("post_ffw_norm.weight"),
            _ => None,
        };
        if let Some(m) = m {
            return Some(format!("blk.{layer}.{m}"));
        }
    }
    super::gguf::gguf_name(hf)
}

/// The Gemma fields of a GGUF file's config object (`v`, built from the Llama keys), as
/// llama.cpp reads them: the sliding window and its layer pattern (an array of flags or every
/// n-th layer global: 6 for Gemma 3, 2 for Gemma 2), the sliding layers' RoPE base (Gemma 3:
/// `rope.freq_base_swa`, else 10 000), the soft-caps, and the attention scale (llama.cpp's
/// `1/√head_dim`, `1/√(hidden/heads)` for the 27B models).
pub fn gguf_fields(g: &GgufFile, arch: &str, v: &mut Value) -> Result<()> {
    let a = match arch {
        "gemma2" => Arch::Gemma2,
        "gemma3" => Arch::Gemma3,
        _ => return Ok(()),
    };
    let key = |k: &str| format!("{arch}.{k}");
    let bad = |k: &str, detail: String| KilnError::Config { path: g.path.clone(), field: key(k), detail };
    let num = |k: &str| -> Result<Option<f64>> {
        match g.get(&key(k)) {
            None => Ok(None),
            Some(x) => {
                x.as_f64().filter(|f| f.is_finite()).map(Some).ok_or_else(|| bad(k, format!("{x:?} is not a number")))
            }
        }
    };
    v["model_type"] = if a == Arch::Gemma2 { "gemma2" } else { "gemma3_text" }.into();
    let layers = v["num_hidden_layers"].as_f64().unwrap_or(0.0) as usize;
    let window = num("attention.sliding_window")?.filter(|&w| w > 0.0);
    v["sliding_window"] = match (a, window) {
        (_, Some(w)) => w.into(),
        (Arch::Gemma2, None) => 4096.into(),
        _ => Value::Null,
    };
    let flags: Option<Vec<bool>> = match g.get(&key("attention.sliding_window_pattern")) {
        None => None,
        Some(MetaValue::Array(MetaArray::Bool(b))) => Some(b.clone()),
        Some(MetaValue::Array(arr)) => Some(
            arr.to_f64s()
                .ok_or_else(|| bad("attention.sliding_window_pattern", "not an array of flags".into()))?
                .into_iter()
                .map(|x| x != 0.0)
                .collect(),
        ),
        Some(x) => {
            let n =
                x.as_u64().ok_or_else(|| bad("attention.sliding_window_pattern", format!("{x:?} is not a count")))?
                    as usize;
            // llama.cpp: every n-th layer dense; 0 = all sliding.
            Some((0..layers).map(|i| n == 0 || i % n < n - 1).collect())
        }
    };
    let pattern = if a == Arch::Gemma2 { 2 } else { 6 };
    let flags = flags.unwrap_or_else(|| (0..layers).map(|i| i % pattern < pattern - 1).collect());
    if flags.len() != layers {
        return Err(bad(
            "attention.sliding_window_pattern",
            format!("has {} entries for {layers} blocks", flags.len()),
        ));
    }
    v["layer_types"] =
        json!(flags.iter().map(|&s| if s { "sliding_attention" } else { "full_attention" }).collect::<Vec<_>>());
    let heads = v["num_attention_heads"].as_f64().unwrap_or(1.0);
    let hidden = v["hidden_size"].as_f64().unwrap_or(0.0);
    let head_dim = v["head_dim"].as_f64().unwrap_or(hidden / heads);
    let big = (a == Arch::Gemma3 && layers == 62) || (a == Arch::Gemma2 && layers == 46);
    v["query_pre_attn_scalar"] = if big { (hidden / heads).floor() } else { head_dim }.into();
    let global = v["rope_theta"].as_f64().unwrap_or(10000.0);
    let local = num("rope.freq_base_swa")?.unwrap_or(if a == Arch::Gemma3 { 10000.0 } else { global });
    if a == Arch::Gemma3 {
        v["rope_local_base_freq"] = local.into();
    } else if local != global {
        return Err(bad(
            "rope.freq_base_swa",
            format!("{local} differs from rope.freq_base {global} (Gemma 2 has one)"),
        ));
    }
    for (k, name) in
        [("attn_logit_softcapping", "attn_logit_softcapping"), ("final_logit_softcapping", "final_logit_softcapping")]
    {
        v[name] = match num(k)? {
            Some(c) if c > 0.0 => c.into(),
            _ => Value::Null,
        };
    }
    Ok(())
}

/// The Gemma metadata of a GGUF export (the inverse of [`gguf_fields`]).
pub fn gguf_meta(c: &ModelConfig, arch: &str) -> Vec<(String, MetaValue)> {
    let Some(g) = &c.gemma else { return vec![] };
    let k = |x: &str| format!("{arch}.{x}");
    let mut m = vec![
        (k("attention.key_length"), MetaValue::U32(c.head_dim as u32)),
        (k("attention.value_length"), MetaValue::U32(c.head_dim as u32)),
        (k("attention.sliding_window_pattern"), MetaValue::Array(MetaArray::Bool(g.sliding.clone()))),
    ];
    if let Some(w) = g.sliding_window {
        m.push((k("attention.sliding_window"), MetaValue::U32(w as u32)));
    }
    if c.arch == Arch::Gemma3 {
        m.push((k("rope.freq_base_swa"), MetaValue::F32(g.local_rope_theta as f32)));
    }
    if let Some(s) = g.attn_softcap {
        m.push((k("attn_logit_softcapping"), MetaValue::F32(s as f32)));
    }
    if let Some(s) = g.final_softcap {
        m.push((k("final_logit_softcapping"), MetaValue::F32(s as f32)));
    }
    m
}

/// A note, once per process, that a vision-language checkpoint's vision tower is not loaded.
pub fn note_multimodal(c: &ModelConfig, path: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if c.gemma.as_ref().is_some_and(|g| g.multimodal) {
        ONCE.call_once(|| {
            eprintln!(
                "note: {} is a Gemma 3 vision-language model; kiln loads its language model (the vision tower is skipped)",
                path.display()
            )
        });
    }
}
