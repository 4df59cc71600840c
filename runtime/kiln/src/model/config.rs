//! `config.json` of the Llama family: llama, mistral, qwen2 (q/k/v bias), qwen3 (per-head q/k
//! RMSNorm). Both spellings of RoPE settings are accepted: top-level `rope_theta` +
//! `rope_scaling` (older transformers) and `rope_parameters` (newer); the RoPE kinds are
//! default, linear, llama3 and yarn, plus a table of per-frequency divisors (GGUF `rope_freqs`).

use std::path::{Path, PathBuf};

use kiln_core::Tensor;
use kiln_core::ops::{self, RopeScaling, Yarn, yarn_mscale};
use serde_json::Value;

use crate::adapters::BaseDims;
use crate::{KilnError, Result};

/// Supported architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    /// Phi-3, Phi-3.5, Phi-4-mini: fused q/k/v and gate/up weights, LongRoPE, partial rotary.
    Phi3,
    Gemma2,
    Gemma3,
}

impl Arch {
    /// `model_type` values accepted.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, gemma3";

    fn parse(s: &str) -> Option<Arch> {
        Some(match s {
            "llama" | "LlamaForCausalLM" => Arch::Llama,
            "mistral" | "MistralForCausalLM" => Arch::Mistral,
            "qwen2" | "Qwen2ForCausalLM" => Arch::Qwen2,
            "qwen3" | "Qwen3ForCausalLM" => Arch::Qwen3,
            "phi3" | "Phi3ForCausalLM" => Arch::Phi3,
            "gemma2" | "Gemma2ForCausalLM" => Arch::Gemma2,
            "gemma3_text" | "Gemma3ForCausalLM" | "gemma3" | "Gemma3ForConditionalGeneration" => Arch::Gemma3,
            _ => return None,
        })
    }
}

/// RoPE frequency adjustments.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeKind {
    Default,
    /// Positions divided by `factor`.
    Linear(f64),
    Llama3(RopeScaling),
    Yarn(Yarn),
    /// Each base frequency divided by its entry (GGUF `rope_freqs.weight`, which llama.cpp's
    /// converter writes for llama3 scaling), `head_dim / 2` positive numbers.
    Factors(Vec<f32>),
    /// Phi-3's short/long per-frequency divisors ([`super::phi3`]).
    LongRope(super::phi3::LongRope),
}

/// A parsed, validated model configuration.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// Keys of the source `config.json` that kiln neither reads nor writes, carried into the
    /// configs it writes (empty for GGUF sources and vision-language configs).
    pub source_extra: serde_json::Map<String, Value>,
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Dims of each head that RoPE turns (the first ones): `head_dim` except with Phi's
    /// `partial_rotary_factor`.
    pub rotary_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope: RopeKind,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    pub max_position_embeddings: usize,
    /// Sliding-window attention span, when the model uses one.
    pub sliding_window: Option<usize>,
    /// Gemma 2/3 settings (`None` for other families).
    pub gemma: Option<super::gemma::GemmaConfig>,
}

/// Upper limits on sizes (far above any released model): with them, every product of sizes
/// the model computes fits in 64 bits.
const MAX_WIDTH: usize = 1 << 22;
const MAX_HEADS: usize = 1 << 12;
const MAX_HEAD_DIM: usize = 1 << 14;
const MAX_LAYERS: usize = 1 << 14;

struct Fields<'a> {
    v: &'a Value,
    path: PathBuf,
}

