//! Phi-3, Phi-3.5 and Phi-4-mini (`Phi3ForCausalLM`): what they add to the Llama decoder.
//!
//! - Fused projections: `self_attn.qkv_proj` `[(Hq + 2·Hkv)·D, hidden]` (q rows, then k, then
//!   v) and `mlp.gate_up_proj` `[2·I, hidden]` (gate rows, then up: transformers'
//!   `chunk(2, dim=-1)`). They are split at load into the decoder's q/k/v and gate/up linears as
//!   row views ([`Phi3Source`]), so training, kernels and inference see a Llama block; weights
//!   that leave kiln are fused again ([`fuse_named`]).
//! - LongRoPE (`rope_type` `longrope`, older `su`): per-frequency divisors `short_factor` and
//!   `long_factor`; transformers uses the long ones when the largest position of a batch plus one
//!   exceeds `original_max_position_embeddings`, and multiplies cos/sin by an attention factor
//!   (kiln's RoPE op scales the rotated dims by it: [`ModelConfig::rope_mscale`]).
//! - `partial_rotary_factor` (Phi-4-mini: 0.75): only the first `rotary_dim` dims of each head
//!   are rotated; the rest, which the attention factor does not touch, pass through.

use std::path::Path;

use kiln_core::Tensor;
use kiln_core::quant::GgmlType;
use serde_json::Value;

use super::config::ModelConfig;
use super::gguf::WeightSource;
use crate::formats::gguf::{GgufFile, MetaValue};
use crate::{KilnError, Result};

/// LongRoPE settings, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct LongRope {
    /// Divisors of the base frequencies up to `original_max_position_embeddings` positions.
    pub short_factor: Vec<f32>,
    /// Divisors beyond it.
    pub long_factor: Vec<f32>,
    pub original_max_position_embeddings: usize,
    /// The factor transformers multiplies cos and sin by.
    pub attention_factor: f64,
}

fn cfg_err(path: &Path, field: &str, detail: impl Into<String>) -> KilnError {
    KilnError::Config { path: path.to_path_buf(), field: field.into(), detail: detail.into() }
}

/// The rotated dims of each head: `int(head_dim · partial_rotary_factor)` as transformers
/// computes it (`rope_parameters.partial_rotary_factor`, else the top-level one, else 1).
pub fn rotary_dim(v: &Value, path: &Path, head_dim: usize) -> Result<usize> {
    let params = v.get("rope_parameters").or_else(|| v.get("rope_scaling")).filter(|p| !p.is_null());
    let (x, field) = match params.and_then(|p| p.get("partial_rotary_factor")).filter(|x| !x.is_null()) {
        Some(x) => (x, "rope_parameters.partial_rotary_factor"),
        None => match v.get("partial_rotary_factor").filter(|x| !x.is_null()) {
            Some(x) => (x, "partial_rotary_factor"),
            None => return Ok(head_dim),
        },
    };
    let f = x
        .as_f64()
        .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1.0)
        .ok_or_else(|| cfg_err(path, field, format!("must be a number in (0, 1], got {x}")))?;
    let r = (head_dim as f64 * f) as usize;
    if r == 0 || !r.is_multiple_of(2) {
        return Err(cfg_err(
            path,
            field,
            format!("{f} of head_dim {head_dim} gives {r} rotary dims, which must be a positive even number"),
        ));
    }
    Ok(r)
}

