//! Embedding (`shaders/embedding.wgsl`), cross-entropy (`shaders/loss.wgsl`) and AdamW
//! (`shaders/optim.wgsl`).

use kiln_core::backend::{AdamWStep, CeOut, EmbeddingOps, LossOps, OptimOps};
use kiln_core::{DType, Error, Result, Tensor};

use super::WgpuBackend;
use crate::runtime::{Bind, Device, Held, device, held, tensor};

const EMB: (&str, &str) = ("embedding", include_str!("../../../../shaders/embedding.wgsl"));
const LOSS: (&str, &str) = ("loss", include_str!("../../../../shaders/loss.wgsl"));
const OPTIM: (&str, &str) = ("optim", include_str!("../../../../shaders/optim.wgsl"));
/// `ce_fwd` with subgroup reductions, for adapters that have them.
const LOSS_SG: (&str, &str) = ("loss_sg", include_str!("../../../../shaders/loss_sg.wgsl"));

/// `Params` of embedding.wgsl and loss.wgsl (two counts).
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct P2 {
    a: u32,
    b: u32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamP {
    n: u32,
    b1: f32,
    b2: f32,
    decay: f32,
    step: f32,
    bc2s: f32,
    eps: f32,
    pad: u32,
}

fn i32s(t: &Tensor) -> Result<Vec<i32>> {
    Ok(t.to_cpu()?.as_slice::<i32>()?.to_vec())
}

fn check_ids(ids: &[i32], vocab: usize) -> Result<()> {
    if let Some((i, &bad)) = ids.iter().enumerate().find(|&(_, &t)| t < 0 || t as usize >= vocab) {
        return Err(Error::Msg(format!("embedding: id {bad} at position {i} is outside the vocabulary of {vocab}")));
    }
    Ok(())
}

impl EmbeddingOps for WgpuBackend {
    fn embedding_fwd(&self, w: &Tensor, ids: &Tensor) -> Result<Tensor> {
        let (v, h) = (w.shape().rows(), w.shape().last());
        check_ids(&i32s(ids)?, v)?;
        let n = ids.numel();
        let dev = device()?;
        let (hw, hi) = (held(w)?, held(ids)?);
        let y = dev.alloc((n * h * 4) as u64)?;
        let p = P2 { a: n as u32, b: h as u32, pad: [0; 2] };
        dev.launch(
            EMB,
            "embedding_fwd",
            &p,
            &[Bind::R(hw.buf()), Bind::R(hi.buf()), Bind::W(&y)],
            Device::grid(n * h),
        )?;
        Ok(tensor(y, vec![n, h], DType::F32))
    }
    fn embedding_bwd(&self, dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
        let (n, h) = (ids.numel(), dy.shape().last());
        if dy.numel() != n * h {
            return Err(Error::shape("embedding_bwd", format!("dy {:?} for {n} ids", dy.shape())));
        }
        check_ids(&i32s(ids)?, vocab)?;
        let dev = device()?;
        let (hd, hi) = (held(dy)?, held(ids)?);
        let dw = dev.write(&vec![0u8; vocab * h * 4])?;
        let p = P2 { a: n as u32, b: h as u32, pad: [0; 2] };
        dev.launch(
            EMB,
            "embedding_bwd",
            &p,
            &[Bind::R(hd.buf()), Bind::R(hi.buf()), Bind::W(&dw)],
            (h.div_ceil(64) as u32, 1, 1),
        )?;
        Ok(tensor(dw, vec![vocab, h], DType::F32))
    }
}

fn ce_dims(logits: &Tensor, targets: &Tensor) -> Result<(usize, usize)> {
    let (m, v) = (logits.shape().rows(), logits.shape().last());
    if targets.numel() != m {
        return Err(Error::shape(
            "cross_entropy",
            format!("logits {:?}, targets {:?}", logits.shape(), targets.shape()),
        ));
    }
    Ok((m, v))
}

fn ce_bwd(logits: &Tensor, targets: &Tensor, lse: &Tensor, w: Held<'_>) -> Result<Tensor> {
    let (m, v) = ce_dims(logits, targets)?;
    let dev = device()?;
    let (hx, ht, hl) = (held(logits)?, held(targets)?, held(lse)?);
    let d = dev.alloc((m * v * 4) as u64)?;
    let p = P2 { a: m as u32, b: v as u32, pad: [0; 2] };
    let b = [Bind::R(hx.buf()), Bind::R(ht.buf()), Bind::R(hl.buf()), Bind::R(w.buf()), Bind::W(&d)];
    dev.launch(LOSS, "ce_bwd", &p, &b, Device::grid(m * v))?;
    Ok(tensor(d, logits.dims().to_vec(), DType::F32))
}

impl LossOps for WgpuBackend {
    fn cross_entropy_fwd(&self, logits: &Tensor, targets: &Tensor) -> Result<CeOut> {
        let (m, v) = ce_dims(logits, targets)?;
        let tv = i32s(targets)?;
        if let Some((r, &bad)) = tv.iter().enumerate().find(|&(_, &t)| t >= v as i32) {
            return Err(Error::Msg(format!("cross_entropy: target {bad} in row {r} is outside the vocabulary of {v}")));
        }
        let dev = device()?;
        let (hx, ht) = (held(logits)?, held(targets)?);
        let (lse, nll) = (dev.alloc((m * 4) as u64)?, dev.alloc((m * 4) as u64)?);
        let p = P2 { a: m as u32, b: v as u32, pad: [0; 2] };
        let x = m.clamp(1, 65535);
        let grid = (x as u32, m.div_ceil(x) as u32, 1);
        let b = [Bind::R(hx.buf()), Bind::R(ht.buf()), Bind::W(&lse), Bind::W(&nll)];
        if dev.use_subgroups() {
            dev.launch(LOSS_SG, "ce_fwd_sg", &p, &b, grid)?;
        } else {
            dev.launch(LOSS, "ce_fwd", &p, &b, grid)?;
        }
        let nll = tensor(nll, vec![m], DType::F32);
        let n_valid = tv.iter().filter(|&&t| t >= 0).count();
        let sum: f64 = nll.to_vec_f64()?.iter().sum();
        let loss = if n_valid == 0 { 0.0 } else { sum / n_valid as f64 };
        Ok(CeOut { loss, n_valid, lse: tensor(lse, vec![m], DType::F32), nll })
    }
    fn cross_entropy_bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        lse: &Tensor,
        dloss: f64,
        n_valid: usize,
    ) -> Result<Tensor> {
        let m = logits.shape().rows();
        let g = if n_valid == 0 { 0.0 } else { dloss / n_valid as f64 } as f32;
        let w = device()?.write(bytemuck::cast_slice(&vec![g; m]))?;
        ce_bwd(logits, targets, lse, Held::Copy(w))
    }
    fn cross_entropy_bwd_rows(&self, logits: &Tensor, targets: &Tensor, lse: &Tensor, drow: &Tensor) -> Result<Tensor> {
        if drow.numel() != logits.shape().rows() {
            return Err(Error::shape(
                "cross_entropy_bwd_rows",
                format!("{:?} weights for {:?}", drow.shape(), logits.shape()),
            ));
        }
        ce_bwd(logits, targets, lse, held(drow)?)
    }
}

