//! Bottleneck adapters (Houlsby et al. 2019; AdapterHub's "double_seq_bn"): after the attention
//! and the MLP sub-layer of every block, `y = y + up(silu(down(y)))` with a small hidden size.
//! The up-projection starts at zero, so training starts exactly at the base model.

use kiln_core::ops;
use kiln_core::rng::Rng;
use kiln_core::{DType, Tape, Tensor, Var};

use super::BaseDims;
use crate::{KilnError, Result};

/// One adapter: down `[size, hidden]` + bias, up `[hidden, size]` + bias.
#[derive(Clone, Debug)]
pub struct Bottleneck {
    pub down: Var,
    pub down_bias: Var,
    pub up: Var,
    pub up_bias: Var,
}

/// Where in a block an adapter sits.
pub const SITES: [&str; 2] = ["attn_adapter", "mlp_adapter"];

impl Bottleneck {
    /// A fresh adapter: down Kaiming-uniform (as `nn.Linear`), up and both biases zero.
    pub fn new(hidden: usize, size: usize, rng: &mut Rng) -> Result<Bottleneck> {
        let bound = 1.0 / (hidden as f64).sqrt();
        let down: Vec<f32> = (0..size * hidden).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect();
        let z = |shape: Vec<usize>| Var::leaf(Tensor::zeros(shape, DType::F32), true);
        Ok(Bottleneck {
            down: Var::leaf(Tensor::from_vec(down, [size, hidden])?, true),
            down_bias: z(vec![size]),
            up: z(vec![hidden, size]),
            up_bias: z(vec![hidden]),
        })
    }

    /// `y + up(silu(down(y)))` on `y` `[.., hidden]`.
    pub fn apply(&self, tape: &Tape, y: &Var) -> Result<Var> {
        let h = ops::linear(tape, y, &self.down, Some(&self.down_bias), None)?;
        // In h's type: 16-bit on the mixed-precision path (the gate's operands share a type).
        let ones = Tensor::from_vec(vec![1f32; h.value().numel()], h.value().shape().clone())?;
        let ones = Var::constant(ones.to_dtype(h.value().dtype())?);
        let a = ops::swiglu(tape, &h, &ones)?;
        let u = ops::linear(tape, &a, &self.up, Some(&self.up_bias), None)?;
        Ok(ops::add(tape, y, &u)?)
    }

    /// `(suffix, var)` of the four tensors.
    pub fn named(&self) -> [(&'static str, &Var); 4] {
        [
            ("down.weight", &self.down),
            ("down.bias", &self.down_bias),
            ("up.weight", &self.up),
            ("up.bias", &self.up_bias),
        ]
    }

    /// The four tensors, mutable, in [`Bottleneck::named`] order.
    pub fn vars_mut(&mut self) -> [&mut Var; 4] {
        [&mut self.down, &mut self.down_bias, &mut self.up, &mut self.up_bias]
    }
}

/// Adapters for every block: `[after attention, after MLP]`.
pub fn new_set(model: impl Into<BaseDims>, size: usize, seed: u64) -> Result<Vec<[Bottleneck; 2]>> {
    let model = model.into();
    if size == 0 {
        return Err(KilnError::Msg("adapter_size must be at least 1".into()));
    }
    let mut rng = Rng::new(seed);
    (0..model.num_layers)
        .map(|_| {
            Ok([
                Bottleneck::new(model.hidden_size, size, &mut rng)?,
                Bottleneck::new(model.hidden_size, size, &mut rng)?,
            ])
        })
        .collect()
}

/// Writes `dir/adapter_config.json` (`adapter_type: bottleneck`) and `adapter_model.safetensors`.
pub fn save(named: &[(String, Tensor)], size: usize, base: &str, dir: &std::path::Path) -> Result<()> {
    crate::formats::write_safetensors(&dir.join("adapter_model.safetensors"), named)?;
    let cfg = serde_json::json!({"adapter_type": "bottleneck", "adapter_size": size, "non_linearity": "silu",
        "sites": SITES, "base_model_name_or_path": base});
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| KilnError::Msg(e.to_string()))?;
    crate::formats::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// The adapter size of a bottleneck adapter folder, or `None` when the folder holds another
/// kind of adapter (LoRA).
pub fn size_of(dir: &std::path::Path) -> Result<Option<usize>> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| KilnError::io(&p, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| KilnError::Config {
        path: p.clone(),
        field: "(json)".into(),
        detail: e.to_string(),
    })?;
    if v["adapter_type"] != "bottleneck" {
        return Ok(None);
    }
    let size = v["adapter_size"].as_u64().filter(|&s| s > 0).ok_or_else(|| KilnError::Config {
        path: p.clone(),
        field: "adapter_size".into(),
        detail: "missing or not a positive integer".into(),
    })?;
    Ok(Some(size as usize))
}
