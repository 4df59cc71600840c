// matmul.wgsl — tiled GEMM with strided operands (kernels/matmul.cu, variant v2_smem_tiled).
//
// Computes C[m, n] = α·Σ_k A(i, k)·B(k, j) (+ C when `accumulate`), where A(i, k) = a[i·rs_a +
// k·cs_a] and B(k, j) = b[k·rs_b + j·cs_b]: strides express every transpose the linear layers
// need (x·Wᵀ, dy·W, dyᵀ·x) without copies.
// Variants (`kiln_wgpu::GemmVariant`; `KILN_WGPU_GEMM=v2|v3`, default v3): `gemm`
// (v2_smem_tiled) — a 16×16 workgroup computes a 16×16 tile of C, one element per thread,
// staging 16×16 tiles of A and B through workgroup memory along k; `gemm_v3` (v3_register_blocked, matmul_v3.wgsl appended at the end of
// this file) — 64×64 tiles, 4×4 outputs per thread. Plain f32 FMA in both.
// `add_bias` adds a [n] vector to every row; `col_sum` sums the rows of [m, n] into [n].

// (Params: matmul_params.wgsl, assembled before this file.)

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

fn load_b(i: u32) -> f32 {
    return b[p.b_off + i];
}

var<workgroup> ta: array<f32, 256>;
var<workgroup> tb: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = wid.y * 16u + lid.y;
    let col = wid.x * 16u + lid.x;
    var acc = 0.0;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        let ka = k0 + lid.x;
        var av = 0.0;
        if (row < p.m && ka < p.k) { av = a[p.a_off + row * p.rs_a + ka * p.cs_a]; }
        ta[lid.y * 16u + lid.x] = av;
        let kb = k0 + lid.y;
        var bv = 0.0;
        if (kb < p.k && col < p.n) { bv = load_b(kb * p.rs_b + col * p.cs_b); }
        tb[lid.y * 16u + lid.x] = bv;
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            acc = fma(ta[lid.y * 16u + kk], tb[kk * 16u + lid.x], acc);
        }
        workgroupBarrier();
    }
    if (row < p.m && col < p.n) {
        let o = p.c_off + row * p.ldc + col;
        var out = p.alpha * acc;
        if (p.accumulate != 0u) { out += c[o]; }
        c[o] = out;
    }
}

@group(0) @binding(1) var<storage, read> bias_v: array<f32>;
@group(0) @binding(2) var<storage, read_write> bias_y: array<f32>;

@compute @workgroup_size(64)
fn add_bias(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let k = g.x + g.y * nw.x * 64u;
    if (k >= p.m * p.n) { return; }
    bias_y[k] += bias_v[k % p.n];
}

@group(0) @binding(1) var<storage, read> cs_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> cs_y: array<f32>;

@compute @workgroup_size(64)
fn col_sum(@builtin(global_invocation_id) g: vec3<u32>) {
    let j = g.x;
    if (j >= p.n) { return; }
    var acc = 0.0;
    for (var i = 0u; i < p.m; i++) { acc += cs_x[i * p.n + j]; }
    // (A launch after the first of one split by rows adds to the sums so far.)
    if (p.accumulate != 0u) { acc += cs_y[j]; }
    cs_y[j] = acc;
}

// (matmul_v3.wgsl is appended here.)
