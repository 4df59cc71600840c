// rope.wgsl — rotary position embedding, HF "rotate half" layout (kernels/rope.cu).
//
// Computes: for x [B·T, H, D] and positions [B·T], dims i and i + rh of every head rotate by
// pos·inv_freq[i], i < rh (by the negative angle when `inverse`, which is the backward); the
// rotary slice is the first 2·rh dims, and dims from 2·rh on pass through unchanged (partial
// rotary, Phi-4-mini's 0.75 of each head; rh = D/2 rotates every dim); the rotated dims are
// multiplied by `mscale` (YaRN/LongRoPE attention scaling, 1 otherwise).
// Tiling: one thread per (token, head, item): a row's D − rh items are its rh pairs, then its
// D − 2·rh copied dims; 64 threads per workgroup in a 2-D grid.

struct Params {
    items: u32,
    heads: u32,
    d: u32,
    rh: u32,
    sign: f32,
    mscale: f32,  // the rotated dims' factor (YaRN/LongRoPE attention scaling), else 1
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let k = g.x + g.y * nw.x * 64u;
    if (k >= p.items) { return; }
    let per = p.d - p.rh;
    let i = k % per;
    let th = k / per;
    let base = th * p.d;
    if (i >= p.rh) {
        y[base + i + p.rh] = x[base + i + p.rh];
        return;
    }
    let t = th / p.heads;
    // The angle is formed in f32, as HF does.
    let ang = inv_freq[i] * f32(pos[t]);
    // cos and sin each times the scale, as transformers forms them.
    let c = cos(ang) * p.mscale;
    let s = p.sign * (sin(ang) * p.mscale);
    let a = x[base + i];
    let b = x[base + i + p.rh];
    y[base + i] = a * c - b * s;
    y[base + i + p.rh] = b * c + a * s;
}
