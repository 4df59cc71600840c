//! kiln-core: the pieces every backend and model shares.
//!
//! * [`tensor`]: shape, dtype and contiguous storage (owned or memory-mapped), with cheap views.
//! * [`backend`]: the backend contract, split by op family, and the CPU reference backend.
//! * [`autograd`]: the tape. Forward ops record themselves only when an input needs a gradient;
//!   backward replays in reverse and frees saved tensors as it goes.
//! * [`ops`]: differentiable ops (forward + backward formulas) that dispatch to the backend.
//!
//! The tape, models and trainer never name a backend: they call ops, and each op asks the
//! tensor which backend owns it.

pub mod autograd;
pub mod backend;
pub mod dtype;
pub mod error;
pub mod ops;
pub mod quant;
pub mod rng;
pub mod selftest;
pub mod shape;
pub mod tensor;

pub use autograd::{Grads, Tape, Var, VarId};
pub use backend::{Backend, Support, cpu::CpuBackend};
pub use dtype::DType;
pub use error::{Error, Result};
pub use shape::Shape;
pub use tensor::Tensor;
