//! kiln's `Backend` on wgpu: the backend instances (`instance.rs`: a GEMM variant, a precision
//! and whether the reductions use subgroups, over the process's one device), device tensors
//! (`tensor.rs`, `memory.rs`), and one file per op family mirroring the CPU backend, each
//! launching the WGSL kernels of `shaders/<family>*.wgsl`.
//!
//! Activations and gradients are f32 (indices i32) on the device; frozen f16/bf16 and
//! block-quantized weights keep their bytes and are decoded where they are read (the GEMM and
//! the embedding lookup), or widened to f32 for any other op (`tensor.rs`, `held`).

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
