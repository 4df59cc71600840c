// reduce_sg.wgsl — reduce_wg.wgsl's API with subgroup operations, for adapters that have them
// (wgpu's SUBGROUP feature; naga takes no `enable subgroups;`): each subgroup reduces without
// barriers (subgroupAdd/subgroupMax), then its first lane leaves one partial per subgroup in
// workgroup memory, added in subgroup order (the same order on every run): two barriers
// instead of six.

struct Ids {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nw: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) nsg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
}

var<workgroup> red: array<f32, 64>;

fn wg_sum(id: Ids, v: f32) -> f32 {
    let s = subgroupAdd(v);
    if (id.lane == 0u) { red[id.sg] = s; }
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < id.nsg; i++) { total += red[i]; }
    workgroupBarrier();
    return total;
}

fn wg_max(id: Ids, v: f32) -> f32 {
    let s = subgroupMax(v);
    if (id.lane == 0u) { red[id.sg] = s; }
    workgroupBarrier();
    var total = -3.0e38;
    for (var i = 0u; i < id.nsg; i++) { total = max(total, red[i]); }
    workgroupBarrier();
    return total;
}
