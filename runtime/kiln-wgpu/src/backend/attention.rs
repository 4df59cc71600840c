//! Causal grouped-query attention with sliding windows and soft-capped scores
//! (`shaders/attention.wgsl`).

use kiln_core::backend::{AttentionOps, AttnArgs, AttnGrads};
use kiln_core::{DType, Error, Result, Tensor};

use super::instance::WgpuBackend;
use super::tensor::{Held, held};
use crate::runtime::{Bind, Device, device};

const SRC: (&str, &str) = ("attention", include_str!("../../../../shaders/attention.wgsl"));

/// `shaders/attention.wgsl` `Params`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AttnP {
    b: u32,
    t: u32,
    tk: u32,
    hq: u32,
    hkv: u32,
    d: u32,
    has_seg: u32,
    shared_prefix: u32,
    scale: f32,
    /// Sliding window in keys; 0: none.
    window: u32,
    /// Logit soft-cap; 0: none.
    softcap: f32,
    pad: u32,
}

fn params(a: &AttnArgs<'_>) -> Result<AttnP> {
    let d = a.dims()?;
    if d.d > 256 {
        return Err(Error::Msg(format!("wgpu attention: head dim {} > 256 is not supported", d.d)));
    }
    Ok(AttnP {
        b: d.b as u32,
        t: d.t as u32,
        tk: d.tk as u32,
        hq: d.hq as u32,
        hkv: d.hkv as u32,
        d: d.d as u32,
        has_seg: u32::from(a.seg.is_some()),
        shared_prefix: u32::from(a.shared_prefix),
        scale: a.scale as f32,
        // A window of at least Tk keys hides nothing: 0, no window (and no u32 overflow).
        window: a.window.filter(|&w| w < d.tk).map_or(0, |w| w as u32),
        // A cap past f32's range bends no f32 score; one below it stays positive (0 is off).
        softcap: a.softcap.filter(|&c| c < f32::MAX as f64).map_or(0.0, |c| (c as f32).max(f32::MIN_POSITIVE)),
        pad: 0,
    })
}

impl AttentionOps for WgpuBackend {
    fn attention_fwd(&self, a: &AttnArgs<'_>) -> Result<(Tensor, Tensor)> {
        let p = params(a)?;
        let dev = device()?;
        let (hq, hk, hv) = (held(a.q)?, held(a.k)?, held(a.v)?);
        // Without segments a one-element placeholder fills the binding (never read).
        let dummy;
        let seg = match a.seg {
            Some(s) => held(s)?,
            None => {
                dummy = dev.write(&[0u8; 4])?;
                Held::Own(&dummy)
            }
        };
        let rows = a.q.numel() / a.q.dims()[3].max(1);
        let (o, lse) = (dev.alloc((a.q.numel() * 4) as u64)?, dev.alloc((rows * 4) as u64)?);
        let b =
            [Bind::R(hq.buf()), Bind::R(hk.buf()), Bind::R(hv.buf()), Bind::R(seg.buf()), Bind::W(&o), Bind::W(&lse)];
        dev.launch(SRC, "attn_fwd", &p, &b, Device::grid(rows))?;
        let qd = a.q.dims();
        Ok((self.tensor(o, qd.to_vec(), DType::F32), self.tensor(lse, vec![qd[0], qd[1], qd[2]], DType::F32)))
    }

    fn attention_bwd(&self, a: &AttnArgs<'_>, o: &Tensor, lse: &Tensor, d_o: &Tensor) -> Result<AttnGrads> {
        let p = params(a)?;
        if p.t != p.tk
            || o.dims() != a.q.dims()
            || d_o.dims() != a.q.dims()
            || lse.numel() != a.q.numel() / p.d as usize
        {
            return Err(Error::shape(
                "attention_bwd",
                format!("o {:?}, lse {:?}, do {:?}", o.shape(), lse.shape(), d_o.shape()),
            ));
        }
        let dev = device()?;
        let (hq, hk, hv, ho, hl, hd) = (held(a.q)?, held(a.k)?, held(a.v)?, held(o)?, held(lse)?, held(d_o)?);
        let dummy;
        let seg = match a.seg {
            Some(s) => held(s)?,
            None => {
                dummy = dev.write(&[0u8; 4])?;
                Held::Own(&dummy)
            }
        };
        let rows = a.q.numel() / p.d as usize;
        let delta = dev.alloc((rows * 4) as u64)?;
        dev.launch(
            SRC,
            "attn_delta",
            &p,
            &[Bind::R(ho.buf()), Bind::R(hd.buf()), Bind::W(&delta)],
            Device::grid(rows),
        )?;
        let dq = dev.alloc((a.q.numel() * 4) as u64)?;
        let common = |out| {
            [
                Bind::R(hq.buf()),
                Bind::R(hk.buf()),
                Bind::R(hv.buf()),
                Bind::R(seg.buf()),
                Bind::R(hl.buf()),
                Bind::R(hd.buf()),
                Bind::R(&delta),
                Bind::W(out),
            ]
        };
        dev.launch(SRC, "attn_bwd_dq", &p, &common(&dq), Device::grid(rows))?;
        let kn = a.k.numel();
        let dkv = dev.alloc((2 * kn * 4) as u64)?;
        let krows = kn / p.d as usize;
        dev.launch(SRC, "attn_bwd_dkv", &p, &common(&dkv), Device::grid(krows))?;
        // dk is the first half of the shared output, dv the second.
        let both = self.tensor(dkv, vec![2, kn], DType::F32);
        let kd = a.k.dims().to_vec();
        let (dk, dv) = (both.narrow0(0, 1)?.reshape(kd.clone())?, both.narrow0(1, 1)?.reshape(kd)?);
        Ok((self.tensor(dq, a.q.dims().to_vec(), DType::F32), dk, dv))
    }
}
