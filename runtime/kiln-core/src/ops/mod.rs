//! Differentiable ops: each runs its forward on the tensor's backend and records a backward
//! closure holding only what that backward needs.

mod attention;
mod elementwise;
mod embedding;
mod glu;
mod linear;
mod loss;
mod norm;
mod rope;

pub use attention::{AttnOptions, attention, attention_with};
pub use elementwise::{add, cast, dropout, reshape, scale, softcap};
pub use embedding::embedding;
pub use glu::{geglu, swiglu};
pub use linear::{Lora, linear};
pub use loss::{
    CeResult, cross_entropy, linear_cross_entropy, linear_cross_entropy_capped, linear_token_nll,
    linear_token_nll_capped,
};
pub use norm::rms_norm;
pub use rope::{RopeScaling, Yarn, inv_freq, rope, yarn_inv_freq, yarn_mscale};
