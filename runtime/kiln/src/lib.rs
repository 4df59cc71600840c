//! kiln: fine-tune Llama-family language models with hand-written kernels.
//!
//! The data path (see the README's architecture section): weights are memory-mapped from
//! safetensors or GGUF ([`formats`]), the model ([`model`]) runs its forward through
//! differentiable ops of `kiln-core` on a tape, adapters ([`adapters`]) add the trainable
//! parameters, and the trainer ([`train`]) steps an optimizer over their gradients. The tape,
//! model and trainer never name a backend.
//!
//! Modules, lowest first; each imports only from those above it in this list:
//! - [`error`], [`formats`] (safetensors, GGUF, atomic writes) and [`outdir`] (output folders,
//!   signals): files on disk.
//! - [`data`]: datasets, chat templates, tokenizers, rendering, batching and the byte budgets.
//! - [`adapters`]: LoRA and bottleneck adapters, sized from [`adapters::BaseDims`] (they never
//!   import the model).
//! - [`model`]: configs and the forward pass (attaching adapters), `model::registry` (the
//!   default model and its cache) and `model::load` (a model, its tokenizer and an adapter
//!   opened for use: [`model::load()`], [`model::load_with_adapter`], [`model::load_with_tokenizer`]).
//! - [`infer`]: the one inference engine — [`infer::Session`] (a loaded model, its template and
//!   KV cache), [`infer::Conversation`], sampling and stop strings.
//! - [`eval`] (metrics, [`eval::run`], [`eval::score_files`]), [`export`] ([`export::run`]:
//!   merged, GGUF, GGUF-LoRA) and [`train`] ([`train`]'s entry): the commands' engines. `eval`
//!   reports DPO rewards with training's own preference loss (`train::pref`), and the trainer
//!   scores held-out rows with `eval::measure`.
//! - [`info`]: the machine's backends and a model's shape and memory (`kiln info`); it sits at
//!   the top because it describes everything below.
//!
//! The `kiln` binary's `cli` turns flags into these entries' configs and prints their reports;
//! it assembles no models, tokenizers or templates itself.

pub mod adapters;
pub mod backend_select;
pub mod data;
pub mod error;
pub mod eval;
pub mod export;
pub mod formats;
pub mod infer;
pub mod info;
pub mod model;
pub mod outdir;
pub mod train;

pub use error::{KilnError, Result};
pub use kiln_core as core;
