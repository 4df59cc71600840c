//! Gated linear units, the MLP activation: `silu(g) · u` (SwiGLU) and `gelu_tanh(g) · u` (GeGLU).

use crate::{Result, Tape, Tensor, Var};

type Fwd = fn(&dyn crate::Backend, &Tensor, &Tensor) -> Result<Tensor>;
type Bwd = fn(&dyn crate::Backend, &Tensor, &Tensor, &Tensor) -> Result<(Tensor, Tensor)>;

fn glu(tape: &Tape, g: &Var, u: &Var, fwd: Fwd, bwd: Bwd) -> Result<Var> {
    let y = fwd(g.value().backend(), g.value(), u.value())?;
    let (gv, uv) = (g.value().clone(), u.value().clone());
    let (ig, iu, rg, ru) = (g.id(), u.id(), g.requires_grad(), u.requires_grad());
    Ok(tape.record(&[g, u], y, move |dy| {
        let (dg, du) = bwd(gv.backend(), &gv, &uv, dy)?;
        let mut out = Vec::new();
        if rg {
            out.push((ig, dg));
        }
        if ru {
            out.push((iu, du));
        }
        Ok(out)
    }))
}

/// `silu(g) · u` (the Llama MLP gate).
pub fn swiglu(tape: &Tape, g: &Var, u: &Var) -> Result<Var> {
    glu(tape, g, u, |be, g, u| be.swiglu_fwd(g, u), |be, g, u, dy| be.swiglu_bwd(g, u, dy))
}

/// `gelu_tanh(g) · u` (the Gemma MLP gate; PyTorch's tanh-approximate GELU).
pub fn geglu(tape: &Tape, g: &Var, u: &Var) -> Result<Var> {
    glu(tape, g, u, |be, g, u| be.geglu_fwd(g, u), |be, g, u, dy| be.geglu_bwd(g, u, dy))
}
