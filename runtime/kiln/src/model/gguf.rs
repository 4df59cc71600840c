//! Llama-family models from GGUF: the config from `llama.*` metadata, weights by their
//! llama.cpp names, and attention q/k rows un-permuted back to the HF layout.
//!
//! llama.cpp's converter reorders the rows of each q/k head from HF's "rotate half" layout
//! (first half of the head dims, then second) to interleaved pairs:
//! `gguf[h·D + 2i + j] = hf[h·D + j·D/2 + i]`. kiln keeps HF's layout everywhere (so adapters
//! match PEFT's), so those rows are put back on load — rows are whole blocks, so this is a
//! byte copy of the q/k weights and nothing is dequantized.
//!
//! RoPE scaling comes from `{arch}.rope.scaling.*` (none, linear, yarn) or from the
//! `rope_freqs.weight` table of per-frequency divisors (llama3 scaling, Llama 3.1+), read as
//! llama.cpp reads them.

use std::path::Path;

use kiln_core::ops::yarn_mscale;
use kiln_core::{DType, Tensor};
use serde_json::json;

use super::ModelConfig;
use crate::formats::gguf::{GgufFile, GgufTensor, MetaValue};
use crate::{KilnError, Result};

/// Where a model's weights come from.
pub trait WeightSource {
    /// The tensor named as transformers names it, which must have `shape`.
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

impl WeightSource for crate::formats::WeightStore {
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        crate::formats::WeightStore::get_shaped(self, name, shape)
    }
}

/// The config of a GGUF model, through the same validation as `config.json`, with its counts
/// checked against the tensors the file holds: `block_count` against the `blk.N` tensors, the
/// vocabulary against the token list and the embedding.
pub fn config_from_gguf(g: &GgufFile) -> Result<ModelConfig> {
    let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let bad = |k: &str, detail: String| KilnError::Config { path: g.path.clone(), field: key(k), detail };
    let num = |k: &str| -> Result<Option<f64>> {
        match g.get(&key(k)) {
            None => Ok(None),
            Some(v) => {
                v.as_f64().filter(|x| x.is_finite()).map(Some).ok_or_else(|| bad(k, format!("{v:?} is not a number")))
            }
        }
    };
    let need = |k: &str| num(k)?.ok_or_else(|| bad(k, "missing".into()));
    let n_tokens = g.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array).map(|a| a.len() as u64);
    let embd_rows = g.tensor("token_embd.weight").and_then(|t| t.dims.get(1).copied());
    let vocab = match g.get(&key("vocab_size")) {
        Some(v) => v.as_u64().ok_or_else(|| bad("vocab_size", format!("{v:?} is not a count")))?,
        None => n_tokens.or(embd_rows).unwrap_or(0),
    };
    // The token list names every embedding row: a different length means ids without text or
    // text without an embedding (kiln's own exports of a grown vocabulary write both).
    if let (Some(n), Some(rows)) = (n_tokens, embd_rows)
        && n != rows
    {
        return Err(KilnError::Config {
            path: g.path.clone(),
            field: "tokenizer.ggml.tokens".into(),
            detail: format!("{n} tokens, but token_embd.weight has {rows} rows (one per token)"),
        });
    }
    let blocks = need("block_count")?;
    let present = block_tensors(g)?;
    if blocks != present as f64 {
        return Err(bad(
            "block_count",
            format!(
                "is {blocks}, but the file holds tensors for {present} blocks (blk.0 to blk.{})",
                present.max(1) - 1
            ),
        ));
    }
    let heads = need("attention.head_count")?;
    let hidden = need("embedding_length")?;
    // llama.cpp's head size is attention.key_length (default: embedding / heads); RoPE turns
    // rope.dimension_count of it. kiln rotates whole heads, so the two must agree.
    let key_len = num("attention.key_length")?;
    let rope_dims = num("rope.dimension_count")?;
    if let (Some(k), Some(r)) = (key_len, rope_dims)
        && k != r
        && arch != "phi3"
    {
        return Err(bad(
            "rope.dimension_count",
            format!("{r} differs from attention.key_length {k} (partial rotary embeddings are not supported)"),
        ));
    }
    if let (Some(k), Some(v)) = (key_len, num("attention.value_length")?)
        && k != v
    {
        return Err(bad("attention.value_length", format!("{v} differs from attention.key_length {k}")));
    }
    let mut v = json!({
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": need("feed_forward_length")?,
        "num_hidden_layers": blocks,
        "num_attention_heads": heads,
        "num_key_value_heads": num("attention.head_count_kv")?.unwrap_or(heads),
        "rms_norm_eps": need("attention.layer_norm_rms_epsilon")?,
        "rope_theta": num("rope.freq_base")?.unwrap_or(10000.0),
        "max_position_embeddings": num("context_length")?.unwrap_or(2048.0),
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
    });
    if arch == "phi3" {
        // Phi-3's rope.dimension_count is the rotated part of a head (partial rotary).
        let d = key_len.unwrap_or((hidden / heads).floor());
        v["head_dim"] = d.into();
        super::phi3::gguf_config(g, &mut v, d as usize)?;
    } else {
        if let Some(d) = key_len.or(rope_dims) {
            v["head_dim"] = d.into();
        }
        if let Some(r) = rope_scaling(g, &arch)? {
            v["rope_scaling"] = r;
        }
    }
    super::gemma::gguf_fields(g, &arch, &mut v)?;
    // Whole numbers go to the JSON as integers so config.json's checks apply to them alike.
    if let Some(o) = v.as_object_mut() {
        for x in o.values_mut() {
            if let Some(f) = x.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 1.8e19) {
                *x = (f as u64).into();
            }
        }
    }
    let mut cfg = ModelConfig::from_json(&v, &g.path)?;
    // The object above is kiln's own reading of the file's metadata, not a user's config.
    cfg.source_extra.clear();
    if let Some(t) = rope_freqs(g, cfg.head_dim)? {
        if cfg.rope != super::RopeKind::Default {
            return Err(bad(
                "rope.scaling.type",
                "is set, and the file also holds rope_freqs.weight: kiln applies one or the other".into(),
            ));
        }
        cfg.rope = super::RopeKind::Factors(t);
    }
    Ok(cfg)
}

