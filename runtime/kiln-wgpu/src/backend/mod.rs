//! kiln's `Backend` on wgpu: the backend instances (`instance.rs`: a GEMM variant, a precision
//! and whether the reductions use subgroups, over the process's one device), device tensors
//! (`tensor.rs`, `memory.rs`), and one file per op family mirroring the CPU backend, each
//! launching the WGSL kernels of `shaders/<family>*.wgsl`.
//!
//! f32 (and i32 indices) on the device; f16/bf16 inputs are widened to f32 at upload, and the
//! parity suite lists the f16/bf16 cases as skipped with that reason, never as passed.

mod attention;
mod elementwise;
mod embedding;
mod glu;
mod instance;
mod loss;
mod matmul;
mod memory;
mod norm;
mod optim;
mod quant;
mod rope;
mod tensor;

pub use instance::WgpuBackend;
