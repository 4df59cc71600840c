//! Creating small random models (for the demo and tests), written as a transformers-style
//! directory: `config.json` + `model.safetensors`.

use std::path::Path;

use kiln_core::Tensor;
use kiln_core::rng::Rng;

use super::ModelConfig;
use crate::adapters::Target;
use crate::formats::{write_atomic, write_safetensors};
use crate::{KilnError, Result};

/// Shape of a random Llama.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Standard deviation of the random linear/embedding weights.
    pub init_std: f64,
}

/// Writes a random Llama model directory and returns its parsed config.
pub fn create_random_llama(dir: &Path, s: &TinySpec, seed: u64) -> Result<ModelConfig> {
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": s.vocab_size, "hidden_size": s.hidden_size, "intermediate_size": s.intermediate_size,
        "num_hidden_layers": s.num_layers, "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
        "hidden_act": "silu", "torch_dtype": "float32"
    });
    let cpath = dir.join("config.json");
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| KilnError::Msg(e.to_string()))?;
    write_atomic(&cpath, text.as_bytes())?;
    let c = ModelConfig::from_json(&cfg, &cpath)?;
    let mut rng = Rng::new(seed);
    let mut randn = |dims: &[usize], std: f64| -> Result<Tensor> {
        let n: usize = dims.iter().product();
        Ok(Tensor::from_vec((0..n).map(|_| (rng.normal() * std) as f32).collect::<Vec<_>>(), dims.to_vec())?)
    };
    let ones = |n: usize| Tensor::from_vec(vec![1f32; n], [n]);
    let mut t = vec![("model.embed_tokens.weight".to_string(), randn(&[c.vocab_size, c.hidden_size], s.init_std)?)];
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        for tg in Target::ALL {
            let (fin, fout) = tg.dims(&c);
            // Scaled so the residual stream stays O(1) through the blocks.
            t.push((
                format!("{p}.{}.weight", tg.module()),
                randn(&[fout, fin], s.init_std / (fin as f64 / 64.0).sqrt().max(1.0))?,
            ));
        }
        t.push((format!("{p}.input_layernorm.weight"), ones(c.hidden_size)?));
        t.push((format!("{p}.post_attention_layernorm.weight"), ones(c.hidden_size)?));
    }
    t.push(("model.norm.weight".into(), ones(c.hidden_size)?));
    write_safetensors(&dir.join("model.safetensors"), &t)?;
    Ok(c)
}
