//! Token embedding: gather rows; backward scatter-adds into a dense gradient (serial per
//! vocabulary row block, so the sum order and thus the result is deterministic).

use rayon::prelude::*;

use super::{CpuBackend, Real, by_prec, out, prec, read, read_i32};
use crate::backend::EmbeddingOps;
use crate::{Error, Result, Tensor};

fn fwd<T: Real>(w: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let wd = w.dims();
    if wd.len() != 2 {
        return Err(Error::shape("embedding", format!("w {:?}", wd)));
    }
    let (v, h) = (wd[0], wd[1]);
    let iv = read_i32(ids)?;
    crate::backend::check_token_ids(iv, v)?;
    let mut y = vec![T::zero(); iv.len() * h];
    if w.dtype() == T::DTYPE {
        let wv = w.as_slice::<T>()?;
        y.par_chunks_mut(h.max(1)).zip(iv.par_iter()).for_each(|(row, &t)| {
            row.copy_from_slice(&wv[t as usize * h..(t as usize + 1) * h]);
        });
    } else {
        // Widen only the rows looked up, not the whole (possibly 100 MB) table.
        for (row, &t) in y.chunks_mut(h.max(1)).zip(iv) {
            row.copy_from_slice(&read::<T>(&w.narrow0(t as usize, 1)?)?);
        }
    }
    let mut dims = ids.dims().to_vec();
    dims.push(h);
    out(y, dims)
}

fn bwd<T: Real>(dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
    let iv = read_i32(ids)?;
    crate::backend::check_token_ids(iv, vocab)?;
    let h = dy.shape().last();
    let dv = read::<T>(dy)?;
    if dv.len() != iv.len() * h {
        return Err(Error::shape("embedding_bwd", format!("dy {:?} for {} ids", dy.shape(), iv.len())));
    }
    let mut dw = vec![T::zero(); vocab * h];
    // Each thread owns a block of vocabulary rows and scans all ids in order.
    let block = vocab.div_ceil(rayon::current_num_threads() * 4).max(1);
    dw.par_chunks_mut(block * h.max(1)).enumerate().for_each(|(bi, chunk)| {
        let lo = bi * block;
        for (n, &t) in iv.iter().enumerate() {
            let t = t as usize;
            if t >= lo && t < lo + block {
                let dst = &mut chunk[(t - lo) * h..(t - lo + 1) * h];
                dst.iter_mut().zip(&dv[n * h..(n + 1) * h]).for_each(|(o, &g)| *o += g);
            }
        }
    });
    out(dw, [vocab, h])
}

impl EmbeddingOps for CpuBackend {
    fn embedding_fwd(&self, w: &Tensor, ids: &Tensor) -> Result<Tensor> {
        by_prec!(prec(&[w]), fwd(w, ids))
    }
    fn embedding_bwd(&self, dy: &Tensor, ids: &Tensor, vocab: usize) -> Result<Tensor> {
        by_prec!(prec(&[dy]), bwd(dy, ids, vocab))
    }
}