/// LongRoPE from the scaling object `p` of config `v`, as transformers'
/// `_compute_longrope_parameters` reads it for Phi-3: `original_max_position_embeddings` from
/// the top level when present (Phi3Config gives it priority, default 4096), else from `p`;
/// `factor` from `p`, else `max_position_embeddings / original`; `attention_factor` from `p`,
/// else `√(1 + ln(factor) / ln(original))` (1 when `factor ≤ 1`). Both factor lists must have
/// `rotary_dim / 2` positive entries.
pub fn longrope(v: &Value, p: &Value, path: &Path, rotary_dim: usize, phi3: bool) -> Result<LongRope> {
    let get = |o: &Value, k: &str| o.get(k).filter(|x| !x.is_null()).cloned();
    let positive = |x: &Value, field: &str| -> Result<f64> {
        x.as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| cfg_err(path, field, format!("must be a positive number, got {x}")))
    };
    let original = match (get(v, "original_max_position_embeddings"), get(p, "original_max_position_embeddings")) {
        (Some(x), _) => positive(&x, "original_max_position_embeddings")?,
        (None, Some(x)) => positive(&x, "rope_parameters.original_max_position_embeddings")?,
        (None, None) if phi3 => 4096.0,
        (None, None) => match get(v, "max_position_embeddings") {
            Some(x) => positive(&x, "max_position_embeddings")?,
            None => 2048.0,
        },
    };
    if original.fract() != 0.0 {
        return Err(cfg_err(
            path,
            "original_max_position_embeddings",
            format!("must be a whole number, got {original}"),
        ));
    }
    let max_pos = match get(v, "max_position_embeddings") {
        Some(x) => positive(&x, "max_position_embeddings")?,
        None => original,
    };
    let factor = match get(p, "factor") {
        Some(x) => positive(&x, "rope_parameters.factor")?,
        None => max_pos / original,
    };
    let attention_factor = match get(p, "attention_factor") {
        Some(x) => positive(&x, "rope_parameters.attention_factor")?,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / original.ln()).sqrt(),
    };
    let list = |k: &str| -> Result<Vec<f32>> {
        let field = format!("rope_parameters.{k}");
        let a =
            get(p, k).ok_or_else(|| cfg_err(path, &field, "missing (longrope needs short_factor and long_factor)"))?;
        let a = a.as_array().ok_or_else(|| cfg_err(path, &field, "must be a list of numbers"))?;
        if a.len() != rotary_dim / 2 {
            return Err(cfg_err(
                path,
                &field,
                format!("has {} entries, expected {} (rotary dims {rotary_dim} / 2)", a.len(), rotary_dim / 2),
            ));
        }
        a.iter()
            .enumerate()
            .map(|(i, x)| {
                x.as_f64().filter(|f| f.is_finite() && *f > 0.0).map(|f| f as f32).ok_or_else(|| {
                    cfg_err(path, &field, format!("entry {i} is {x}: each factor must be a positive number"))
                })
            })
            .collect()
    };
    Ok(LongRope {
        short_factor: list("short_factor")?,
        long_factor: list("long_factor")?,
        original_max_position_embeddings: original as usize,
        attention_factor,
    })
}

impl LongRope {
    /// Inverse frequencies `[rotary_dim / 2]`: `1 / (factor_i · θ^(2i/r))` in f32 as
    /// transformers computes them, with the long factors or the short ones.
    pub fn inv_freq(&self, rotary_dim: usize, theta: f64, long: bool) -> Result<Tensor> {
        let ext = if long { &self.long_factor } else { &self.short_factor };
        let f: Vec<f32> = ext
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let shape = (2 * i) as f32 / rotary_dim as f32;
                let pow = theta.powf(shape as f64) as f32;
                1.0 / (e * pow)
            })
            .collect();
        Ok(Tensor::from_vec(f, [rotary_dim / 2])?)
    }

    /// The scaling object as transformers writes it in `config.json`.
    pub fn to_json(&self, theta: f64, rotary_dim: usize, head_dim: usize) -> Value {
        serde_json::json!({"rope_type": "longrope", "rope_theta": theta, "short_factor": self.short_factor,
            "long_factor": self.long_factor, "attention_factor": self.attention_factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
            "partial_rotary_factor": rotary_dim as f64 / head_dim as f64})
    }
}

/// The long-context inverse frequencies of a LongRoPE model and the position count above which
/// they apply (`None` for every other model).
pub fn long_inv_freq(c: &ModelConfig) -> Result<Option<(Tensor, usize)>> {
    match &c.rope {
        super::RopeKind::LongRope(l) => {
            Ok(Some((l.inv_freq(c.rotary_dim, c.rope_theta, true)?, l.original_max_position_embeddings)))
        }
        _ => Ok(None),
    }
}

