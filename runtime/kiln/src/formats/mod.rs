//! File formats: safetensors (single and sharded).

pub mod safetensors;

pub use self::safetensors::WeightStore;
