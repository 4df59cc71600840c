//! Checks shared by the real-model tests (SmolLM2, Gemma 3) against transformers' numbers.
#![allow(dead_code)] // not every test binary that includes this module uses every check

/// Relative difference of the mean loss, or why it is out of `rel`.
pub fn check_mean_loss(got: f64, want: f64, rel: f64) -> Result<f64, String> {
    let d = ((got - want) / want).abs();
    if got.is_finite() && d <= rel {
        Ok(d)
    } else {
        Err(format!("mean loss {got} vs transformers {want}: relative {d:.1e} > {rel:.0e}"))
    }
}

/// The largest difference of per-position losses, or the first position out of `tol`.
pub fn check_token_losses(got: &[f64], want: &[f64], tol: f64) -> Result<f64, String> {
    if got.len() != want.len() || want.is_empty() {
        return Err(format!("{} positions vs transformers' {}", got.len(), want.len()));
    }
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        if !(d.is_finite() && d <= tol) {
            return Err(format!("loss at position {i}: {g} vs transformers {w} (off by {d:.1e} > {tol:.0e})"));
        }
        worst = worst.max(d);
    }
    Ok(worst)
}
