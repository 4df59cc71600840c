//! Trainable additions to a frozen base model.

pub mod bottleneck;
pub mod lora;

pub use lora::{LoraConfig, LoraSet, Target};