impl Fields<'_> {
    fn err(&self, field: &str, detail: impl Into<String>) -> KilnError {
        KilnError::Config { path: self.path.clone(), field: field.into(), detail: detail.into() }
    }
    fn get(&self, k: &str) -> Option<&Value> {
        self.v.get(k).filter(|x| !x.is_null())
    }
    fn usize(&self, k: &str) -> Result<usize> {
        let x = self.get(k).ok_or_else(|| self.err(k, "missing"))?;
        x.as_u64()
            .filter(|&n| n > 0)
            .map(|n| n as usize)
            .ok_or_else(|| self.err(k, format!("must be a positive integer, got {x}")))
    }
    /// A positive integer up to `max` (limits far above any real model, so that products of
    /// sizes cannot overflow and a typo cannot plan terabytes).
    fn dim(&self, k: &str, max: usize) -> Result<usize> {
        let n = self.usize(k)?;
        if n > max {
            return Err(self.err(k, format!("{n} is larger than kiln supports (at most {max})")));
        }
        Ok(n)
    }
    fn dim_or(&self, k: &str, d: usize, max: usize) -> Result<usize> {
        if self.get(k).is_some() { self.dim(k, max) } else { Ok(d) }
    }
    fn usize_or(&self, k: &str, d: usize) -> Result<usize> {
        if self.get(k).is_some() { self.usize(k) } else { Ok(d) }
    }
    fn f64_or(&self, k: &str, d: f64) -> Result<f64> {
        match self.get(k) {
            None => Ok(d),
            Some(x) => {
                x.as_f64().filter(|f| f.is_finite()).ok_or_else(|| self.err(k, format!("must be a number, got {x}")))
            }
        }
    }
    fn bool_or(&self, k: &str, d: bool) -> Result<bool> {
        match self.get(k) {
            None => Ok(d),
            Some(x) => x.as_bool().ok_or_else(|| self.err(k, format!("must be true or false, got {x}"))),
        }
    }
}

fn num(obj: &Value, k: &str) -> Option<f64> {
    obj.get(k).and_then(|x| x.as_f64())
}

/// YaRN settings as transformers' `_compute_yarn_parameters` reads them: `factor`,
/// `original_max_position_embeddings` (else the top-level one, else `max_position_embeddings`),
/// `beta_fast`/`beta_slow` (32/1 when absent or 0), `attention_factor` (else from `mscale` and
/// `mscale_all_dim` when both are set, else `0.1·ln(factor) + 1`), `truncate` (default true).
fn yarn(f: &Fields, p: &Value, need: &dyn Fn(&str) -> Result<f64>) -> Result<Yarn> {
    let factor = need("factor")?;
    let positive_or = |k: &str, d: f64| -> Result<f64> {
        match p.get(k).filter(|x| !x.is_null()) {
            None => Ok(d),
            Some(x) => match x.as_f64() {
                Some(0.0) if k.starts_with("beta") => Ok(d),
                Some(v) if v.is_finite() && v > 0.0 => Ok(v),
                _ => Err(f.err(&format!("rope_parameters.{k}"), format!("must be a positive number, got {x}"))),
            },
        }
    };
    let original = match p.get("original_max_position_embeddings") {
        Some(_) => need("original_max_position_embeddings")?,
        None => f.f64_or("original_max_position_embeddings", f.f64_or("max_position_embeddings", 2048.0)?)?,
    };
    if !(original.is_finite() && original > 0.0) {
        return Err(f.err("original_max_position_embeddings", format!("must be a positive number, got {original}")));
    }
    let (mscale, mscale_all_dim) = (positive_or("mscale", 0.0)?, positive_or("mscale_all_dim", 0.0)?);
    let derived = if mscale > 0.0 && mscale_all_dim > 0.0 {
        yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    } else {
        yarn_mscale(factor, 1.0)
    };
    let truncate = match p.get("truncate").filter(|x| !x.is_null()) {
        None => true,
        Some(x) => {
            x.as_bool().ok_or_else(|| f.err("rope_parameters.truncate", format!("must be true or false, got {x}")))?
        }
    };
    Ok(Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast: positive_or("beta_fast", 32.0)?,
        beta_slow: positive_or("beta_slow", 1.0)?,
        attention_factor: positive_or("attention_factor", derived)?,
        truncate,
    })
}