/// Whether a batch with positions `pos` uses the long factors: its largest position plus one
/// exceeds the original context (transformers' `longrope_frequency_update`).
pub fn uses_long(pos: &Tensor, original: usize) -> Result<bool> {
    let cpu = pos.to_cpu()?;
    let max = cpu.as_slice::<i32>()?.iter().copied().max().unwrap_or(0);
    Ok(max as i64 + 1 > original as i64)
}

/// Phi-3's fused weight holding `name` (a split q/k/v or gate/up weight), with the row range of
/// the split part and the fused row count: `(fused name, start, rows, fused rows)`.
pub fn fused_part(c: &ModelConfig, name: &str) -> Option<(String, usize, usize, usize)> {
    let (prefix, part) =
        name.rsplit_once(".weight").filter(|(_, rest)| rest.is_empty()).map(|(p, _)| p)?.rsplit_once('.')?;
    let (q, kv, i) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size);
    let (module, start, rows, total) = match part {
        "q_proj" => ("qkv_proj", 0, q, q + 2 * kv),
        "k_proj" => ("qkv_proj", q, kv, q + 2 * kv),
        "v_proj" => ("qkv_proj", q + kv, kv, q + 2 * kv),
        "gate_proj" => ("gate_up_proj", 0, i, 2 * i),
        "up_proj" => ("gate_up_proj", i, i, 2 * i),
        _ => return None,
    };
    Some((format!("{prefix}.{module}.weight"), start, rows, total))
}

/// A Phi-3 weight source under Llama names: q/k/v and gate/up are row views of the fused
/// tensors (checked whole, so a fused weight of the wrong row count is named in the error).
pub struct Phi3Source<'a> {
    pub inner: &'a dyn WeightSource,
    pub config: ModelConfig,
}

impl WeightSource for Phi3Source<'_> {
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match fused_part(&self.config, name) {
            None => self.inner.get_shaped(name, shape),
            Some((fused, start, rows, total)) => {
                let cols = shape.get(1).copied().unwrap_or(0);
                let t = self.inner.get_shaped(&fused, &[total, cols])?;
                Ok(t.narrow0(start, rows)?)
            }
        }
    }
}

/// Named weights (Llama names) with q/k/v and gate/up joined back into Phi-3's fused tensors,
/// in place of the first part of each; every other tensor unchanged.
pub fn fuse_named(c: &ModelConfig, named: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    let mut out: Vec<(String, Tensor)> = Vec::with_capacity(named.len());
    let mut parts: std::collections::HashMap<String, Vec<(usize, Tensor)>> = Default::default();
    for (n, t) in named {
        match fused_part(c, &n) {
            None => out.push((n, t)),
            Some((fused, start, _, _)) => {
                let e = parts.entry(fused.clone()).or_default();
                if e.is_empty() {
                    // Placeholder at the first part's place; filled below.
                    out.push((fused, Tensor::zeros([0], kiln_core::DType::F32)));
                }
                e.push((start, t));
            }
        }
    }
    for (n, t) in out.iter_mut() {
        if let Some(mut p) = parts.remove(n.as_str()) {
            p.sort_by_key(|(s, _)| *s);
            *t = cat_rows(&p.into_iter().map(|(_, t)| t).collect::<Vec<_>>())?;
        }
    }
    Ok(out)
}

/// Row-wise concatenation of 2-D tensors of the same width and type (f32, f16 or bf16).
pub fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
    let cols = parts.first().and_then(|t| t.dims().get(1).copied()).unwrap_or(0);
    let rows: usize = parts.iter().map(|t| t.dims()[0]).sum();
    let dtype = parts.first().map(|t| t.dtype()).unwrap_or(kiln_core::DType::F32);
    let mut data = Vec::with_capacity(rows * cols);
    for t in parts {
        if t.dims().len() != 2 || t.dims()[1] != cols {
            return Err(KilnError::Msg(format!("joining fused rows: {:?} next to width {cols}", t.dims())));
        }
        data.extend(t.to_vec_f32()?);
    }
    let t = Tensor::from_vec(data, [rows, cols])?;
    Ok(if dtype == kiln_core::DType::F32 { t } else { t.to_dtype(dtype)? })
}

