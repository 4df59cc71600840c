// matmul_q.wgsl — the fused dequant-GEMM of QLoRA (kernels/matmul.cu): C (+)= α·A·B where B
// comes from a block-quantized weight (GGUF types, NF4, NF4_DQ) decoded while its tile is staged
// into workgroup memory, so no f32 copy of the weight ever exists. Strides as in matmul.wgsl
// (x·Wᵀ for the forward, dy·W for the input gradient). Assembled from this file,
// quant_decode.wgsl and matmul_v3.wgsl (the v3_register_blocked body).

// (Params: matmul_params.wgsl, assembled before this file.)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> wq: array<u32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

fn load_b(i: u32) -> f32 {
    return decode(p.qbase, i, p.ty, p.block, p.bytes);
}

// (quant_decode.wgsl and matmul_v3.wgsl are appended here.)
