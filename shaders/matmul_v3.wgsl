// matmul_v3.wgsl — the v3_register_blocked GEMM body, appended to matmul.wgsl (f32 weights) and to
// matmul_q.wgsl (block-quantized weights, decoded as they are staged): each includer declares
// `p` (the GEMM Params), `a`, `c` and `fn load_b(i: u32) -> f32`.
// ---- v3_register_blocked: a 16×16 workgroup computes a 64×64 tile of C, each thread a 4×4
// block held in registers; A (64×16) and B (16×64) tiles are staged through workgroup memory,
// four elements per thread per k-step, so each value loaded from workgroup memory feeds four
// FMAs instead of one.

var<workgroup> sa: array<f32, 1024>;
var<workgroup> sb: array<f32, 1024>;

@compute @workgroup_size(16, 16)
fn gemm_v3(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            let r = idx / 16u;
            let kk = idx % 16u;
            var av = 0.0;
            if (row0 + r < p.m && k0 + kk < p.k) { av = a[p.a_off + (row0 + r) * p.rs_a + (k0 + kk) * p.cs_a]; }
            sa[r * 16u + kk] = av;
            let kb = idx / 64u;
            let c = idx % 64u;
            var bv = 0.0;
            if (k0 + kb < p.k && col0 + c < p.n) { bv = load_b((k0 + kb) * p.rs_b + (col0 + c) * p.cs_b); }
            sb[kb * 64u + c] = bv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            var ar: array<f32, 4>;
            var br: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                ar[i] = sa[(lid.y * 4u + i) * 16u + kk];
                br[i] = sb[kk * 64u + lid.x * 4u + i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] = fma(ar[i], br[j], acc[i * 4u + j]); }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (row < p.m && col < p.n) {
                let o = p.c_off + row * p.ldc + col;
                var v = p.alpha * acc[i * 4u + j];
                if (p.accumulate != 0u) { v += c[o]; }
                c[o] = v;
            }
        }
    }
}

