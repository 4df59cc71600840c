// matmul_q.wgsl — the fused dequant-GEMM of QLoRA (kernels/matmul_q.cu): C (+)= α·A·B where B
// comes from a block-quantized weight (GGUF types, NF4, NF4_DQ) decoded while its tile is staged
// into workgroup memory, so no f32 copy of the weight ever exists. Strides as in matmul.wgsl
// (x·Wᵀ for the forward, dy·W for the input gradient). Assembled from this file,
// dequant_decode.wgsl and gemm_v3.wgsl (the v3_register_blocked body).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    accumulate: u32,
    rs_a: u32,
    cs_a: u32,
    rs_b: u32,
    cs_b: u32,
    alpha: f32,
    // matmul_q.wgsl: the weight's block type, values and bytes per block (unused here).
    ty: u32,
    block: u32,
    bytes: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> wq: array<u32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

fn load_b(i: u32) -> f32 {
    return decode(i, p.ty, p.block, p.bytes);
}

// (dequant_decode.wgsl and gemm_v3.wgsl are appended here.)
