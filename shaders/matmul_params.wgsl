// matmul_params.wgsl — the GEMM Params shared by matmul.wgsl and matmul_q.wgsl (each is assembled
// after this file), mirrored by `Gemm` in runtime/kiln-wgpu/src/backend/matmul.rs.

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
    // Where each operand starts inside its binding (elements; for a packed B, `qbase` bytes), and
    // C's row stride: a GEMM on tensors larger than the adapter's storage-binding limit runs as
    // several launches over sub-ranges (runtime/kiln-wgpu/src/backend/matmul.rs `run`).
    a_off: u32,
    b_off: u32,
    c_off: u32,
    ldc: u32,
    qbase: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

