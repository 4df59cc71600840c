//! Learning-rate schedules with linear warmup, as transformers' `get_*_schedule_with_warmup`.

use super::config::Scheduler;

/// The learning rate for optimizer step `step` (1-based) of `total`.
pub fn lr_at(kind: Scheduler, peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    // transformers evaluates the schedule at the 0-based count of steps already taken.
    let s = step.saturating_sub(1) as f64;
    let (w, t) = (warmup as f64, total.max(1) as f64);
    if s < w {
        return peak * s / w.max(1.0);
    }
    let progress = if t > w { ((s - w) / (t - w)).clamp(0.0, 1.0) } else { 1.0 };
    match kind {
        Scheduler::Constant => peak,
        Scheduler::Linear => peak * (1.0 - progress).max(0.0),
        Scheduler::Cosine => peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_match_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=10): 0, .5, 1, 7/8, ..., 1/8.
        let lin: Vec<f64> = (1..=10).map(|s| lr_at(Scheduler::Linear, 1.0, s, 2, 10)).collect();
        let want = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (a, b) in lin.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lin:?}");
        }
        // Cosine: peak after warmup, half way at the midpoint of the decay.
        assert!((lr_at(Scheduler::Cosine, 2.0, 3, 2, 10) - 2.0).abs() < 1e-12);
        assert!((lr_at(Scheduler::Cosine, 2.0, 7, 2, 10) - 1.0).abs() < 1e-12);
        assert_eq!(lr_at(Scheduler::Constant, 3.0, 9, 0, 10), 3.0);
    }
}
