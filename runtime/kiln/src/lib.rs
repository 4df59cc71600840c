//! kiln: fine-tune Llama-family language models with hand-written kernels.
//!
//! The data path (see the README's architecture section): weights are memory-mapped from
//! safetensors ([`formats`]), the model ([`model`]) runs its forward through differentiable ops
//! of `kiln-core` on a tape, adapters ([`adapters`]) add the trainable parameters, and the
//! trainer ([`train`]) steps an optimizer over their gradients. The tape, model and trainer never
//! name a backend.

pub mod adapters;
pub mod backend_select;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod export_gguf;
pub mod formats;
pub mod generate;
pub mod info;
pub mod model;
pub mod models;
pub mod outdir;
pub mod train;

pub use error::{KilnError, Result};
pub use kiln_core as core;
