//! Trainable additions to a frozen base model.
//!
//! Adapters are sized from [`BaseDims`], the few facts of a base model they need, and never
//! import the model: the model attaches adapters, not the other way round
//! (`model` → `adapters`). `ModelConfig` converts into `BaseDims`, so every function here
//! takes `&model.config` as it is.

pub mod bottleneck;
pub mod fused;
pub mod lora;

pub use lora::{LoraConfig, LoraSet, Target};

/// The shape of a decoder an adapter attaches to: its block count and the widths of the linear
/// layers in each block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseDims {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// q/k/v and gate/up are one fused matrix each (Phi-3's `qkv_proj`, `gate_up_proj`): a LoRA
    /// on them is one adapter per fused matrix, as PEFT makes it ([`fused`]).
    pub fused: bool,
}

impl From<&BaseDims> for BaseDims {
    fn from(d: &BaseDims) -> BaseDims {
        *d
    }
}
