//! LoRA on fused projections (Phi-3's `self_attn.qkv_proj` and `mlp.gate_up_proj`), as PEFT
//! makes it: one adapter per fused matrix, A `[r, in]` shared by its parts and B
//! `[Σ out, r]` whose row blocks serve the parts. In kiln the parts stay separate linears, so
//! the adapters of q, k and v (gate and up) hold the same A variable and their own block of B;
//! the first part's A is the one trained and saved.

use super::Target;

/// The fused matrices: module name, PEFT's short name, and the parts in row order.
pub const GROUPS: [(&str, &str, &[Target]); 2] = [
    ("self_attn.qkv_proj", "qkv_proj", &[Target::Q, Target::K, Target::V]),
    ("mlp.gate_up_proj", "gate_up_proj", &[Target::Gate, Target::Up]),
];

/// The fused group `t` belongs to, if any.
pub fn group_of(t: Target) -> Option<&'static (&'static str, &'static str, &'static [Target])> {
    GROUPS.iter().find(|g| g.2.contains(&t))
}

/// Whether `t` is a later part of its group (its A is the first part's).
pub fn shares_a(t: Target) -> bool {
    group_of(t).is_some_and(|g| g.2[0] != t)
}

/// The targets of a fused model must cover each fused matrix whole (PEFT adapts a module, not
/// some of its rows).
pub fn check_targets(targets: &[Target]) -> Result<(), String> {
    for (module, short, parts) in GROUPS {
        let n = parts.iter().filter(|p| targets.contains(p)).count();
        if n != 0 && n != parts.len() {
            let names: Vec<&str> = parts.iter().map(|p| p.module().rsplit('.').next().unwrap_or("")).collect();
            return Err(format!(
                "this model fuses {} into one matrix, {module}: target {short} (the whole matrix), not a part of it",
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// PEFT's `target_modules` names for `targets` on a fused model.
pub fn peft_modules(targets: &[Target]) -> Vec<&'static str> {
    let mut out = Vec::new();
    for &t in targets {
        let name = match group_of(t) {
            Some(g) => g.1,
            None => t.module().rsplit('.').next().unwrap_or(""),
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
