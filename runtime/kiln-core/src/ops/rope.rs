//! Rotary position embedding and its frequency tables (default, llama3 and YaRN scaling).

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

/// `rope_scaling` of type "yarn" (Qwen2.5 long context, many GGUFs): frequencies whose
/// wavelength spans the original context are interpolated (divided by `factor`), fast ones kept
/// (extrapolated), with a linear ramp between the dimensions `beta_fast` and `beta_slow`
/// rotations fit in; cos and sin are multiplied by `attention_factor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: f64,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// Multiplies cos and sin, so the attention logits by its square.
    pub attention_factor: f64,
    /// Rounds the ramp's ends to whole dimensions (transformers' and llama.cpp's default).
    pub truncate: bool,
}

/// `0.1 · mscale · ln(scale) + 1` (YaRN paper, eq. 21), 1 for `scale ≤ 1`.
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

/// YaRN inverse frequencies, as transformers' `_compute_yarn_parameters` computes them: the
/// frequency table in f32, the correction range in f64, the ramp and the blend in f32.
pub fn yarn_inv_freq(head_dim: usize, theta: f64, y: &Yarn) -> Result<Tensor> {
    let (half, dim) = (head_dim / 2, head_dim as f64);
    // The dimension at which `rot` rotations fit in the original context.
    let corr = |rot: f64| {
        dim * (y.original_max_position_embeddings / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (corr(y.beta_fast), corr(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min(dim - 1.0));
    if low == high {
        high += 0.001; // as transformers, against a zero-width ramp
    }
    let factor = y.factor as f32;
    let f = (0..half)
        .map(|i| {
            let pos_freq = theta.powf((2 * i) as f64 / dim) as f32;
            let extra = 1.0 / pos_freq;
            let inter = 1.0 / (factor * pos_freq);
            let ramp = ((i as f32 - low as f32) / (high - low) as f32).clamp(0.0, 1.0);
            let keep = 1.0 - ramp;
            inter * (1.0 - keep) + extra * keep
        })
        .collect::<Vec<f32>>();
    Tensor::from_vec(f, [half])
}

/// Rotates `x` `[B,T,H,D]` by positions `pos` (`I32` `[B,T]`), the rotated dims multiplied by
/// `mscale` (1 without YaRN/LongRoPE attention scaling).
pub fn rope(tape: &Tape, x: &Var, pos: &Tensor, inv_freq: &Tensor, mscale: f32) -> Result<Var> {
    let y = x.value().backend().rope(x.value(), pos, inv_freq, mscale, false)?;
    let (ix, pos, f) = (x.id(), pos.clone(), inv_freq.clone());
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, g.backend().rope(g, &pos, &f, mscale, true)?)])))
}