/// `{arch}.rope.scaling.*` as a transformers `rope_scaling` object (`None`: no scaling), with
/// each value checked here so that errors name the GGUF key. Keys as llama.cpp reads them:
/// the factor from `rope.scaling.factor` (older files: `rope.scale_linear`); YaRN's original
/// context from `rope.scaling.original_context_length` (default `context_length`), its betas
/// from `rope.scaling.yarn_beta_fast`/`_slow`, its cos/sin factor from
/// `rope.scaling.yarn_attn_factor` (transformers' `attention_factor`, as the converter writes it)
/// or `rope.scaling.yarn_log_multiplier` (`mscale_all_dim`), times `rope.scaling.attn_factor`.
fn rope_scaling(g: &GgufFile, arch: &str) -> Result<Option<serde_json::Value>> {
    let key = |k: &str| format!("{arch}.rope.{k}");
    let bad = |k: &str, detail: String| KilnError::Config { path: g.path.clone(), field: key(k), detail };
    let num = |k: &str| -> Result<Option<f64>> {
        match g.get(&key(k)) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| bad(k, format!("{v:?} is not a number"))),
        }
    };
    let positive = |k: &str| -> Result<Option<f64>> {
        match num(k)? {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(bad(k, format!("must be a positive number, got {x}"))),
            x => Ok(x),
        }
    };
    let kind = match g.get(&key("scaling.type")) {
        None => "none",
        Some(v) => v.as_str().ok_or_else(|| bad("scaling.type", format!("{v:?} is not a string")))?,
    };
    let attn = positive("scaling.attn_factor")?;
    if kind != "yarn" && attn.is_some_and(|a| a != 1.0) {
        return Err(bad("scaling.attn_factor", format!("{attn:?} with scaling type `{kind}` is not supported")));
    }
    let factor = || -> Result<f64> {
        match positive("scaling.factor")? {
            Some(f) => Ok(f),
            None => positive("scale_linear")?.ok_or_else(|| bad("scaling.factor", "missing".into())),
        }
    };
    Ok(match kind {
        "none" => None,
        "linear" => Some(json!({"rope_type": "linear", "factor": factor()?})),
        "yarn" => {
            let factor = factor()?;
            if let Some(x) = num("scaling.yarn_ext_factor")?.filter(|&x| x != 1.0) {
                return Err(bad("scaling.yarn_ext_factor", format!("{x} is not supported (1)")));
            }
            let ctx = g.get(&format!("{arch}.context_length")).and_then(|v| v.as_f64());
            let original = positive("scaling.original_context_length")?
                .or(ctx)
                .ok_or_else(|| bad("scaling.original_context_length", "missing (and no context_length)".into()))?;
            let mut r = json!({"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original});
            for (k, name) in [("scaling.yarn_beta_fast", "beta_fast"), ("scaling.yarn_beta_slow", "beta_slow")] {
                if let Some(x) = positive(k)? {
                    r[name] = x.into();
                }
            }
            let attention = match (positive("scaling.yarn_attn_factor")?, positive("scaling.yarn_log_multiplier")?) {
                (Some(a), _) => a,
                (None, Some(m)) => yarn_mscale(factor, 1.0) / yarn_mscale(factor, m),
                (None, None) => yarn_mscale(factor, 1.0),
            };
            r["attention_factor"] = (attention * attn.unwrap_or(1.0)).into();
            Some(r)
        }
        other => {
            return Err(bad("scaling.type", format!("`{other}` is not supported (none, linear, yarn)")));
        }
    })
}

/// The `rope_freqs.weight` divisors, when the file has them: `head_dim / 2` finite positive
/// numbers (llama.cpp divides each base frequency by its entry).
fn rope_freqs(g: &GgufFile, head_dim: usize) -> Result<Option<Vec<f32>>> {
    const NAME: &str = "rope_freqs.weight";
    let Some(t) = g.tensor(NAME) else { return Ok(None) };
    let bad = |detail: String| KilnError::Tensor { path: g.path.clone(), tensor: NAME.into(), detail };
    let want = (head_dim / 2) as u64;
    if t.dims.len() != 1 || t.dims[0] != want {
        return Err(bad(format!("shape {:?}, expected [{want}] (head_dim {head_dim} / 2)", t.dims)));
    }
    let bytes = g.bytes(t);
    let v: Vec<f32> = match t.ty {
        kiln_core::quant::GgmlType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(bytes),
        kiln_core::quant::GgmlType::F16 => {
            bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes).iter().map(|x| x.to_f32()).collect()
        }
        other => return Err(bad(format!("type {other:?}, expected F32 or F16"))),
    };
    if v.len() as u64 != want {
        return Err(bad(format!("{} bytes for {want} numbers", bytes.len())));
    }
    if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x > 0.0)) {
        return Err(bad(format!("entry {i} is {x}: each divisor must be a positive number")));
    }
    Ok(Some(v))
}