impl ModelConfig {
    /// Reads `config.json` from a model directory (or the file itself).
    pub fn load(path: &Path) -> Result<ModelConfig> {
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = std::fs::read_to_string(&file).map_err(|e| KilnError::io(&file, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| KilnError::Config {
            path: file.clone(),
            field: "(json)".into(),
            detail: e.to_string(),
        })?;
        ModelConfig::from_json(&v, &file)
    }

    /// Parses a config object; `path` is used in error messages.
    pub fn from_json(v: &Value, path: &Path) -> Result<ModelConfig> {
        // Gemma's config is first rewritten into the shape read below (class defaults, the
        // language model of a vision-language config, the global layers' RoPE).
        let prepared = super::gemma::prepare(v, path)?;
        let v = prepared.as_ref().unwrap_or(v);
        let f = Fields { v, path: path.to_path_buf() };
        let name = f
            .get("model_type")
            .and_then(|x| x.as_str())
            .or_else(|| f.get("architectures").and_then(|a| a.get(0)).and_then(|x| x.as_str()))
            .ok_or_else(|| f.err("model_type", "missing"))?;
        let arch = Arch::parse(name).ok_or_else(|| KilnError::UnknownArch {
            path: path.to_path_buf(),
            arch: name.into(),
            supported: Arch::SUPPORTED.into(),
        })?;
        let hidden_size = f.dim("hidden_size", MAX_WIDTH)?;
        let num_heads = f.dim("num_attention_heads", MAX_HEADS)?;
        let num_kv_heads = f.dim_or("num_key_value_heads", num_heads, MAX_HEADS)?;
        if num_heads % num_kv_heads != 0 {
            return Err(f.err(
                "num_key_value_heads",
                format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
            ));
        }
        if f.get("head_dim").is_none() && hidden_size % num_heads != 0 {
            return Err(f.err(
                "num_attention_heads",
                format!("{num_heads} does not divide hidden_size {hidden_size} (and no head_dim is given)"),
            ));
        }
        let head_dim = f.dim_or("head_dim", hidden_size / num_heads, MAX_HEAD_DIM)?;
        if head_dim % 2 != 0 {
            return Err(f.err("head_dim", format!("{head_dim} must be even for RoPE")));
        }
        let rotary_dim = if arch == Arch::Phi3 { super::phi3::rotary_dim(v, path, head_dim)? } else { head_dim };
        // rope_parameters (new) holds theta and the scaling; rope_theta/rope_scaling (old).
        let params = f.get("rope_parameters").or_else(|| f.get("rope_scaling"));
        let (rope_theta, theta_field) = match f.get("rope_parameters").and_then(|p| p.get("rope_theta")) {
            Some(t) => (t.as_f64().unwrap_or(f64::NAN), "rope_parameters.rope_theta"),
            None => (f.f64_or("rope_theta", 10000.0)?, "rope_theta"),
        };
        // theta is the base of the frequencies θ^(-2i/d): ≤ 0 or non-finite gives NaN angles.
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(f.err(theta_field, format!("must be a positive number, got {rope_theta}")));
        }
        let rope = match params {
            None => RopeKind::Default,
            Some(p) => {
                let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(|x| x.as_str()).unwrap_or("default");
                // Scaling factors divide positions or wavelengths: each must be positive.
                let need = |k: &str| {
                    let name = format!("rope_parameters.{k}");
                    let x = num(p, k).ok_or_else(|| f.err(&name, "missing"))?;
                    if x.is_finite() && x > 0.0 {
                        Ok(x)
                    } else {
                        Err(f.err(&name, format!("must be a positive number, got {x}")))
                    }
                };
                match kind {
                    "default" => RopeKind::Default,
                    "linear" => RopeKind::Linear(need("factor")?),
                    "llama3" => {
                        let s = RopeScaling {
                            factor: need("factor")?,
                            low_freq_factor: need("low_freq_factor")?,
                            high_freq_factor: need("high_freq_factor")?,
                            original_max_position_embeddings: need("original_max_position_embeddings")?,
                        };
                        // The smoothing between the two divides by their difference.
                        if s.high_freq_factor <= s.low_freq_factor {
                            return Err(f.err(
                                "rope_parameters.high_freq_factor",
                                format!(
                                    "{} must be larger than low_freq_factor {}",
                                    s.high_freq_factor, s.low_freq_factor
                                ),
                            ));
                        }
                        RopeKind::Llama3(s)
                    }
                    // Phi3Config reads its older `su` and `yarn` spellings as longrope.
                    "longrope" | "su" => {
                        RopeKind::LongRope(super::phi3::longrope(v, p, path, rotary_dim, arch == Arch::Phi3)?)
                    }
                    "yarn" if arch == Arch::Phi3 => {
                        RopeKind::LongRope(super::phi3::longrope(v, p, path, rotary_dim, true)?)
                    }
                    "yarn" => RopeKind::Yarn(yarn(&f, p, &need)?),
                    other => {
                        return Err(f.err(
                            "rope_parameters.rope_type",
                            format!("`{other}` is not supported (default, linear, llama3, yarn, longrope)"),
                        ));
                    }
                }
            }
        };
        let rms_norm_eps = f.f64_or("rms_norm_eps", 1e-6)?;
        if rms_norm_eps < 0.0 {
            return Err(f.err("rms_norm_eps", format!("must be zero or positive, got {rms_norm_eps}")));
        }
        let vocab_size = f.dim("vocab_size", MAX_WIDTH)?;
        // Special token ids, when config.json names them, must be rows of the embedding.
        for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
            let ids: Vec<&Value> = match f.get(k) {
                None => vec![],
                Some(Value::Array(a)) => a.iter().collect(),
                Some(x) => vec![x],
            };
            for x in ids {
                if x.as_u64().is_none_or(|id| id >= vocab_size as u64) {
                    return Err(f.err(k, format!("{x} is not a token id (0 to {})", vocab_size - 1)));
                }
            }
        }
        let attention_bias = f.bool_or("attention_bias", false)?;
        let (qkv_bias, o_bias) = match arch {
            Arch::Qwen2 => (true, false),
            Arch::Mistral | Arch::Phi3 => (false, false),
            Arch::Llama | Arch::Qwen3 | Arch::Gemma2 | Arch::Gemma3 => (attention_bias, attention_bias),
        };
        let uses_window = f.bool_or("use_sliding_window", matches!(arch, Arch::Mistral | Arch::Phi3))?;
        let sliding_window =
            if uses_window { f.get("sliding_window").and_then(|x| x.as_u64()).map(|x| x as usize) } else { None };
        let hidden_act = f.get("hidden_act").and_then(|x| x.as_str()).unwrap_or("silu");
        if hidden_act != "silu" && !matches!(arch, Arch::Gemma2 | Arch::Gemma3) {
            return Err(f.err("hidden_act", format!("`{hidden_act}` is not supported (silu)")));
        }
        let num_layers = f.dim("num_hidden_layers", MAX_LAYERS)?;
        let c = ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            intermediate_size: f.dim("intermediate_size", MAX_WIDTH)?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rotary_dim,
            rms_norm_eps,
            rope_theta,
            rope,
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            qkv_bias,
            o_bias,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            max_position_embeddings: f.usize_or("max_position_embeddings", 2048)?,
            sliding_window,
            gemma: super::gemma::settings(arch, v, path, num_layers, rope_theta)?,
            source_extra: source_extra(v),
        };
        super::gemma::check(&c, path)?;
        Ok(c)
    }

    /// The configuration as a transformers `config.json` object (written with exported models,
    /// e.g. a model that came from a GGUF file).
    pub fn to_hf_json(&self) -> Value {
        let (model_type, class) = match self.arch {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Mistral => ("mistral", "MistralForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
            Arch::Phi3 => ("phi3", "Phi3ForCausalLM"),
            Arch::Gemma2 => ("gemma2", "Gemma2ForCausalLM"),
            Arch::Gemma3 => ("gemma3_text", "Gemma3ForCausalLM"),
        };
        let mut rope = serde_json::json!({"rope_type": "default", "rope_theta": self.rope_theta});
        match self.rope {
            RopeKind::Default => {}
            RopeKind::Linear(f) => {
                rope = serde_json::json!({"rope_type": "linear", "factor": f, "rope_theta": self.rope_theta})
            }
            RopeKind::Llama3(s) => rope = llama3_json(&s, self.rope_theta),
            RopeKind::Yarn(y) => {
                rope = serde_json::json!({"rope_type": "yarn", "factor": y.factor,
                    "original_max_position_embeddings": y.original_max_position_embeddings, "beta_fast": y.beta_fast,
                    "beta_slow": y.beta_slow, "attention_factor": y.attention_factor, "truncate": y.truncate,
                    "rope_theta": self.rope_theta})
            }
            // transformers has no table of divisors: the llama3 settings that give this table.
            RopeKind::Factors(ref t) => {
                if let Some(s) = llama3_from_factors(t, self.head_dim, self.rope_theta) {
                    rope = llama3_json(&s, self.rope_theta)
                }
            }
            RopeKind::LongRope(ref l) => rope = l.to_json(self.rope_theta, self.rotary_dim, self.head_dim),
        }
        let mut v = serde_json::json!({
            "architectures": [class], "model_type": model_type, "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers, "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads, "head_dim": self.head_dim, "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta, "rope_parameters": rope, "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings, "hidden_act": "silu", "mlp_bias": self.mlp_bias,
            "attention_bias": self.qkv_bias && self.arch != Arch::Qwen2, "torch_dtype": "float32",
        });
        if self.arch == Arch::Phi3 {
            v["partial_rotary_factor"] = (self.rotary_dim as f64 / self.head_dim as f64).into();
            if let RopeKind::LongRope(l) = &self.rope {
                // Phi3Config takes the top-level value over the one in rope_parameters.
                v["original_max_position_embeddings"] = l.original_max_position_embeddings.into();
            }
        }
        if let Some(w) = self.sliding_window {
            v["sliding_window"] = w.into();
            v["use_sliding_window"] = true.into();
        } else if matches!(self.arch, Arch::Qwen2 | Arch::Mistral) {
            v["use_sliding_window"] = false.into();
            v["sliding_window"] = Value::Null;
        }
        if let Some(g) = &self.gemma {
            super::gemma::hf_json(self, g, &mut v);
        }
        // The source's own settings kiln does not read (pad id, dropout, initializer range…):
        // without them transformers falls back to its class defaults (Phi-3's pad id 32000 is
        // outside a small vocabulary). What kiln wrote above wins.
        if let Some(o) = v.as_object_mut() {
            for (k, x) in &self.source_extra {
                o.entry(k.clone()).or_insert_with(|| x.clone());
            }
        }
        v
    }

    /// RoPE inverse frequencies `[rotary_dim / 2]` for this model's kind of scaling (LongRoPE:
    /// the short factors; [`super::phi3::long_inv_freq`] gives the long ones).
    pub fn inv_freq(&self) -> Result<Tensor> {
        let (d, theta) = (self.rotary_dim, self.rope_theta);
        Ok(match &self.rope {
            RopeKind::Default => ops::inv_freq(d, theta, None)?,
            RopeKind::Llama3(s) => ops::inv_freq(d, theta, Some(*s))?,
            RopeKind::Yarn(y) => ops::yarn_inv_freq(d, theta, y)?,
            RopeKind::Linear(f) => {
                let base = ops::inv_freq(d, theta, None)?.to_vec_f32()?;
                Tensor::from_vec(base.iter().map(|x| x / *f as f32).collect::<Vec<_>>(), [d / 2])?
            }
            RopeKind::Factors(t) => {
                let base = ops::inv_freq(d, theta, None)?.to_vec_f32()?;
                if t.len() != base.len() {
                    return Err(KilnError::Msg(format!("{} RoPE factors for head_dim {d}", t.len())));
                }
                Tensor::from_vec(base.iter().zip(t).map(|(x, f)| x / f).collect::<Vec<_>>(), [d / 2])?
            }
            RopeKind::LongRope(l) => l.inv_freq(d, theta, false)?,
        })
    }

    /// The softmax scale of attention: `1/√head_dim` (Gemma: `1/√query_pre_attn_scalar`). YaRN's
    /// and LongRoPE's attention factor is applied by the RoPE op ([`ModelConfig::rope_mscale`]).
    pub fn attention_scale(&self) -> f64 {
        if let Some(g) = &self.gemma {
            return 1.0 / g.query_pre_attn_scalar.sqrt();
        }
        1.0 / (self.head_dim as f64).sqrt()
    }

    /// The factor on the rotated dims of q and k (global RoPE layers): YaRN's and LongRoPE's
    /// attention factor, which transformers multiplies into cos and sin. With partial rotary
    /// (Phi-4-mini) it scales only the rotary slice, so it is not folded into the attention scale.
    pub fn rope_mscale(&self) -> f32 {
        (match &self.rope {
            RopeKind::Yarn(y) => y.attention_factor,
            RopeKind::LongRope(l) => l.attention_factor,
            _ => 1.0,
        }) as f32
    }

    /// Parameter count of the base model.
    pub fn num_params(&self) -> usize {
        let (h, i, d) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let attn = h * d * (2 * self.num_heads + 2 * self.num_kv_heads);
        let layer = attn + 3 * h * i + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_layers * layer + h + head
    }
}

