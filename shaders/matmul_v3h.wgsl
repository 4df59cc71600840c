// matmul_v3h.wgsl — v3h_f16: the v3 register-blocked GEMM in f16 arithmetic with f32 accumulation,
// for adapters with SHADER_F16 (`enable f16;` heads the assembled module). Appended to matmul.wgsl
// (f32 B) and to matmul_q.wgsl (packed B: f16/bf16/quantized weights decoded while staged), like
// matmul_v3.wgsl; each includer declares `p`, `a`, `c` and `fn load_b(i: u32) -> f32`.
//
// Tiles: a 16×16 workgroup computes a 64×64 tile of C, each thread a 4×4 block. A (64×16) and B
// (16×64) are staged as vec4<f16> runs along k (B transposed), so one `dot` of two vec4<f16> is
// four f16 multiply-adds (packed, twice the f32 rate on most GPUs) and is added to an f32
// accumulator: the rounding of a 4-term f16 dot, never of a long f16 sum.
//
// f16 has 5 exponent bits: activations' gradients (1e-7 and smaller) would flush to zero and large
// products overflow. So each f32 operand is scaled by a power of two (exact) chosen from its
// absolute maximum (`quant_absmax.wgsl`, launched just before into `amax`): the largest |value| lands
// in [2^5, 2^6), so a product is below 2^12 and a 4-term dot below 2^14 < 65504; the output is
// multiplied back. Packed weights (B of matmul_q, `p.ty != 0`) are not scaled (they are small and
// f16 weights are exact as they are); A then targets 2^4, leaving |w| up to 2^10 headroom.
// amax[0] and amax[1] hold the bits of |A|max and |B|max (0: not measured, scale 1). A NaN or
// infinite maximum keeps scale 1, so the NaN or inf reaches the output.

@group(0) @binding(4) var<storage, read_write> amax: array<atomic<u32>>;

var<workgroup> sah: array<vec4<f16>, 256>;
var<workgroup> sbh: array<vec4<f16>, 256>;

// The power-of-two exponent s with max·2^s in [2^(goal-1), 2^goal) (0 when the maximum is 0,
// subnormal-free tiny, NaN or infinite).
fn pow2_exp(bits: u32, goal: i32) -> i32 {
    let e = i32((bits >> 23u) & 0xffu);
    if (bits == 0u || e == 255) { return 0; }
    // max < 2^(e - 126) (e is the biased exponent; subnormals have e = 0 and max < 2^-126).
    return clamp(goal - (e - 126), -120, 120);
}

fn pow2(s: i32) -> f32 {
    return bitcast<f32>(u32(127 + s) << 23u);
}

@compute @workgroup_size(16, 16)
fn gemm_v3h(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tid = lid.y * 16u + lid.x;
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let packed = p.ty != 0u;
    let ea = pow2_exp(atomicLoad(&amax[0]), select(6, 4, packed));
    let eb = select(pow2_exp(atomicLoad(&amax[1]), 6), 0, packed);
    let sa_ = pow2(ea);
    let sb_ = pow2(eb);
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
    // This thread stages row/column tid / 4, k run (tid % 4)·4 .. +4 of each tile.
    let rc = tid / 4u;
    let q = tid % 4u;
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        var av = vec4<f32>(0.0);
        var bv = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let kk = k0 + q * 4u + e;
            if (kk < p.k) {
                if (row0 + rc < p.m) { av[e] = a[p.a_off + (row0 + rc) * p.rs_a + kk * p.cs_a]; }
                if (col0 + rc < p.n) { bv[e] = load_b(kk * p.rs_b + (col0 + rc) * p.cs_b); }
            }
        }
        sah[rc * 4u + q] = vec4<f16>(av * sa_);
        sbh[rc * 4u + q] = vec4<f16>(bv * sb_);
        workgroupBarrier();
        for (var qq = 0u; qq < 4u; qq++) {
            var ar: array<vec4<f16>, 4>;
            var br: array<vec4<f16>, 4>;
            for (var i = 0u; i < 4u; i++) {
                ar[i] = sah[(lid.y * 4u + i) * 4u + qq];
                br[i] = sbh[(lid.x * 4u + i) * 4u + qq];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) { acc[i * 4u + j] += f32(dot(ar[i], br[j])); }
            }
        }
        workgroupBarrier();
    }
    // α·acc / (2^ea · 2^eb), each factor a power of two within f32's range.
    let unscale = pow2(-ea) * p.alpha;
    let unscale_b = pow2(-eb);
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (row < p.m && col < p.n) {
                let o = p.c_off + row * p.ldc + col;
                var v = acc[i * 4u + j] * unscale_b * unscale;
                if (p.accumulate != 0u) { v += c[o]; }
                c[o] = v;
            }
        }
    }
}