/// A Phi-3 GGUF's settings as `config.json` fields, added to `v` (llama.cpp's converter
/// writes `phi3.rope.dimension_count` = the rotary dims, and for LongRoPE the
/// `rope_factors_short`/`rope_factors_long` tensors, `phi3.rope.scaling.attn_factor` and
/// `phi3.rope.scaling.original_context_length`).
pub fn gguf_config(g: &GgufFile, v: &mut Value, head_dim: usize) -> Result<()> {
    let bad = |k: &str, detail: String| KilnError::Config { path: g.path.clone(), field: format!("phi3.{k}"), detail };
    let num = |k: &str| -> Result<Option<f64>> {
        match g.get(&format!("phi3.{k}")) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Some)
                .ok_or_else(|| bad(k, format!("{x:?} is not a positive number"))),
        }
    };
    if let Some(r) = num("rope.dimension_count")? {
        if r > head_dim as f64 || r.fract() != 0.0 {
            return Err(bad("rope.dimension_count", format!("{r} rotary dims for heads of {head_dim}")));
        }
        v["partial_rotary_factor"] = (r / head_dim as f64).into();
    }
    let (short, long) = (factors(g, "rope_factors_short.weight")?, factors(g, "rope_factors_long.weight")?);
    match (short, long) {
        (None, None) => {}
        (Some(s), Some(l)) => {
            let original = num("rope.scaling.original_context_length")?.ok_or_else(|| {
                bad("rope.scaling.original_context_length", "missing (the file has rope factors)".into())
            })?;
            let mut r = serde_json::json!({"rope_type": "longrope", "short_factor": s, "long_factor": l});
            if let Some(a) = num("rope.scaling.attn_factor")? {
                r["attention_factor"] = a.into();
            }
            v["rope_scaling"] = r;
            v["original_max_position_embeddings"] = (original as u64).into();
        }
        _ => {
            return Err(KilnError::MissingTensor {
                path: g.path.clone(),
                tensor: "rope_factors_short.weight and rope_factors_long.weight (the file has one of them)".into(),
            });
        }
    }
    Ok(())
}

/// A 1-D f32/f16 tensor of a GGUF file, if present.
fn factors(g: &GgufFile, name: &str) -> Result<Option<Vec<f32>>> {
    let Some(t) = g.tensor(name) else { return Ok(None) };
    let bad = |detail: String| KilnError::Tensor { path: g.path.clone(), tensor: name.into(), detail };
    if t.dims.len() != 1 {
        return Err(bad(format!("shape {:?}, expected one dimension", t.dims)));
    }
    let bytes = g.bytes(t);
    let v: Vec<f32> = match t.ty {
        GgmlType::F32 => bytemuck::pod_collect_to_vec::<u8, f32>(bytes),
        GgmlType::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes).iter().map(|x| x.to_f32()).collect(),
        other => return Err(bad(format!("type {other:?}, expected F32 or F16"))),
    };
    if v.len() as u64 != t.dims[0] {
        return Err(bad(format!("{} numbers for {} entries", v.len(), t.dims[0])));
    }
    Ok(Some(v))
}

/// GGUF metadata of a Phi-3 model as llama.cpp's converter writes it, beyond the common keys.
pub fn gguf_meta(c: &ModelConfig) -> Vec<(String, MetaValue)> {
    let mut m = vec![("phi3.rope.dimension_count".to_string(), MetaValue::U32(c.rotary_dim as u32))];
    if let super::RopeKind::LongRope(l) = &c.rope {
        m.push(("phi3.rope.scaling.attn_factor".into(), MetaValue::F32(l.attention_factor as f32)));
        m.push((
            "phi3.rope.scaling.original_context_length".into(),
            MetaValue::U32(l.original_max_position_embeddings as u32),
        ));
    }
    m
}

/// LongRoPE's factor tensors for a GGUF export: `(name, values)`.
pub fn gguf_rope_tensors(c: &ModelConfig) -> Vec<(String, Vec<f32>)> {
    match &c.rope {
        super::RopeKind::LongRope(l) => vec![
            ("rope_factors_long.weight".into(), l.long_factor.clone()),
            ("rope_factors_short.weight".into(), l.short_factor.clone()),
        ],
        _ => vec![],
    }
}
