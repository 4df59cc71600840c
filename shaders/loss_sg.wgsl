// loss_sg.wgsl — the cross-entropy forward of loss.wgsl with subgroup reductions, compiled only
// where the adapter has subgroup operations (wgpu's SUBGROUP feature; no `enable` directive,
// which naga does not take). Same Params, bindings and results as `ce_fwd`.
//
// Each row's max and Σ exp(x − max) are first reduced within each subgroup (subgroupMax /
// subgroupAdd, no barriers), then across the workgroup's subgroups through one slot each in
// workgroup memory: two barriers per reduction instead of log2(64) = 6.

struct Params {
    m: u32,
    v: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> f_x: array<f32>;
@group(0) @binding(2) var<storage, read> f_t: array<i32>;
@group(0) @binding(3) var<storage, read_write> f_lse: array<f32>;
@group(0) @binding(4) var<storage, read_write> f_nll: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn ce_fwd_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nw: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let r = wid.x + wid.y * nw.x;
    let live = r < p.m;
    let base = r * p.v;
    var mx = -3.0e38;
    if (live) {
        for (var i = li; i < p.v; i += 64u) { mx = max(mx, f_x[base + i]); }
    }
    let smax = subgroupMax(mx);
    if (lane == 0u) { part[sg] = smax; }
    workgroupBarrier();
    var rmax = -3.0e38;
    for (var s = 0u; s < nsg; s++) { rmax = max(rmax, part[s]); }
    workgroupBarrier();
    var acc = 0.0;
    if (live) {
        for (var i = li; i < p.v; i += 64u) { acc += exp(f_x[base + i] - rmax); }
    }
    let ssum = subgroupAdd(acc);
    if (lane == 0u) { part[sg] = ssum; }
    workgroupBarrier();
    if (live && li == 0u) {
        var total = 0.0;
        for (var s = 0u; s < nsg; s++) { total += part[s]; }
        let lse = rmax + log(total);
        f_lse[r] = lse;
        let t = f_t[r];
        if (t >= 0) { f_nll[r] = lse - f_x[base + u32(t)]; } else { f_nll[r] = 0.0; }
    }
}
