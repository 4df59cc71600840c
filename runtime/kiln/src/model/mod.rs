//! Llama-family decoder models: config parsing, the forward pass, and where models come from
//! (`registry`: the default model and its cache; `hub`: models named `org/name` from the
//! Hugging Face cache; `load`: a model, its tokenizer and an adapter
//! opened for use).

pub mod config;
pub mod gemma;
pub mod gguf;
pub mod hub;
pub mod init;
pub mod llama;
pub mod load;
pub mod phi3;
pub mod registry;

pub use config::{Arch, ModelConfig, RopeKind};
pub use llama::{Inputs, KvCache, Linear, Llama, default_positions};
pub use load::{
    LoadSpec, Loaded, adapter_tokenizer, config_of, load, load_adapter, load_with_adapter, load_with_tokenizer,
};
pub use registry::{cache_dir, default_model, resolve};
