//! Matrix products on the CPU through the `gemm` crate (packed, AVX2/AVX-512 microkernels,
//! rayon across panels): within a few percent of MKL at the model's shapes, which our own
//! loops would not be. The LoRA linear is composed from GEMMs here; the GPU backends fuse it.

use std::borrow::Cow;

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, qmatmul, read};
use crate::backend::{LinDims, LinearGrads, LinearNeeds, LoraRef, MatmulDims, MatmulOps};
use crate::{Error, Result, Tensor};

/// A matrix view: element `(i, j)` is at `i·rs + j·cs`.
#[derive(Clone, Copy)]
pub struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `[rows, cols]`.
    pub fn rm(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major `[cols, rows]` buffer, viewed as `[rows, cols]`.
    pub fn tr(data: &'a [T], rows: usize, cols: usize) -> Self {
        Mat { data, rows, cols, rs: 1, cs: rows }
    }
    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `c = beta·a·b` (or `c += beta·a·b` with `acc`), `c` row-major `[a.rows, b.cols]`.
pub fn gemm<T: Real>(a: Mat<'_, T>, b: Mat<'_, T>, c: &mut [T], acc: bool, beta: T) -> Result<()> {
    if c.len() != a.rows * b.cols {
        return Err(Error::shape("gemm", format!("[{}x{}] result into {} elements", a.rows, b.cols, c.len())));
    }
    gemm_ldc(a, b, c, b.cols, acc, beta)
}

/// [`gemm`] into rows of `c` that are `ldc` apart (a block of columns of a wider matrix).
pub fn gemm_ldc<T: Real>(a: Mat<'_, T>, b: Mat<'_, T>, c: &mut [T], ldc: usize, acc: bool, beta: T) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let c_fits = m == 0 || n == 0 || (ldc >= n && (m - 1) * ldc + n <= c.len());
    if b.rows != k || !c_fits || !a.fits() || !b.fits() {
        return Err(Error::shape("gemm", format!("[{m}x{k}]·[{}x{n}] into {} elements (ldc {ldc})", b.rows, c.len())));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !acc {
            c.chunks_mut(ldc).for_each(|r| {
                let w = n.min(r.len());
                r[..w].fill(T::zero())
            });
        }
        return Ok(());
    }
    // Threads only pay off once there is real work; gemm splits panels across them.
    let par = if m * n * k >= 48 * 48 * 48 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the kernel touches is inside the slices: `fits` checked the last
    // element of `a` and `b`, and `c_fits` the last row of `c` at stride `ldc`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            acc,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            beta,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

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
    let mut y = match qmatmul::narrow_type(w) {
        Some(ty) => qmatmul::xwt(&xv, w, ty, d.m, d.k, d.n)?,
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
        let mut dx = match qmatmul::narrow_type(w) {
            Some(ty) => qmatmul::dyw(&dyv, w, ty, d.m, d.k, d.n)?,
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
