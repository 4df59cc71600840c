// loss.wgsl — cross-entropy over the vocabulary with ignored targets (kernels/loss.cu).
//
// Forward, one workgroup of 64 threads per row of logits [M, V]: the row's max, then
// Σ exp(x − max) (two passes over the row, reduced with wg_max/wg_sum: workgroup memory, or
// subgroup operations where the adapter has them), lse = max + ln Σ, and
// nll = lse − x[target] (0 where target < 0). The host forms the mean from nll.
// Backward, one thread per logit: (exp(x − lse) − [v = target]) · g[row], zero on ignored
// rows; g is the per-row weight (dloss/n_valid for the mean loss, or given per row).

struct Params {
    m: u32,
    v: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// (wg_max, wg_sum and the entry points' `Ids`: reduce_wg.wgsl or reduce_sg.wgsl, appended.)

@group(0) @binding(1) var<storage, read> f_x: array<f32>;
@group(0) @binding(2) var<storage, read> f_t: array<i32>;
@group(0) @binding(3) var<storage, read_write> f_lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_nll: array<f32>;

@compute @workgroup_size(64)
fn ce_fwd(id: Ids) {
    let li = id.li;
    let r = id.wid.x + id.wid.y * id.nw.x;
    let live = r < p.m;
    let base = r * p.v;
    var mx = -3.0e38;
    if (live) {
        for (var i = li; i < p.v; i += 64u) { mx = max(mx, f_x[base + i]); }
    }
    let rmax = wg_max(id, mx);
    var acc = 0.0;
    if (live) {
        for (var i = li; i < p.v; i += 64u) { acc += exp(f_x[base + i] - rmax); }
    }
    let total = wg_sum(id, acc);
    if (live && li == 0u) {
        let lse = rmax + log(total);
        f_lse[r] = lse;
        let t = f_t[r];
        if (t >= 0) { f_nll[r] = lse - f_x[base + u32(t)]; } else { f_nll[r] = 0.0; }
    }
}

@group(0) @binding(1) var<storage, read> b_x: array<f32>;
@group(0) @binding(2) var<storage, read> b_t: array<i32>;
@group(0) @binding(3) var<storage, read> b_lse: array<f32>;
@group(0) @binding(4) var<storage, read> b_g: array<f32>;
@group(0) @binding(5) var<storage, read_write> b_dx: array<f32>;

@compute @workgroup_size(64)
fn ce_bwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let k = g.x + g.y * nw.x * 64u;
    if (k >= p.m * p.v) { return; }
    let r = k / p.v;
    let c = k % p.v;
    let t = b_t[r];
    if (t < 0) {
        b_dx[k] = 0.0;
        return;
    }
    var d = exp(b_x[k] - b_lse[r]);
    if (u32(t) == c) { d -= 1.0; }
    b_dx[k] = d * b_g[r];
}
