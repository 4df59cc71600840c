// attention.wgsl — causal grouped-query attention with packed-row segments (kernels/attention.cu).
//
// Layout: q [B, T, Hq, D], k/v [B, Tk, Hkv, D], o like q, lse [B, T, Hq], seg [B, T] (optional).
// Query i (absolute position i + Tk − T when decoding with a cache) sees key j when j ≤ i,
// i − j < window (a sliding window, when `window` > 0) and, with segments, both carry the same
// id — or, with `shared_prefix`, the key's id is 4g for the query's group g (a preference pair's
// prompt). With `softcap` > 0 each score s = q·k·scale becomes softcap·tanh(s/softcap) before
// the softmax (lse is of the capped scores), and the backward multiplies dS by 1 − tanh²(s/cap).
// Key (and, for dk/dv, query) loops cover the window only.
// Forward: one thread per (b, i, head) query row, an online softmax over the keys (running max,
// running sum, rescaled accumulator in registers; D ≤ 256), so no T×T matrix exists.
// Backward (FlashAttention-2's algebra, recomputing P from lse): `attn_delta` forms δ = dO·O per
// query row; `attn_bwd_dq` — one thread per query row — dq = scale·Σ_j P(dP − δ)·k_j;
// `attn_bwd_dkv` — one thread per
// (b, j, kv head) key row — sums over the queries and the heads sharing that kv head:
// dk = scale·Σ P(dP − δ)·q, dv = Σ P·dO. Each output element has exactly one writer.
// The straightforward schedule (correctness first); the tiled variant joins beside it.

struct Params {
    b: u32,
    t: u32,
    tk: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    has_seg: u32,
    shared_prefix: u32,
    scale: f32,
    // Sliding window in keys; 0: none.
    window: u32,
    // Logit soft-cap; 0: none.
    softcap: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> seg: array<i32>;

fn visible(b: u32, i: u32, j: u32) -> bool {
    if (j > i) { return false; }
    if (p.window > 0u && i - j >= p.window) { return false; }
    if (p.has_seg == 0u) { return true; }
    let si = seg[b * p.t + i];
    let sj = seg[b * p.t + j];
    if (si == sj) { return true; }
    return p.shared_prefix != 0u && si >= 0 && sj >= 0 && sj % 4 == 0 && sj / 4 == si / 4;
}

// The first key query i (absolute position) sees: the window's start.
fn first_key(i: u32) -> u32 {
    if (p.window > 0u && i >= p.window) { return i - p.window + 1u; }
    return 0u;
}

// One past the last query that sees key j: the window's end.
fn end_query(j: u32) -> u32 {
    if (p.window > 0u && j + p.window < p.t) { return j + p.window; }
    return p.t;
}

// tanh without the builtin, whose precision WGSL leaves to sinh/cosh (an implementation may
// form (e^2x − 1)/(e^2x + 1), which overflows and cancels): (1 − e^−2|x|)/(1 + e^−2|x|), and
// the odd series below |x| = 1/8, where 1 − e^−2|x| would cancel.
fn tanh_of(x: f32) -> f32 {
    let a = abs(x);
    var t: f32;
    if (a < 0.125) {
        let a2 = a * a;
        t = a * (1.0 - a2 * (1.0 / 3.0 - a2 * (2.0 / 15.0 - a2 * (17.0 / 315.0))));
    } else {
        let e = exp(-2.0 * a);
        t = (1.0 - e) / (1.0 + e);
    }
    return select(t, -t, x < 0.0);
}

// A scaled score, soft-capped.
fn capped(s: f32) -> f32 {
    if (p.softcap > 0.0) { return p.softcap * tanh_of(s / p.softcap); }
    return s;
}

// d(capped)/d(score) at the scaled score s: 1 − tanh²(s/cap).
fn cap_grad(s: f32) -> f32 {
    if (p.softcap > 0.0) {
        let th = tanh_of(s / p.softcap);
        return 1.0 - th * th;
    }
    return 1.0;
}

fn qrow(b: u32, i: u32, h: u32) -> u32 {
    return ((b * p.t + i) * p.hq + h) * p.d;
}

fn krow(b: u32, j: u32, g: u32) -> u32 {
    return ((b * p.tk + j) * p.hkv + g) * p.d;
}

fn score(qb: u32, kb: u32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < p.d; c++) { s = fma(q[qb + c], k[kb + c], s); }
    return capped(s * p.scale);
}

@group(0) @binding(5) var<storage, read_write> f_o: array<f32>;
@group(0) @binding(6) var<storage, read_write> f_lse: array<f32>;

@compute @workgroup_size(64)
fn attn_fwd(@builtin(global_invocation_id) gi: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gi.x + gi.y * nw.x * 64u;
    if (r >= p.b * p.t * p.hq) { return; }
    let h = r % p.hq;
    let bi = r / p.hq;
    let b = bi / p.t;
    let iq = bi % p.t;
    let i = iq + p.tk - p.t;
    let g = h / (p.hq / p.hkv);
    let qb = qrow(b, iq, h);
    var acc: array<f32, 256>;
    for (var c = 0u; c < p.d; c++) { acc[c] = 0.0; }
    var m = -3.0e38;
    var sum = 0.0;
    for (var j = first_key(i); j <= i; j++) {
        // Segments only exist in training (T = Tk), where i is also the row index of seg.
        if (!visible(b, i, j)) { continue; }
        let kb = krow(b, j, g);
        let s = score(qb, kb);
        let mn = max(m, s);
        let corr = exp(m - mn);
        let e = exp(s - mn);
        sum = sum * corr + e;
        for (var c = 0u; c < p.d; c++) { acc[c] = acc[c] * corr + e * v[kb + c]; }
        m = mn;
    }
    for (var c = 0u; c < p.d; c++) { f_o[qb + c] = acc[c] / sum; }
    f_lse[r] = m + log(sum);
}

