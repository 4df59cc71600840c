//! The recorded baseline of the roofline model: `tools/prof-baseline.sh` on H100 (one JSON object
//! per launch and per op, bench/prof/h100.jsonl), and the mapping from `kiln bench kernels` rows
//! to its cases. A change to the model or the card table changes [`super::model::MODEL_VERSION`],
//! and the test below then fails until the baseline is re-stated.

/// bench/prof/h100.jsonl.
pub const H100: &str = include_str!("../../../../bench/prof/h100.jsonl");

/// The baseline's case name, the profiler's op, its shape and the weight dtype of a bench row,
/// where the row has one.
pub fn case_of(r: &crate::bench::Row) -> Option<(String, &'static str, String, String)> {
    let w = r.dtype.split("W ").nth(1)?.split(',').next()?.trim().to_string();
    let v = r.variant.split('_').next()?.to_string();
    if r.op.starts_with("gemm") {
        Some((format!("gemm {v} {w}"), "gemm", r.shape.clone(), w))
    } else if r.op.starts_with("qgemm") {
        Some((format!("qgemm {v} {w}"), "qgemm", r.shape.clone(), w))
    } else if let Some(rest) = r.op.strip_prefix("lora r") {
        let rank = rest.split(':').next()?;
        let (name, op) = if rest.contains("fwd+bwd") { ("fwd+bwd", "lora_bwd") } else { ("fwd", "lora") };
        Some((format!("lora {v} r{rank} {name}"), op, format!("{}x{rank}", r.shape), "bf16".into()))
    } else if r.op.starts_with("gemv") {
        Some((format!("gemv {w}"), "gemv", r.shape.strip_prefix("1x")?.to_string(), w))
    } else {
        None
    }
}

/// The op summaries of the baseline (lines without a `kernel`).
fn summaries() -> impl Iterator<Item = serde_json::Value> {
    H100.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.get("kernel").is_none())
}

/// The baseline's modeled seconds for `case` at `shape` on H100.
pub fn modeled_s(case: &str, shape: &str) -> Option<f64> {
    summaries().find_map(|v| (v["case"] == case && v["shape"] == shape).then(|| v["modeled_s"].as_f64())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_is_the_current_model_s_and_covers_every_kernel_family() {
        let all: Vec<serde_json::Value> = summaries().collect();
        for v in &all {
            assert_eq!(
                v["model_version"].as_u64(),
                Some(crate::prof::model::MODEL_VERSION as u64),
                "bench/prof/h100.jsonl was recorded with another model version: re-run tools/prof-baseline.sh"
            );
        }
        for case in [
            "gemm v1 bf16",
            "gemm v2 bf16",
            "gemm v3 bf16",
            "gemm v4 bf16",
            "gemm v5 bf16",
            "gemm v6 bf16",
            "gemm v7 bf16",
            "qgemm v3 Q4_K",
            "qgemm v3 NF4",
            "qgemm v6 Q4_K",
            "qgemm v6 NF4",
            "qgemm v7 Q4_K",
            "qgemm v7 NF4",
            "lora v3 r16 fwd",
            "lora v3 r16 fwd+bwd",
            "lora v6 r16 fwd",
            "lora v6 r16 fwd+bwd",
            "lora v7 r16 fwd",
            "lora v7 r16 fwd+bwd",
            "gemm v7 bf16 act16",
            "qgemm v7 NF4 act16",
            "lora v7 r16 fwd act16",
            "lora v7 r16 fwd+bwd act16",
            "gemv bf16",
            "attention v2 fwd",
            "attention v2 fwd+bwd",
            "attention v3 fwd act16",
            "attention v3 fwd+bwd act16",
            "rms_norm fwd+bwd",
            "cross_entropy fwd+bwd",
            "adamw",
        ] {
            assert!(
                all.iter().any(|v| v["case"] == case && v["modeled_s"].as_f64().is_some_and(|s| s > 3e-6)),
                "{case} missing from the baseline"
            );
        }
    }

    #[test]
    fn bench_rows_find_their_baseline_case() {
        let row = |op: &str, variant: &str, dtype: &str, shape: &str| crate::bench::Row {
            op: op.into(),
            variant: variant.into(),
            dtype: dtype.into(),
            shape: shape.into(),
            median_s: 1.0,
            repeats: 3,
            flops: None,
            bytes: None,
        };
        let cases = [
            row("gemm x·Wᵀ", "v3_mma", "x f32, W bf16", "4096x4096x4096"),
            row("gemm x·Wᵀ", "v5_wgmma", "x f32, W bf16", "4096x4096x4096"),
            row("gemm x·Wᵀ", "v6_mma_multistage", "x f32, W bf16", "4096x4096x4096"),
            row("gemm x·Wᵀ", "v7_tma_wgmma", "x f32, W bf16", "4096x4096x4096"),
            row(
                "lora r16: fused fwd (+3.0 % vs plain)",
                "v7_tma_wgmma + rank-r pre-pass",
                "x f32, W bf16, A/B f32",
                "4096x4096x4096",
            ),
            row(
                "lora r16: fused fwd (+3.0 % vs plain)",
                "v6_mma_multistage + rank-r pre-pass",
                "x f32, W bf16, A/B f32",
                "4096x4096x4096",
            ),
            row(
                "qgemm x·Wᵀ (90 % of the bf16 GEMM's rate)",
                "v6_mma_multistage (decoded to bf16 first)",
                "x f32, W NF4",
                "4096x4096x4096",
            ),
            row(
                "lora r16: fused fwd (+3.0 % vs plain)",
                "v3_mma + rank-r pre-pass",
                "x f32, W bf16, A/B f32",
                "4096x4096x4096",
            ),
            row("qgemm x·Wᵀ (50 % of the bf16 GEMM's rate)", "v3_mma_q (decode)", "x f32, W Q4_K", "4096x4096x4096"),
            row("gemv 1x4096x4096 W bf16 (decode)", "gemv", "x f32, W bf16", "1x4096x4096"),
        ];
        for r in &cases {
            let (case, _, shape, _) = case_of(r).unwrap();
            assert!(modeled_s(&case, &shape).is_some(), "{case} at {shape} ({r:?})");
        }
        assert!(case_of(&row("dequant Q4_K", "16-byte loads", "Q4_K → f32", "1024")).is_none());
    }
}