/// Keys of a source config that say how the weights are laid out or how RoPE runs in another
/// spelling than kiln writes: never carried over (a merged export is dense and unquantized;
/// RoPE and window settings are written from what kiln parsed).
const NOT_CARRIED: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "auto_map",
    "quantization_config",
    "rope_scaling",
    "rope_parameters",
    "rope_theta",
    "partial_rotary_factor",
    "rope_local_base_freq",
    "sliding_window_pattern",
    "max_window_layers",
    "text_config",
    "vision_config",
];

/// The source keys carried into exported configs ([`ModelConfig::source_extra`]).
fn source_extra(v: &Value) -> serde_json::Map<String, Value> {
    // `_`-keys are kiln's own notes from rewriting a Gemma config (gemma::prepare); a
    // vision-language config's top level does not describe the text model kiln writes.
    let multimodal = v.get("text_config").is_some() || v.get("_multimodal").and_then(Value::as_bool) == Some(true);
    match v.as_object() {
        Some(o) if !multimodal => o
            .iter()
            .filter(|(k, _)| !k.starts_with('_') && !NOT_CARRIED.contains(&k.as_str()))
            .map(|(k, x)| (k.clone(), x.clone()))
            .collect(),
        _ => serde_json::Map::new(),
    }
}

fn llama3_json(s: &RopeScaling, theta: f64) -> Value {
    serde_json::json!({"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
        "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_max_position_embeddings,
        "rope_theta": theta})
}

