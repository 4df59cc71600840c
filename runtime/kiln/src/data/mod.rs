//! Datasets: the formats users bring, validated row by row into normalized examples.
//!
//! `read` turns a file (JSONL, JSON array or CSV; detected per file) into raw JSON objects with
//! their line numbers, streaming JSONL and CSV. `example` detects the dataset format from the
//! rows' fields and validates each row into an [`Example`]; every bad row becomes a
//! [`RowError`] `file:line: field: reason`. `dataset` loads, mixes (weighted) and splits.
//! `template` and `tokenizer` (with its fast path `fastbpe` and the GGUF pre-tokenizer table
//! `pretok`) turn examples into ids through
//! `render`; `batch` packs or pads them into training batches; `budget` bounds every length.
//!
//! Inside the folder imports run one way: `budget`, `example` ← `read` ← `dataset`;
//! `fastbpe`, `pretok` ← `tokenizer`; `example`, `template`, `tokenizer` ← `render` ← `batch`. Nothing
//! here imports from the model, the adapters or the trainer.

pub mod batch;
pub mod budget;
pub mod dataset;
pub mod example;
mod fastbpe;
pub mod inspect;
pub(crate) mod pretok;
pub mod read;
pub mod render;
mod spm;
pub mod template;
pub mod tokenizer;

pub use dataset::{DataSpec, Dataset, LoadOptions, LoadReport};
pub use example::{Example, Format, Message, Reason, Role, RowError};
pub use inspect::{InspectConfig, Inspection, inspect};
