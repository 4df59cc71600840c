//! Residual add, SwiGLU and reshape.

use crate::{Result, Shape, Tape, Var};

/// `a + b`.
pub fn add(tape: &Tape, a: &Var, b: &Var) -> Result<Var> {
    let y = a.value().backend().add(a.value(), b.value())?;
    let (ia, ib, ra, rb) = (a.id(), b.id(), a.requires_grad(), b.requires_grad());
    Ok(tape.record(&[a, b], y, move |g| {
        let mut out = Vec::new();
        if ra {
            out.push((ia, g.clone()));
        }
        if rb {
            out.push((ib, g.clone()));
        }
        Ok(out)
    }))
}

/// `silu(g) · u` (the Llama MLP gate).
pub fn swiglu(tape: &Tape, g: &Var, u: &Var) -> Result<Var> {
    let y = g.value().backend().swiglu_fwd(g.value(), u.value())?;
    let (gv, uv) = (g.value().clone(), u.value().clone());
    let (ig, iu, rg, ru) = (g.id(), u.id(), g.requires_grad(), u.requires_grad());
    Ok(tape.record(&[g, u], y, move |dy| {
        let (dg, du) = gv.backend().swiglu_bwd(&gv, &uv, dy)?;
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

/// Same elements, new shape; the gradient is reshaped back.
pub fn reshape(tape: &Tape, x: &Var, shape: impl Into<Shape>) -> Result<Var> {
    let y = x.value().reshape(shape)?;
    let (ix, old) = (x.id(), x.value().shape().clone());
    Ok(tape.record(&[x], y, move |g| Ok(vec![(ix, g.reshape(old)?)])))
}
