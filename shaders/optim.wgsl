// optim.wgsl — AdamW with decoupled weight decay, in place (kernels/optim.cu).
//
// Per element, in torch.optim.AdamW's order: p ·= 1 − lr·wd; m = β1·m + (1−β1)·g;
// v = β2·v + (1−β2)·g²; p −= (lr/bc1)·m / (sqrt(v)/sqrt(bc2) + eps). Every coefficient,
// 1 − β included, is computed on the host in f64 and rounded once (AdamWStep::factors): 1 − β
// formed here from the f32 β2 = 0.999 would be 1.3e-5 too small. One thread per element.

struct Params {
    n: u32,
    b1: f32,
    c1: f32,
    b2: f32,
    c2: f32,
    decay: f32,
    step: f32,
    bc2s: f32,
    eps: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(64)
fn adamw(@builtin(global_invocation_id) gi: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gi.x + gi.y * nw.x * 64u;
    if (i >= p.n) { return; }
    let g = grad[i];
    var x = param[i] * p.decay;
    let mm = p.b1 * m[i] + p.c1 * g;
    let vv = p.b2 * v[i] + p.c2 * g * g;
    x -= p.step * mm / (sqrt(vv) / p.bc2s + p.eps);
    m[i] = mm;
    v[i] = vv;
    param[i] = x;
}
