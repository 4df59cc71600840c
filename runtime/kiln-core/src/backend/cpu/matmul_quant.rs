//! Linear layers over frozen weights stored narrower than the compute type (f16, bf16, block
//! quantized): the weight is widened a tile of rows at a time, in cache, right before the GEMM
//! that consumes the tile. Widening the whole weight per call instead wrote (and re-read) a full
//! f32 copy — 113 MB for SmolLM2's LM head on every decode step — so decoding was bound by that
//! copy and QLoRA's peak memory held one f32 weight at a time anyway.

use rayon::prelude::*;

use super::{Mat, Real, gemm, gemm_ldc};
use crate::quant::{GgmlType, dequantize};
use crate::{DType, Error, Result, Tensor};

/// The storage type of a weight that must be widened before a GEMM, or `None` when it is
/// already f32/f64.
pub(super) fn narrow_type(w: &Tensor) -> Option<GgmlType> {
    match w.dtype() {
        DType::F16 => Some(GgmlType::F16),
        DType::BF16 => Some(GgmlType::BF16),
        DType::Quant(t) => Some(t),
        _ => None,
    }
}

/// Rows of a `[n, k]` weight held as `ty` bytes.
struct Rows<'a> {
    ty: GgmlType,
    bytes: &'a [u8],
    row_bytes: usize,
    k: usize,
}

impl<'a> Rows<'a> {
    fn new(w: &'a Tensor, ty: GgmlType, n: usize, k: usize) -> Result<Rows<'a>> {
        let (bs, ts) = ty.block();
        let bytes = w.raw_bytes()?;
        if !k.is_multiple_of(bs) || bytes.len() != n * (k / bs) * ts {
            return Err(Error::shape(
                "linear",
                format!("{} weight [{n}, {k}]: rows are not whole {bs}-value blocks", ty.name()),
            ));
        }
        Ok(Rows { ty, bytes, row_bytes: k / bs * ts, k })
    }

    /// Rows `r0..r0 + nr` widened into `buf` (`nr·k` values, row-major).
    fn fill<T: Real>(&self, r0: usize, nr: usize, buf: &mut [T], tmp: &mut Vec<f32>) -> Result<()> {
        let src = &self.bytes[r0 * self.row_bytes..(r0 + nr) * self.row_bytes];
        if T::DTYPE == DType::F32 {
            // T is f32 here: dequantize straight into the tile.
            return dequantize(self.ty, src, bytemuck::cast_slice_mut(buf));
        }
        tmp.resize(nr * self.k, 0.0);
        dequantize(self.ty, src, tmp)?;
        buf.iter_mut().zip(tmp.iter()).for_each(|(o, &x)| *o = T::from_f64(x as f64));
        Ok(())
    }
}

/// Rows per tile of about `elems` values, at least 16.
fn tile_rows(k: usize, n: usize, elems: usize) -> usize {
    (elems / k.max(1)).clamp(16, 1 << 16).min(n.max(1))
}

/// Decode tiles stay in cache (256 KiB of f32); training tiles are larger (4 MiB) because the
/// GEMM packs its operands anyway and narrow tiles would starve its parallel split.
const SMALL_TILE: usize = 1 << 16;
const LARGE_TILE: usize = 1 << 20;

/// `y[m, n] = x[m, k]·Wᵀ` for a narrow `W` `[n, k]`.
pub(super) fn xwt<T: Real>(x: &[T], w: &Tensor, ty: GgmlType, m: usize, k: usize, n: usize) -> Result<Vec<T>> {
    let rows = Rows::new(w, ty, n, k)?;
    let mut y = vec![T::zero(); m * n];
    if m <= 16 {
        let tr = tile_rows(k, n, SMALL_TILE);
        // Few rows of activations (decoding): the weight read dominates, so tiles run in
        // parallel, each GEMM single-threaded into its own buffer, then scattered into y.
        let parts: Vec<(usize, usize, Vec<T>)> = (0..n)
            .step_by(tr)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(tile, tmp): &mut (Vec<T>, Vec<f32>), j0| -> Result<(usize, usize, Vec<T>)> {
                    let nr = tr.min(n - j0);
                    tile.resize(nr * k, T::zero());
                    rows.fill(j0, nr, tile, tmp)?;
                    let mut yt = vec![T::zero(); m * nr];
                    gemm(Mat::rm(x, m, k), Mat::tr(tile, k, nr), &mut yt, false, T::one())?;
                    Ok((j0, nr, yt))
                },
            )
            .collect::<Result<_>>()?;
        for (j0, nr, yt) in parts {
            for (yr, tr) in y.chunks_mut(n).zip(yt.chunks(nr)) {
                yr[j0..j0 + nr].copy_from_slice(tr);
            }
        }
        return Ok(y);
    }
    // Many rows (training, prefill): tiles in turn, each widened and multiplied in parallel.
    let tr = tile_rows(k, n, LARGE_TILE);
    let mut tile = vec![T::zero(); tr * k];
    let mut tmp = Vec::new();
    for j0 in (0..n).step_by(tr) {
        let nr = tr.min(n - j0);
        fill_par(&rows, j0, nr, &mut tile[..nr * k], &mut tmp)?;
        gemm_ldc(Mat::rm(x, m, k), Mat::tr(&tile[..nr * k], k, nr), &mut y[j0..], n, false, T::one())?;
    }
    Ok(y)
}

/// `dx[m, k] (+)= dy[m, n]·W` for a narrow `W` `[n, k]`.
pub(super) fn dyw<T: Real>(dy: &[T], w: &Tensor, ty: GgmlType, m: usize, k: usize, n: usize) -> Result<Vec<T>> {
    let rows = Rows::new(w, ty, n, k)?;
    let tr = tile_rows(k, n, LARGE_TILE);
    let mut dx = vec![T::zero(); m * k];
    let mut tile = vec![T::zero(); tr * k];
    let mut tmp = Vec::new();
    for j0 in (0..n).step_by(tr) {
        let nr = tr.min(n - j0);
        fill_par(&rows, j0, nr, &mut tile[..nr * k], &mut tmp)?;
        let dyt = Mat { data: &dy[j0..], rows: m, cols: nr, rs: n, cs: 1 };
        gemm(dyt, Mat::rm(&tile[..nr * k], nr, k), &mut dx, j0 > 0, T::one())?;
    }
    Ok(dx)
}

/// Widens rows `r0..r0 + nr` into `tile`, split across threads.
fn fill_par<T: Real>(rows: &Rows<'_>, r0: usize, nr: usize, tile: &mut [T], tmp: &mut Vec<f32>) -> Result<()> {
    let per = nr.div_ceil(rayon::current_num_threads().max(1)).max(1);
    if per >= nr {
        return rows.fill(r0, nr, tile, tmp);
    }
    tile.par_chunks_mut(per * rows.k)
        .enumerate()
        .try_for_each_init(Vec::new, |tmp, (i, t)| rows.fill(r0 + i * per, t.len() / rows.k, t, tmp))
}
