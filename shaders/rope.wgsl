// rope.wgsl — rotary position embedding, HF "rotate half" layout (kernels/rope.cu).
//
// Computes: for x [B·T, H, D] and positions [B·T], dims i and i + D/2 of every head rotate by
// pos·inv_freq[i] (by the negative angle when `inverse`, which is the backward).
// Tiling: one thread per (token, head, i < D/2) pair, 64 per workgroup in a 2-D grid.

struct Params {
    pairs: u32,
    heads: u32,
    half: u32,
    sign: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let k = g.x + g.y * nw.x * 64u;
    if (k >= p.pairs) { return; }
    let i = k % p.half;
    let th = k / p.half;
    let t = th / p.heads;
    let base = th * 2u * p.half;
    // The angle is formed in f32, as HF does.
    let ang = inv_freq[i] * f32(pos[t]);
    let c = cos(ang);
    let s = p.sign * sin(ang);
    let a = x[base + i];
    let b = x[base + i + p.half];
    y[base + i] = a * c - b * s;
    y[base + i + p.half] = b * c + a * s;
}
