//! Matrix products and the (LoRA) linear layer on the CPU, composed from the backend's GEMM
//! (`super::gemm`); the GPU backends fuse the LoRA linear. Weights stored narrower than the
//! compute type go through `matmul_quant`, which widens them a tile at a time.

use std::borrow::Cow;

use rayon::prelude::*;

use super::{CpuBackend, Mat, Real, by_prec, gemm, matmul_quant, out, prec, read};
use crate::backend::{LinDims, LinearGrads, LinearNeeds, LoraRef, MatmulDims, MatmulOps};
use crate::{Error, Result, Tensor};

fn matmul<T: Real>(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
    let MatmulDims { m, k, n, out: dims } = MatmulDims::of(a, b, ta, tb)?;
    let (av, bv) = (read::<T>(a)?, read::<T>(b)?);
    let am = if ta { Mat::tr(&av, m, k) } else { Mat::rm(&av, m, k) };
    let bm = if tb { Mat::tr(&bv, k, n) } else { Mat::rm(&bv, k, n) };
    let mut c = vec![T::zero(); m * n];
    gemm(am, bm, &mut c, false, T::one())?;
    out(c, dims)
}

fn linear_fwd<T: Real>(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<LoraRef<'_>>,
) -> Result<(Tensor, Option<Tensor>)> {
    let d = LinDims::of(x, w)?;
    let xv = read::<T>(x)?;
    let mut y = match matmul_quant::narrow_type(w) {
        Some(ty) => matmul_quant::xwt(&xv, w, ty, d.m, d.k, d.n)?,
        None => {
            let wv = read::<T>(w)?;
            let mut y = vec![T::zero(); d.m * d.n];
            gemm(Mat::rm(&xv, d.m, d.k), Mat::tr(&wv, d.k, d.n), &mut y, false, T::one())?;
            y
        }
    };
    if let Some(b) = bias {
        let bv = read::<T>(b)?;
        if bv.len() != d.n {
            return Err(Error::shape("linear", format!("bias {:?} for out={}", b.shape(), d.n)));
        }
        y.par_chunks_mut(d.n).for_each(|row| row.iter_mut().zip(bv.iter()).for_each(|(o, &b)| *o += b));
    }
    let u = match lora {
        None => None,
        Some(l) => {
            let r = l.rank(&d)?;
            let (av, bv) = (read::<T>(l.a)?, read::<T>(l.b)?);
            let mut u = vec![T::zero(); d.m * r];
            gemm(Mat::rm(&xv, d.m, d.k), Mat::tr(&av, d.k, r), &mut u, false, T::one())?;
            gemm(Mat::rm(&u, d.m, r), Mat::tr(&bv, r, d.n), &mut y, true, T::from_f64(l.scale))?;
            Some(out(u, LinDims::out_dims(x, r))?)
        }
    };
    Ok((out(y, LinDims::out_dims(x, d.n))?, u))
}

fn linear_bwd<T: Real>(
    dy: &Tensor,
    x: &Tensor,
    w: &Tensor,
    lora: Option<(LoraRef<'_>, &Tensor)>,
    needs: LinearNeeds,
) -> Result<LinearGrads> {
    let d = LinDims::of(x, w)?;
    let (dyv, xv) = (read::<T>(dy)?, read::<T>(x)?);
    if dyv.len() != d.m * d.n {
        return Err(Error::shape("linear_bwd", format!("dy {:?}", dy.shape())));
    }
    let dym = Mat::rm(&dyv, d.m, d.n);
    let mut g = LinearGrads::default();
    // du = s·dy·B is shared by dA and dx.
    let mut du: Option<(Vec<T>, usize, Cow<'_, [T]>)> = None;
    if let Some((l, u)) = &lora {
        let r = l.rank(&d)?;
        let s = T::from_f64(l.scale);
        let (bv, uv) = (read::<T>(l.b)?, read::<T>(u)?);
        let mut duv = vec![T::zero(); d.m * r];
        gemm(dym, Mat::rm(&bv, d.n, r), &mut duv, false, s)?;
        if needs.lora {
            let mut db = vec![T::zero(); d.n * r];
            gemm(Mat::tr(&dyv, d.n, d.m), Mat::rm(&uv, d.m, r), &mut db, false, s)?;
            let mut da = vec![T::zero(); r * d.k];
            gemm(Mat::tr(&duv, r, d.m), Mat::rm(&xv, d.m, d.k), &mut da, false, T::one())?;
            g.da = Some(out(da, [r, d.k])?);
            g.db = Some(out(db, [d.n, r])?);
        }
        du = Some((duv, r, read::<T>(l.a)?));
    }
    if needs.x {
        let mut dx = match matmul_quant::narrow_type(w) {
            Some(ty) => matmul_quant::dyw(&dyv, w, ty, d.m, d.k, d.n)?,
            None => {
                let wv = read::<T>(w)?;
                let mut dx = vec![T::zero(); d.m * d.k];
                gemm(dym, Mat::rm(&wv, d.n, d.k), &mut dx, false, T::one())?;
                dx
            }
        };
        if let Some((duv, r, av)) = &du {
            gemm(Mat::rm(duv, d.m, *r), Mat::rm(av, *r, d.k), &mut dx, true, T::one())?;
        }
        g.dx = Some(out(dx, x.dims().to_vec())?);
    }
    if needs.w {
        let mut dw = vec![T::zero(); d.n * d.k];
        gemm(Mat::tr(&dyv, d.n, d.m), Mat::rm(&xv, d.m, d.k), &mut dw, false, T::one())?;
        g.dw = Some(out(dw, [d.n, d.k])?);
    }
    if needs.bias {
        let mut db = vec![T::zero(); d.n];
        for row in dyv.chunks(d.n) {
            db.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
        }
        g.dbias = Some(out(db, [d.n])?);
    }
    Ok(g)
}

impl MatmulOps for CpuBackend {
    fn matmul(&self, a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<Tensor> {
        by_prec!(prec(&[a, b]), matmul(a, b, ta, tb))
    }
    fn linear_fwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        lora: Option<LoraRef<'_>>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        by_prec!(prec(&[x, w]), linear_fwd(x, w, bias, lora))
    }
    fn linear_bwd(
        &self,
        dy: &Tensor,
        x: &Tensor,
        w: &Tensor,
        lora: Option<(LoraRef<'_>, &Tensor)>,
        needs: LinearNeeds,
    ) -> Result<LinearGrads> {
        by_prec!(prec(&[dy, x]), linear_bwd(dy, x, w, lora, needs))
    }
}
