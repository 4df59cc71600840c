// glu.wgsl — gated linear units, the MLP activation (kernels/glu.cu): y = act(g)·u elementwise,
// and the gradients for g and u.
//
// Computes: SwiGLU, act = silu(g) = g·σ(g) (Llama, Mistral, Qwen); GeGLU, act = gelu_tanh(g) =
// g/2·(1 + tanh(√(2/π)·(g + 0.044715·g³))) (Gemma; PyTorch's gelu(approximate="tanh")).
// GeGLU is evaluated as g·σ(2z), z = √(2/π)·(g + 0.044715·g³), which equals g/2·(1 + tanh z)
// without the cancellation of 1 + tanh z for negative g; then 1 − tanh²z = 4·σ(2z)·σ(−2z).
// Layout: flat f32 arrays of `n` elements (g, u, dy, y, dg, du the same shape). One thread per
// element, 64 per workgroup, the workgroups folded into a 2-D grid as in elementwise.wgsl.

struct Params {
    n: u32,
    s: f32,
    threads: u32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn linear(g: vec3<u32>, nw: vec3<u32>) -> u32 {
    return g.x + g.y * nw.x * 64u;
}

fn sigmoid(x: f32) -> f32 {
    return 1.0 / (1.0 + exp(-x));
}

const GELU_K: f32 = 0.7978845608028654; // √(2/π)
const GELU_C: f32 = 0.044715;

// (σ(2z), σ(−2z)) for GeGLU's z at g. 2z is clamped to ±80 so exp stays finite (σ is then 0
// or 1 to f32 precision, as it is well before ±80).
fn gelu_sig(g: f32) -> vec2<f32> {
    let z2 = clamp(2.0 * GELU_K * (g + GELU_C * g * g * g), -80.0, 80.0);
    let e = exp(-z2);
    let s = 1.0 / (1.0 + e);
    return vec2<f32>(s, e * s);
}

// ---- forward: (g, u) → y
@group(0) @binding(1) var<storage, read> fw_g: array<f32>;
@group(0) @binding(2) var<storage, read> fw_u: array<f32>;
@group(0) @binding(3) var<storage, read_write> fw_y: array<f32>;

@compute @workgroup_size(64)
fn swiglu_fwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) {
        let x = fw_g[i];
        fw_y[i] = x * sigmoid(x) * fw_u[i];
    }
}

@compute @workgroup_size(64)
fn geglu_fwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) {
        let x = fw_g[i];
        fw_y[i] = x * gelu_sig(x).x * fw_u[i];
    }
}

// ---- backward: (g, u, dy) → (dg, du)
@group(0) @binding(1) var<storage, read> bw_g: array<f32>;
@group(0) @binding(2) var<storage, read> bw_u: array<f32>;
@group(0) @binding(3) var<storage, read> bw_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> bw_dg: array<f32>;
@group(0) @binding(5) var<storage, read_write> bw_du: array<f32>;

@compute @workgroup_size(64)
fn swiglu_bwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) {
        let x = bw_g[i];
        let sg = sigmoid(x);
        let dy = bw_dy[i];
        bw_dg[i] = dy * bw_u[i] * sg * (1.0 + x * (1.0 - sg));
        bw_du[i] = dy * x * sg;
    }
}

// d/dg [g·σ(2z)] = σ(2z) + g·σ(2z)·σ(−2z)·2·dz/dg, dz/dg = √(2/π)·(1 + 3·0.044715·g²).
@compute @workgroup_size(64)
fn geglu_bwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) {
        let x = bw_g[i];
        let s = gelu_sig(x);
        let dy = bw_dy[i];
        let dact = s.x + 2.0 * x * s.x * s.y * GELU_K * (1.0 + 3.0 * GELU_C * x * x);
        bw_dg[i] = dy * bw_u[i] * dact;
        bw_du[i] = dy * x * s.x;
    }
}
