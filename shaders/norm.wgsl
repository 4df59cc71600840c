// norm.wgsl — RMSNorm forward and backward (kernels/norm.cu).
//
// Computes y = x · rstd · w with rstd = 1/sqrt(mean(x²) + eps) per row, and its backward:
// dx = rstd·(g − x̂·mean(g·x̂)) with g = dy·w, x̂ = x·rstd; dw = Σ_rows dy·x̂.
// Layout: x, y, dy, dx are [rows, h] row-major; w, dw are [h]; rstd is [rows].
// Tiling: one workgroup of 64 threads per row (rows folded into a 2-D grid of workgroups); the
// threads stride over the row and reduce with wg_sum (through workgroup memory, or subgroup
// operations where the adapter has them). dw is a separate pass with
// one thread per column walking all rows, so no two threads write the same element.

struct Params {
    rows: u32,
    h: u32,
    eps: f32,
    // rms_norm_bwd_dw: add to dw (a launch after the first of one split by rows).
    acc: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

// (wg_sum and the entry points' `Ids`: reduce_wg.wgsl or reduce_sg.wgsl, appended.)

@group(0) @binding(1) var<storage, read> f_x: array<f32>;
@group(0) @binding(2) var<storage, read> f_w: array<f32>;
@group(0) @binding(3) var<storage, read_write> f_y: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_rstd: array<f32>;

@compute @workgroup_size(64)
fn rms_norm_fwd(id: Ids) {
    let li = id.li;
    let r = id.wid.x + id.wid.y * id.nw.x;
    // Uniform control flow: every thread of the workgroup reaches the barriers.
    let live = r < p.rows;
    let base = r * p.h;
    var acc = 0.0;
    if (live) {
        for (var i = li; i < p.h; i += 64u) {
            let v = f_x[base + i];
            acc += v * v;
        }
    }
    let ms = wg_sum(id, acc) / f32(p.h);
    let s = 1.0 / sqrt(ms + p.eps);
    if (live) {
        for (var i = li; i < p.h; i += 64u) {
            f_y[base + i] = f_x[base + i] * s * f_w[i];
        }
        if (li == 0u) { f_rstd[r] = s; }
    }
}

@group(0) @binding(1) var<storage, read> b_dy: array<f32>;
@group(0) @binding(2) var<storage, read> b_x: array<f32>;
@group(0) @binding(3) var<storage, read> b_w: array<f32>;
@group(0) @binding(4) var<storage, read> b_rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> b_dx: array<f32>;

@compute @workgroup_size(64)
fn rms_norm_bwd_dx(id: Ids) {
    let li = id.li;
    let r = id.wid.x + id.wid.y * id.nw.x;
    let live = r < p.rows;
    let base = r * p.h;
    var s = 0.0;
    var acc = 0.0;
    if (live) {
        s = b_rstd[r];
        for (var i = li; i < p.h; i += 64u) {
            acc += b_dy[base + i] * b_w[i] * b_x[base + i] * s;
        }
    }
    let dot = wg_sum(id, acc) / f32(p.h);
    if (live) {
        for (var i = li; i < p.h; i += 64u) {
            b_dx[base + i] = s * (b_dy[base + i] * b_w[i] - b_x[base + i] * s * dot);
        }
    }
}

@group(0) @binding(1) var<storage, read> w_dy: array<f32>;
@group(0) @binding(2) var<storage, read> w_x: array<f32>;
@group(0) @binding(3) var<storage, read> w_rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> w_dw: array<f32>;

@compute @workgroup_size(64)
fn rms_norm_bwd_dw(@builtin(global_invocation_id) g: vec3<u32>) {
    let i = g.x;
    if (i >= p.h) { return; }
    var acc = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        acc += w_dy[r * p.h + i] * w_x[r * p.h + i] * w_rstd[r];
    }
    if (p.acc != 0u) { acc += w_dw[i]; }
    w_dw[i] = acc;
}
