// embedding_q.wgsl — the embedding lookup from a packed table (f16, bf16, GGUF blocks, NF4),
// assembled after embedding.wgsl's Params and before quant_decode.wgsl: each value is decoded
// where it is read (the table's rows r0.. start at byte `off` of the binding).

@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read> q_ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> q_y: array<f32>;

@compute @workgroup_size(64)
fn embedding_fwd_q(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let k = g.x + g.y * nw.x * 64u;
    if (k >= p.n * p.h) { return; }
    let t = k / p.h;
    let c = k % p.h;
    let id = u32(q_ids[t]);
    if (id < p.r0 || id >= p.r1) { return; }
    q_y[k] = decode(p.off, (id - p.r0) * p.h + c, p.ty, p.block, p.bytes);
}
