// quant_absmax.wgsl — the largest |x| of a flat f32 array, as its bit pattern, into out[slot]
// (atomicMax on the bits: for non-negative floats the u32 order is the float order, and a NaN's
// bits sort above every number's, so a NaN anywhere shows as NaN). Feeds the operand scaling of
// the f16 GEMM (matmul_v3h.wgsl); `out` must start at zero.
// A workgroup of 256 strides over the array, reduces in workgroup memory and does one atomic.

struct Params {
    n: u32,
    slot: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<atomic<u32>>;

var<workgroup> red: array<u32, 256>;

@compute @workgroup_size(256)
fn absmax(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>,
          @builtin(num_workgroups) nw: vec3<u32>) {
    let stride = nw.x * nw.y * 256u;
    var m = 0u;
    for (var i = (wid.x + wid.y * nw.x) * 256u + li; i < p.n; i += stride) {
        m = max(m, bitcast<u32>(x[i]) & 0x7fffffffu);
    }
    red[li] = m;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) { red[li] = max(red[li], red[li + s]); }
        workgroupBarrier();
    }
    if (li == 0u) { atomicMax(&out[p.slot], red[0]); }
}
