//! Llama-family decoder models: config parsing and the forward pass.

pub mod config;
pub mod gguf;
pub mod init;
pub mod llama;

pub use config::{Arch, ModelConfig, RopeKind};
pub use llama::{Inputs, KvCache, Linear, Llama, default_positions};
