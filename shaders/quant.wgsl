// quant.wgsl — GGUF block types and QLoRA's NF4 to f32 (kernels/quant.cu).
//
// Computes: the f32 values of a block-quantized tensor, bit-exact with kiln's CPU reference
// (kiln_core::quant, itself byte-exact with ggml): Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K,
// NF4 and NF4_DQ; and of f16/bf16 tensors (one-value "blocks" of two bytes). Layouts: see the table in runtime/kiln-core/src/quant/mod.rs.
// One thread per output value; each decodes its block's header itself (redundant reads hit the
// cache). The linear layers use the fused dequant-GEMM (matmul_q.wgsl) instead; this kernel
// serves the other uses (widening f16/bf16 tensors, reading weights back).

struct Params {
    n: u32,
    ty: u32,
    block: u32,
    bytes: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn dequant(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let k = g.x + g.y * nw.x * 64u;
    if (k >= p.n) { return; }
    y[k] = decode(0u, k, p.ty, p.block, p.bytes);
}

// (quant_decode.wgsl is appended here.)