/// RoPE scaling as llama.cpp's converter writes it for `arch` (the inverse of reading):
/// linear and yarn as `{arch}.rope.scaling.*` keys; llama3 and a divisor table go to
/// [`rope_freqs_of`] instead.
pub fn rope_meta(c: &ModelConfig, arch: &str) -> Result<Vec<(String, MetaValue)>> {
    let k = |x: &str| format!("{arch}.rope.scaling.{x}");
    let ty = |t: &str| (k("type"), MetaValue::Str(t.into()));
    Ok(match &c.rope {
        // LongRoPE: `phi3.rope.scaling.*` and factor tensors ([`super::phi3::gguf_meta`]).
        super::RopeKind::Default
        | super::RopeKind::Llama3(_)
        | super::RopeKind::Factors(_)
        | super::RopeKind::LongRope(_) => vec![],
        super::RopeKind::Linear(f) => vec![ty("linear"), (k("factor"), MetaValue::F32(*f as f32))],
        super::RopeKind::Yarn(y) => {
            if !y.truncate {
                return Err(KilnError::Msg(
                    "GGUF export of YaRN with truncate = false: llama.cpp always rounds the ramp's ends".into(),
                ));
            }
            let mut m = vec![
                ty("yarn"),
                (k("factor"), MetaValue::F32(y.factor as f32)),
                (k("original_context_length"), MetaValue::U32(y.original_max_position_embeddings as u32)),
                (k("yarn_beta_fast"), MetaValue::F32(y.beta_fast as f32)),
                (k("yarn_beta_slow"), MetaValue::F32(y.beta_slow as f32)),
            ];
            if y.attention_factor != yarn_mscale(y.factor, 1.0) {
                m.push((k("yarn_attn_factor"), MetaValue::F32(y.attention_factor as f32)));
            }
            m
        }
    })
}

/// The `rope_freqs.weight` divisors for the model's RoPE: its own table, or llama3 scaling as
/// the converter's `generate_extra_tensors` computes it (from the f32 base frequencies, in f64).
pub fn rope_freqs_of(c: &ModelConfig) -> Result<Option<Vec<f32>>> {
    Ok(match &c.rope {
        super::RopeKind::Factors(t) => Some(t.clone()),
        super::RopeKind::Llama3(s) => {
            let base = kiln_core::ops::inv_freq(c.head_dim, c.rope_theta, None)?.to_vec_f32()?;
            let (low_wl, high_wl) = (
                s.original_max_position_embeddings / s.low_freq_factor,
                s.original_max_position_embeddings / s.high_freq_factor,
            );
            let divisor = |f: f32| {
                let wl = 2.0 * std::f64::consts::PI / f as f64;
                if wl < high_wl {
                    1.0
                } else if wl > low_wl {
                    s.factor
                } else {
                    let smooth = (s.original_max_position_embeddings / wl - s.low_freq_factor)
                        / (s.high_freq_factor - s.low_freq_factor);
                    1.0 / ((1.0 - smooth) / s.factor + smooth)
                }
            };
            Some(base.into_iter().map(|f| divisor(f) as f32).collect())
        }
        _ => None,
    })
}

