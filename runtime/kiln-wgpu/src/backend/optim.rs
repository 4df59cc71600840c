//! AdamW, one parameter tensor per launch (`shaders/optim.wgsl`).

use kiln_core::backend::{AdamWItem, AdamWStep, OptimOps};
use kiln_core::{DType, Error, Result};

use super::instance::WgpuBackend;
use super::tensor::{Held, held};
use crate::runtime::{Device, Part, device};

const OPTIM: (&str, &str) = ("optim", include_str!("../../../../shaders/optim.wgsl"));

/// `shaders/optim.wgsl` `Params`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamP {
    n: u32,
    b1: f32,
    c1: f32,
    b2: f32,
    c2: f32,
    decay: f32,
    step: f32,
    bc2s: f32,
    eps: f32,
    /// A uniform's size is a multiple of 16 bytes.
    pad: [u32; 3],
}

impl OptimOps for WgpuBackend {
    fn adamw_step(&self, it: AdamWItem<'_>, hp: AdamWStep) -> Result<()> {
        let AdamWItem { param, grad, m, v } = it;
        let n = param.numel();
        if grad.numel() != n || m.numel() != n || v.numel() != n {
            return Err(Error::shape("adamw", format!("param {:?}, grad {:?}", param.shape(), grad.shape())));
        }
        let dev = device()?;
        // Every coefficient in f64 on the host, rounded once (`AdamWStep::factors`).
        let f = hp.factors();
        let p = |_, n: usize| AdamP {
            n: n as u32,
            b1: f.b1,
            c1: f.c1,
            b2: f.b2,
            c2: f.c2,
            decay: f.decay,
            step: f.step,
            bc2s: f.bc2s,
            eps: f.eps,
            pad: [0; 3],
        };
        // In place: a view (never the case for parameters) is first made a tensor of its own.
        for t in [&mut *param, &mut *m, &mut *v] {
            let copy = match held(t)? {
                Held::Copy(b) => Some(b),
                Held::Own(_) => None,
            };
            if let Some(b) = copy {
                *t = self.tensor(b, t.dims().to_vec(), DType::F32);
            }
        }
        let (hg, hp_, hm, hv) = (held(grad)?, held(param)?, held(m)?, held(v)?);
        let b = [Part::R(hg.buf(), 1), Part::W(hp_.buf(), 1), Part::W(hm.buf(), 1), Part::W(hv.buf(), 1)];
        dev.launch_rows(OPTIM, "adamw", &b, n, p, Device::grid)
    }
}