/// The llama3 settings whose divisors are `t` (to within f32 rounding), when there are such.
/// llama3 depends only on the two band edges, the wavelengths `original/high_freq_factor` and
/// `original/low_freq_factor`: below the first a frequency is kept, above the second divided by
/// `factor`, and inside `s = (1/d − 1/factor)/(1 − 1/factor)` is linear in `1/wavelength`. Two
/// divisors inside the band fix both edges; with fewer, edges between the neighbouring
/// wavelengths give the same table. `original` is written as 8192 (Llama 3.1's); only the
/// ratios matter.
fn llama3_from_factors(t: &[f32], head_dim: usize, theta: f64) -> Option<RopeScaling> {
    let base = ops::inv_freq(head_dim, theta, None).ok()?.to_vec_f32().ok()?;
    let factor = t.iter().copied().fold(1f32, f32::max) as f64;
    if factor <= 1.0 || base.len() != t.len() {
        return None;
    }
    let tau = 2.0 * std::f64::consts::PI;
    // (1/wavelength, divisor), wavelengths rising.
    let pts: Vec<(f64, f64)> = base.iter().zip(t).map(|(x, d)| (*x as f64 / tau, *d as f64)).collect();
    let near = |a: f64, b: f64| (a / b - 1.0).abs() < 1e-6;
    let band: Vec<(f64, f64)> = pts
        .iter()
        .filter(|(_, d)| !near(*d, 1.0) && !near(*d, factor))
        .map(|&(u, d)| (u, (1.0 / d - 1.0 / factor) / (1.0 - 1.0 / factor)))
        .collect();
    // Largest 1/wl of the divided-by-factor ones, smallest of the kept ones.
    let full_u = pts.iter().filter(|(_, d)| near(*d, factor)).map(|p| p.0).fold(0.0, f64::max);
    let kept_u = pts.iter().filter(|(_, d)| near(*d, 1.0)).map(|p| p.0).fold(f64::INFINITY, f64::min);
    // s = (u − u_low) / (u_high − u_low), u = 1/wavelength.
    let (u_high, u_low) = match band.as_slice() {
        [] => {
            let mid = if kept_u.is_finite() { (full_u * kept_u).sqrt() } else { full_u * 2.0 };
            (mid * 1.0001, mid / 1.0001)
        }
        [(u0, s0)] => {
            let u_low = if full_u > 0.0 { (full_u * u0).sqrt() } else { u0 / 2.0 };
            (u_low + (u0 - u_low) / s0, u_low)
        }
        [(u0, s0), .., (u1, s1)] => {
            let a = (s1 - s0) / (u1 - u0);
            let u_low = u0 - s0 / a;
            (u_low + 1.0 / a, u_low)
        }
    };
    let orig = 8192.0;
    let s = RopeScaling {
        factor,
        low_freq_factor: orig * u_low,
        high_freq_factor: orig * u_high,
        original_max_position_embeddings: orig,
    };
    if !(s.low_freq_factor > 0.0 && s.high_freq_factor > s.low_freq_factor && s.high_freq_factor.is_finite()) {
        return None;
    }
    let check = ops::inv_freq(head_dim, theta, Some(s)).ok()?.to_vec_f32().ok()?;
    let same = check.iter().zip(&base).zip(t).all(|((c, x), d)| ((x / d) / c - 1.0).abs() < 1e-5);
    same.then_some(s)
}