@group(0) @binding(1) var<storage, read> d_o: array<f32>;
@group(0) @binding(2) var<storage, read> d_do: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_delta: array<f32>;

@compute @workgroup_size(64)
fn attn_delta(@builtin(global_invocation_id) gi: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gi.x + gi.y * nw.x * 64u;
    if (r >= p.b * p.t * p.hq) { return; }
    var delta = 0.0;
    for (var c = 0u; c < p.d; c++) { delta = fma(d_do[r * p.d + c], d_o[r * p.d + c], delta); }
    d_delta[r] = delta;
}

@group(0) @binding(5) var<storage, read> b_lse: array<f32>;
@group(0) @binding(6) var<storage, read> b_do: array<f32>;
@group(0) @binding(7) var<storage, read> b_delta: array<f32>;
@group(0) @binding(8) var<storage, read_write> b_dq: array<f32>;

@compute @workgroup_size(64)
fn attn_bwd_dq(@builtin(global_invocation_id) gi: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gi.x + gi.y * nw.x * 64u;
    if (r >= p.b * p.t * p.hq) { return; }
    let h = r % p.hq;
    let bi = r / p.hq;
    let b = bi / p.t;
    let i = bi % p.t;
    let g = h / (p.hq / p.hkv);
    let qb = qrow(b, i, h);
    let delta = b_delta[r];
    var acc: array<f32, 256>;
    for (var c = 0u; c < p.d; c++) { acc[c] = 0.0; }
    let lse = b_lse[r];
    for (var j = first_key(i); j <= i; j++) {
        if (!visible(b, i, j)) { continue; }
        let kb = krow(b, j, g);
        // The score and dP in one pass over the row (see attn_bwd_dkv on lavapipe's loop limit).
        var sc = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < p.d; c++) {
            sc = fma(q[qb + c], k[kb + c], sc);
            dp = fma(b_do[qb + c], v[kb + c], dp);
        }
        let pr = exp(capped(sc * p.scale) - lse);
        let ds = pr * (dp - delta) * cap_grad(sc * p.scale) * p.scale;
        for (var c = 0u; c < p.d; c++) { acc[c] = fma(ds, k[kb + c], acc[c]); }
    }
    for (var c = 0u; c < p.d; c++) { b_dq[qb + c] = acc[c]; }
}

// dk and dv share one output buffer: dk in the first half, dv in the second (8 storage
// bindings, WebGPU's default limit).
@group(0) @binding(5) var<storage, read> c_lse: array<f32>;
@group(0) @binding(6) var<storage, read> c_do: array<f32>;
@group(0) @binding(7) var<storage, read> c_delta: array<f32>;
@group(0) @binding(8) var<storage, read_write> c_dkv: array<f32>;

@compute @workgroup_size(64)
fn attn_bwd_dkv(@builtin(global_invocation_id) gi: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = gi.x + gi.y * nw.x * 64u;
    if (r >= p.b * p.t * p.hkv) { return; }
    let g = r % p.hkv;
    let bj = r / p.hkv;
    let b = bj / p.t;
    let j = bj % p.t;
    let kb = krow(b, j, g);
    let group = p.hq / p.hkv;
    let half = p.b * p.tk * p.hkv * p.d;
    var dk: array<f32, 256>;
    var dv: array<f32, 256>;
    for (var c = 0u; c < p.d; c++) {
        dk[c] = 0.0;
        dv[c] = 0.0;
    }
    for (var hh = 0u; hh < group; hh++) {
        let h = g * group + hh;
        for (var i = j; i < end_query(j); i++) {
            if (!visible(b, i, j)) { continue; }
            let qb = qrow(b, i, h);
            let qi = (b * p.t + i) * p.hq + h;
            // The score and dP in one pass over the row: fewer loop iterations per invocation.
            // (lavapipe's llvmpipe gives each loop statement of an invocation 65 535 iterations
            // in all, counted across re-entries, and silently stops it there — measured: a loop
            // of 100 000 runs 65 535 times, 300 × 300 nested runs 65 101. A key of a long shared
            // prompt in a GQA group passed that with three passes of d = 128. GPUs have no cap.)
            var sc = 0.0;
            var dp = 0.0;
            for (var c = 0u; c < p.d; c++) {
                sc = fma(q[qb + c], k[kb + c], sc);
                dp = fma(c_do[qb + c], v[kb + c], dp);
            }
            let pr = exp(capped(sc * p.scale) - c_lse[qi]);
            let ds = pr * (dp - c_delta[qi]) * cap_grad(sc * p.scale) * p.scale;
            for (var c = 0u; c < p.d; c++) {
                dk[c] = fma(ds, q[qb + c], dk[c]);
                dv[c] = fma(pr, c_do[qb + c], dv[c]);
            }
        }
    }
    for (var c = 0u; c < p.d; c++) {
        c_dkv[kb + c] = dk[c];
        c_dkv[half + kb + c] = dv[c];
    }
}