/// How many blocks the file holds tensors for: the `blk.N.` prefixes, which must run from
/// `blk.0` without a gap.
fn block_tensors(g: &GgufFile) -> Result<usize> {
    let mut seen = std::collections::BTreeSet::new();
    for t in &g.tensors {
        let index = t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
        if let Some(i) = index {
            seen.insert(i);
        }
    }
    match seen.iter().next_back() {
        Some(&max) if max + 1 != seen.len() => {
            let gap = (0..max).find(|i| !seen.contains(i)).unwrap_or(0);
            Err(KilnError::MissingTensor {
                path: g.path.clone(),
                tensor: format!("blk.{gap}.* (the file has blk.{max})"),
            })
        }
        _ => Ok(seen.len()),
    }
}

/// Weights of a GGUF file under transformers names.
pub struct GgufWeights {
    pub file: GgufFile,
    heads: usize,
    kv_heads: usize,
    /// llama.cpp's converter interleaves q/k rows for the `llama` architecture only (Qwen2/3
    /// GGUFs keep transformers' layout).
    permuted: bool,
    arch: super::Arch,
}

impl GgufWeights {
    /// Opens the file and its config.
    pub fn open(path: &Path) -> Result<(GgufWeights, ModelConfig)> {
        let file = GgufFile::open(path)?;
        let cfg = config_from_gguf(&file)?;
        let permuted = matches!(cfg.arch, super::Arch::Llama | super::Arch::Mistral);
        let arch = cfg.arch;
        Ok((GgufWeights { file, heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, permuted, arch }, cfg))
    }
}

/// transformers name → llama.cpp name.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let m = match module {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        // Phi-3's fused matrices.
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "mlp.gate_up_proj.weight" => "ffn_up.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{m}"))
}

/// Rows of `bytes` (`rows` rows of `row_bytes`) from llama.cpp's interleaved q/k order back to
/// HF's, for heads of `rows / n_heads` rows.
pub fn unpermute_rows(bytes: &[u8], rows: usize, row_bytes: usize, n_heads: usize) -> Vec<u8> {
    let d = rows / n_heads;
    let half = d / 2;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let (src, dst) = (h * d + 2 * i + j, h * d + j * half + i);
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

fn dtype_of(t: &GgufTensor) -> DType {
    use kiln_core::quant::GgmlType;
    match t.ty {
        GgmlType::F32 => DType::F32,
        GgmlType::F16 => DType::F16,
        GgmlType::BF16 => DType::BF16,
        q => DType::Quant(q),
    }
}

impl WeightSource for GgufWeights {
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let path = self.file.path.clone();
        let gname = super::gemma::gguf_name_for(self.arch, name)
            .ok_or_else(|| KilnError::MissingTensor { path: path.clone(), tensor: name.into() })?;
        let t = self
            .file
            .tensor(&gname)
            .ok_or_else(|| KilnError::MissingTensor { path: path.clone(), tensor: format!("{gname} ({name})") })?;
        if t.shape() != shape {
            return Err(KilnError::Tensor {
                path,
                tensor: gname,
                detail: format!("shape {:?}, expected {:?}", t.shape(), shape),
            });
        }
        let heads = if !self.permuted {
            None
        } else if gname.ends_with("attn_q.weight") {
            Some(self.heads)
        } else if gname.ends_with("attn_k.weight") {
            Some(self.kv_heads)
        } else {
            None
        };
        let dtype = dtype_of(t);
        let bytes = self.file.bytes(t);
        let Some(nh) = heads else {
            return self.file.view(t, dtype);
        };
        let rows = shape[0];
        let data = unpermute_rows(bytes, rows, bytes.len() / rows, nh);
        Ok(match dtype {
            DType::Quant(q) => Tensor::from_quant_bytes(data, q, shape.to_vec())?,
            DType::F32 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, f32>(&data), shape.to_vec())?,
            DType::F16 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::f16>(&data), shape.to_vec())?,
            DType::BF16 => Tensor::from_vec(bytemuck::pod_collect_to_vec::<u8, half::bf16>(&data), shape.to_vec())?,
            other => {
                return Err(KilnError::Tensor { path, tensor: gname, detail: format!("unexpected dtype {other:?}") });
            }
        })
    }
}