/// What an adapter is sized from (adapters do not import the model).
impl From<&ModelConfig> for BaseDims {
    fn from(c: &ModelConfig) -> BaseDims {
        BaseDims {
            num_layers: c.num_layers,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            fused: c.arch == Arch::Phi3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Value {
        serde_json::json!({
            "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1
        })
    }

    /// The source's settings kiln does not read reach the configs it writes (transformers'
    /// Phi-3 default pad id 32000 broke loading a merged 709-token export without this); its
    /// own fields win, and quantization or RoPE spellings are not copied.
    #[test]
    fn exported_configs_keep_the_source_settings_kiln_does_not_read() {
        let mut v = base();
        v["pad_token_id"] = 0.into();
        v["initializer_range"] = 0.1.into();
        v["quantization_config"] = serde_json::json!({"quant_method": "bitsandbytes"});
        v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
        let c = ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap();
        let out = c.to_hf_json();
        assert_eq!((out["pad_token_id"].as_u64(), out["initializer_range"].as_f64()), (Some(0), Some(0.1)));
        assert!(out.get("quantization_config").is_none() && out.get("rope_scaling").is_none(), "{out}");
        assert_eq!(out["rope_parameters"]["factor"].as_f64(), Some(2.0));
        assert_eq!(out["vocab_size"].as_u64(), Some(10));
    }

    #[test]
    fn rope_theta_top_level_or_in_rope_parameters() {
        let mut v = base();
        v["rope_theta"] = 5e5.into();
        v["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let old = ModelConfig::from_json(&v, Path::new("c.json")).unwrap();
        let mut w = base();
        w["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let new = ModelConfig::from_json(&w, Path::new("c.json")).unwrap();
        assert_eq!(old.rope_theta, 5e5);
        assert_eq!(new.rope_theta, 5e5);
        assert_eq!(old.rope, new.rope);
        assert!(matches!(new.rope, RopeKind::Llama3(s) if s.factor == 8.0));
    }

    #[test]
    fn unknown_architecture_lists_supported() {
        let mut v = base();
        v["model_type"] = "gpt2".into();
        let e = ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("llama, mistral, qwen2, qwen3") && e.contains("m/config.json"), "{e}");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut v = base();
        v["hidden_size"] = "big".into();
        let e = ModelConfig::from_json(&v, Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("hidden_size"), "{e}");
        let mut v = base();
        v["num_key_value_heads"] = 3.into();
        let e = ModelConfig::from_json(&v, Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let mut v = base();
        v.as_object_mut().unwrap().remove("vocab_size");
        let e = ModelConfig::from_json(&v, Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("vocab_size") && e.contains("missing"), "{e}");
    }

    #[test]
    fn meaningless_values_are_refused_naming_the_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("rope_theta", serde_json::json!(0.0), "positive"),
            ("rope_theta", serde_json::json!(-5e5), "positive"),
            ("rms_norm_eps", serde_json::json!(-1e-6), "zero or positive"),
            ("rope_scaling", serde_json::json!({"rope_type": "linear", "factor": 0.0}), "rope_parameters.factor"),
            (
                "rope_parameters",
                serde_json::json!({"rope_type": "default", "rope_theta": -1.0}),
                "rope_parameters.rope_theta",
            ),
            (
                "rope_scaling",
                serde_json::json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192}),
                "high_freq_factor",
            ),
            ("num_hidden_layers", serde_json::json!(1u64 << 40), "at most"),
            ("vocab_size", serde_json::json!(1u64 << 40), "at most"),
            ("eos_token_id", serde_json::json!([2, 10]), "eos_token_id"),
            ("bos_token_id", serde_json::json!(-1), "bos_token_id"),
        ];
        for (k, x, want) in cases {
            let mut v = base();
            v[k] = x.clone();
            let e = ModelConfig::from_json(&v, Path::new("m/config.json")).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("m/config.json"), "{k} = {x}: {e}");
        }
        // Without head_dim, the heads must divide the width.
        let mut v = base();
        v["num_attention_heads"] = 3.into();
        v["num_key_value_heads"] = 3.into();
        let e = ModelConfig::from_json(&v, Path::new("c.json")).unwrap_err().to_string();
        assert!(e.contains("does not divide hidden_size"), "{e}");
        v["head_dim"] = 4.into();
        assert!(ModelConfig::from_json(&v, Path::new("c.json")).is_ok());
        // Zero eps and in-range special ids are fine.
        let mut v = base();
        v["rms_norm_eps"] = 0.0.into();
        v["eos_token_id"] = serde_json::json!([9]);
        assert!(ModelConfig::from_json(&v, Path::new("c.json")).is_ok());
    }

    #[test]
    fn yarn_settings_are_checked_naming_the_field() {
        let yarn = |extra: Value| {
            let mut r = serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16});
            for (k, x) in extra.as_object().unwrap() {
                r[k] = x.clone();
            }
            let mut v = base();
            v["rope_scaling"] = r;
            ModelConfig::from_json(&v, Path::new("m/config.json"))
        };
        let cases = [
            (serde_json::json!({"factor": 0.0}), "rope_parameters.factor"),
            (serde_json::json!({"factor": -2.0}), "rope_parameters.factor"),
            (serde_json::json!({"factor": null}), "rope_parameters.factor"),
            (serde_json::json!({"original_max_position_embeddings": 0}), "original_max_position_embeddings"),
            (serde_json::json!({"beta_fast": -1.0}), "rope_parameters.beta_fast"),
            (serde_json::json!({"attention_factor": 0.0}), "rope_parameters.attention_factor"),
            (serde_json::json!({"mscale": "big"}), "rope_parameters.mscale"),
            (serde_json::json!({"truncate": 1}), "rope_parameters.truncate"),
            (serde_json::json!({"rope_type": "dynamic"}), "default, linear, llama3, yarn"),
        ];
        for (extra, want) in cases {
            let e = yarn(extra.clone()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("m/config.json"), "{extra}: {e}");
        }
        // Defaults as transformers: betas 32/1 (also for 0), attention 0.1·ln(factor) + 1, the
        // original context from the top level when the scaling object has none.
        let c = yarn(serde_json::json!({"beta_fast": 0})).unwrap();
        let RopeKind::Yarn(y) = c.rope else { panic!("{:?}", c.rope) };
        assert_eq!((y.beta_fast, y.beta_slow, y.truncate), (32.0, 1.0, true));
        assert!((y.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        let mut v = base();
        v["max_position_embeddings"] = 64.into();
        v["rope_scaling"] = serde_json::json!({"type": "yarn", "factor": 4.0});
        let c = ModelConfig::from_json(&v, Path::new("c.json")).unwrap();
        assert!(matches!(c.rope, RopeKind::Yarn(y) if y.original_max_position_embeddings == 64.0));
        // A factor of 1 or below leaves the cos/sin unscaled (yarn_get_mscale).
        let c = yarn(serde_json::json!({"factor": 0.5})).unwrap();
        assert_eq!(c.attention_scale(), 1.0 / 4f64.sqrt());
    }

    #[test]
    fn llama3_settings_are_recovered_from_a_divisor_table() {
        let s = RopeScaling {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        // Llama 3.2's shape (head_dim 64, θ 500000): several divisors inside the band.
        let base = ops::inv_freq(64, 5e5, None).unwrap().to_vec_f32().unwrap();
        let scaled = ops::inv_freq(64, 5e5, Some(s)).unwrap().to_vec_f32().unwrap();
        let t: Vec<f32> = base.iter().zip(&scaled).map(|(b, x)| b / x).collect();
        let got = llama3_from_factors(&t, 64, 5e5).unwrap();
        assert!((got.low_freq_factor - 1.0).abs() < 1e-3 && (got.high_freq_factor - 4.0).abs() < 1e-3, "{got:?}");
        assert_eq!(got.factor, 32.0);
        // A table no llama3 setting gives (divisors falling with the wavelength) has none.
        let mut bad = t.clone();
        bad.reverse();
        assert!(llama3_from_factors(&bad, 64, 5e5).is_none());
    }

    #[test]
    fn qwen2_has_qkv_bias_only() {
        let mut v = base();
        v["model_type"] = "qwen2".into();
        let c = ModelConfig::from_json(&v, Path::new("c.json")).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
    }
}
