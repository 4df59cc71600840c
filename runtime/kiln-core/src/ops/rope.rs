//! Rotary position embedding and its frequency table (default and llama3 scaling).

use crate::{Result, Tape, Tensor, Var};

/// `rope_scaling` of type "llama3" (Llama 3.1+): long wavelengths are slowed by `factor`,
/// short ones kept, and the band between blended smoothly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: f64,
}

/// Inverse frequencies `θ^(−2i/D)` for `i < D/2`, with llama3 scaling applied when given, as
/// transformers' `_compute_llama3_parameters` does (computed in f64, stored f32).
pub fn inv_freq(head_dim: usize, theta: f64, scaling: Option<RopeScaling>) -> Result<Tensor> {
    let half = head_dim / 2;
    let mut f: Vec<f64> = (0..half)
        .map(|i| {
            // transformers builds the exponent in int64 then float: 1/θ^(2i/D) rounded to f32.
            1.0 / theta.powf((2 * i) as f64 / head_dim as f64)
        })
        .map(|x| x as f32 as f64)
        .collect();
    if let Some(s) = scaling {
        let low_wl = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wl = s.original_max_position_embeddings / s.high_freq_factor;
        for x in f.iter_mut() {
            let wl = 2.0 * std::f64::consts::PI / *x;
            *x = if wl < high_wl {
                *x
            } else if wl > low_wl {
                *x / s.factor
            } else {
                let smooth = (s.original_max_position_embeddings / wl - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * *x / s.factor + smooth * *x
            };
        }
    }
    Tensor::from_vec(f.into_iter().map(|x| x as f32).collect::<Vec<_>>(), [half])
}

/// Rotates `x` `[B,T,H,D]` by positions `pos` (`I32` `[B,T]`).
pub fn rope(tape: &Tape, x: &Var, pos: &Tensor, inv_freq: &Tensor) -> Result<Var> {
    let y = x.value().backend().rope(x.value(), pos, inv_freq, false)?;
    let (ix, pos, f) = (x.id(), pos.clone(), inv_freq.clone());
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, g.backend().rope(g, &pos, &f, true)?)])))
}
