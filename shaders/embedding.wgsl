// embedding.wgsl — token embedding lookup and its gradient (kernels/embedding.cu).
//
// Forward: y[t, :] = w[ids[t], :] for w [V, H], ids [N] (checked in range by the host).
// Backward: dw [V, H] = Σ over tokens t with ids[t] = v of dy[t, :]. One thread per column h
// walks every token and owns dw[:, h], so no two threads add into the same element (WGSL has no
// float atomics) and the sum order is fixed; dw starts zeroed and is added to.
// A table larger than a storage binding is bound a range of rows [r0, r1) at a time (`off`: its
// first element inside the binding); a launch handles the ids that fall in its range. Tokens are
// split likewise by the host, so no kernel needs the whole of a large tensor.
// Packed tables (f16, bf16, GGUF blocks: `embedding_fwd_q`, in a module with
// quant_decode.wgsl) are decoded row by row, never widened whole; `off` is then in bytes.

struct Params {
    n: u32,
    h: u32,
    r0: u32,
    r1: u32,
    off: u32,
    ty: u32,
    block: u32,
    bytes: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> f_w: array<f32>;
@group(0) @binding(2) var<storage, read> f_ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> f_y: array<f32>;

@compute @workgroup_size(64)
fn embedding_fwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let k = g.x + g.y * nw.x * 64u;
    if (k >= p.n * p.h) { return; }
    let t = k / p.h;
    let c = k % p.h;
    let id = u32(f_ids[t]);
    if (id < p.r0 || id >= p.r1) { return; }
    f_y[k] = f_w[p.off + (id - p.r0) * p.h + c];
}

@group(0) @binding(1) var<storage, read> b_dy: array<f32>;
@group(0) @binding(2) var<storage, read> b_ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> b_dw: array<f32>;

@compute @workgroup_size(64)
fn embedding_bwd(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    if (c >= p.h) { return; }
    for (var t = 0u; t < p.n; t++) {
        let row = u32(b_ids[t]);
        if (row >= p.r0 && row < p.r1) {
            let o = p.off + (row - p.r0) * p.h + c;
            b_dw[o] += b_dy[t * p.h + c];
        }
    }
}