impl OptimOps for WgpuBackend {
    fn adamw_step(
        &self,
        param: &mut Tensor,
        grad: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        hp: AdamWStep,
    ) -> Result<()> {
        let n = param.numel();
        if grad.numel() != n || m.numel() != n || v.numel() != n {
            return Err(Error::shape("adamw", format!("param {:?}, grad {:?}", param.shape(), grad.shape())));
        }
        let dev = device()?;
        let f = hp.factors();
        let p = AdamP {
            n: n as u32,
            b1: hp.beta1 as f32,
            b2: hp.beta2 as f32,
            decay: f.decay,
            step: f.step,
            bc2s: f.bc2s,
            eps: hp.eps as f32,
            pad: 0,
        };
        // In place: a view (never the case for parameters) is first made a tensor of its own.
        for t in [&mut *param, &mut *m, &mut *v] {
            let copy = match held(t)? {
                Held::Copy(b) => Some(b),
                Held::Own(_) => None,
            };
            if let Some(b) = copy {
                *t = tensor(b, t.dims().to_vec(), DType::F32);
            }
        }
        let (hg, hp_, hm, hv) = (held(grad)?, held(param)?, held(m)?, held(v)?);
        let b = [Bind::R(hg.buf()), Bind::W(hp_.buf()), Bind::W(hm.buf()), Bind::W(hv.buf())];
        dev.launch(OPTIM, "adamw", &p, &b, Device::grid(n))
    }
}
