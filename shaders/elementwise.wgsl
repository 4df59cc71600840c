// elementwise.wgsl — the elementwise family and small reductions (kernels/elementwise.cu).
//
// Computes: add, mul (same shapes), scale by a constant, a copy, soft-capping cap·tanh(x/cap)
// and its gradient, Σx² as per-workgroup partial sums (the host adds the partials in f64), and
// the f32 → bf16/f16 rounding of casts. (The gated activations, SwiGLU and GeGLU, are
// glu.wgsl's.)
// Layout: flat f32 arrays of `n` elements. One thread per element, 64 per workgroup; the
// workgroups are folded into a 2-D grid (at most 65535 per dimension), so the linear index is
// gid.x + gid.y·(groups.x·64). Each entry point declares its own bindings, numbered in the
// order the launcher passes them (binding 0 is always the uniform `Params`).

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

// ---- a ⊕ b → y
@group(0) @binding(1) var<storage, read> bin_a: array<f32>;
@group(0) @binding(2) var<storage, read> bin_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> bin_y: array<f32>;

@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) { bin_y[i] = bin_a[i] + bin_b[i]; }
}

@compute @workgroup_size(64)
fn mul(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) { bin_y[i] = bin_a[i] * bin_b[i]; }
}

// ---- a → y
@group(0) @binding(1) var<storage, read> un_a: array<f32>;
@group(0) @binding(2) var<storage, read_write> un_y: array<f32>;

@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) { un_y[i] = un_a[i] * p.s; }
}

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) { un_y[i] = un_a[i]; }
}

// ---- soft-capping (Gemma 2's logits), cap = p.s > 0: y = cap·tanh(x/cap) from un_a into
// un_y; the gradient dy·(1 − tanh²(x/cap)) from bin_a (x) and bin_b (dy) into bin_y.
// tanh is written out rather than the built-in, whose precision WGSL leaves to sinh/cosh and
// some implementations overflow for large arguments: sign(z)·(1 − e)/(1 + e) with
// e = exp(−2|z|), and below |z| = 1/4, where 1 − e would cancel, its odd Taylor polynomial to
// z⁹ (the first term left out is below 4e-9 of the value). |z| is clamped at 40: e stays a
// normal f32, and tanh is 1 to f32 precision long before.
fn softcap_tanh(z: f32) -> f32 {
    let a = abs(z);
    if (a < 0.25) {
        let z2 = z * z;
        return z * (1.0 + z2 * (-1.0 / 3.0 + z2 * (2.0 / 15.0 + z2 * (-17.0 / 315.0 + z2 * (62.0 / 2835.0)))));
    }
    let e = exp(-2.0 * min(a, 40.0));
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, z < 0.0);
}

@compute @workgroup_size(64)
fn softcap_fwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) { un_y[i] = p.s * softcap_tanh(un_a[i] / p.s); }
}

// 1 − tanh²z = 4e/(1 + e)²: no cancellation where |x| ≫ cap (1 − t² would keep t's rounding).
@compute @workgroup_size(64)
fn softcap_bwd(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (i < p.n) {
        let e = exp(-2.0 * min(abs(bin_a[i] / p.s), 40.0));
        let q = 1.0 + e;
        bin_y[i] = bin_b[i] * (4.0 * e / (q * q));
    }
}

// ---- Σx²: `p.threads` threads stride over the array; each workgroup writes one partial.
@group(0) @binding(1) var<storage, read> ss_a: array<f32>;
@group(0) @binding(2) var<storage, read_write> ss_part: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn sum_squares(
    @builtin(global_invocation_id) g: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
) {
    var acc = 0.0;
    for (var i = g.x; i < p.n; i += p.threads) {
        let x = ss_a[i];
        acc += x * x;
    }
    red[li] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] += red[li + s]; }
        workgroupBarrier();
    }
    if (li == 0u) { ss_part[wid.x] = red[0]; }
}

// ---- f32 → bf16 (p.threads = 0) or f16 (p.threads = 1), rounded to nearest even, packed two
// values per word (a 16-bit tensor on the device): one thread per pair. Done on the bits, so
// the result does not depend on how an adapter converts floats (NaN stays NaN, overflow → ±inf,
// f16 subnormals rounded like any value).
@group(0) @binding(1) var<storage, read> r16_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> r16_y: array<u32>;

fn bf16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x40u; }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let a = b & 0x7fffffffu;
    if (a > 0x7f800000u) { return sign | 0x7e00u; }
    // 65520 and above round to infinity.
    if (a >= 0x477ff000u) { return sign | 0x7c00u; }
    // Normal f16 (from 2^-14): rebias the exponent (127 → 15), round the 13 dropped bits.
    if (a >= 0x38800000u) {
        let m = a - 0x38000000u;
        return sign | ((m + 0xfffu + ((m >> 13u) & 1u)) >> 13u);
    }
    // Below 2^-25 (and 2^-25 itself, a tie) rounds to zero.
    if (a <= 0x33000000u) { return sign; }
    // Subnormal: the value in units of 2^-24 is mant·2^(e-126), e ≤ 112.
    let e = a >> 23u;
    let mant = (a & 0x7fffffu) | 0x800000u;
    let shift = 126u - e;
    var q = mant >> shift;
    let rem = mant & ((1u << shift) - 1u);
    let half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (q & 1u) == 1u)) { q += 1u; }
    return sign | q;
}

@compute @workgroup_size(64)
fn round16(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = linear(g, nw);
    if (2u * i >= p.n) { return; }
    let lo = r16_x[2u * i];
    var hi = 0.0;
    if (2u * i + 1u < p.n) { hi = r16_x[2u * i + 1u]; }
    if (p.threads == 0u) {
        r16_y[i] = bf16_bits(lo) | (bf16_bits(hi) << 16u);
    } else {
        r16_y[i] = f16_bits(lo) | (f16_bits(hi) << 16u);
    }
}
