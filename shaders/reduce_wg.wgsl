// reduce_wg.wgsl — sum and max across a 64-thread workgroup through workgroup memory (a tree of
// six barrier steps), for adapters without subgroup operations. reduce_sg.wgsl has the same
// API with subgroup operations; a kernel file that reduces rows (norm.wgsl, loss.wgsl) is
// assembled with one or the other, and its entry points take the `Ids` struct defined here, so
// the kernel text is the same either way.
// Call from uniform control flow (every thread of the workgroup).

struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nw: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
}

var<workgroup> red: array<f32, 64>;

fn wg_sum(id: Ids, v: f32) -> f32 {
    red[id.li] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (id.li < s) { red[id.li] += red[id.li + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

fn wg_max(id: Ids, v: f32) -> f32 {
    red[id.li] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (id.li < s) { red[id.li] = max(red[id.li], red[id.li + s]); }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}
