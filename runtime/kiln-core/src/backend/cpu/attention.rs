//! Causal grouped-query attention, flash-style on the CPU.
//!
//! Layout: q `[B, T, Hq, D]`, k/v `[B, T, Hkv, D]` (the projections' natural layout, so no
//! transpose is needed), o like q, lse `[B, T, Hq]`. Query `i` attends to key `j` when `j ≤ i`,
//! `i − j < window` (sliding window, when set) and both carry the same segment id (packed rows
//! never see each other), or — with `shared_prefix` — when the key's segment is the query's
//! group's shared prefix. With a soft-cap each score `s` becomes `cap·tanh(s/cap)` before the
//! softmax (the saved lse is of the capped scores); the backward multiplies dS by
//! `1 − tanh²(s/cap)`.
//!
//! Forward: per query row, an online softmax over blocks of `BLOCK` keys (running max, running
//! sum, rescaled accumulator), so memory is O(T·D) — never a T×T matrix. Backward (FlashAttention-2
//! order): probabilities are recomputed from the saved log-sum-exp a block of queries at a time,
//! with the products as GEMMs; one task per (batch row, kv head), so no two threads write the
//! same row and the result does not depend on thread count.

use rayon::prelude::*;

use super::{CpuBackend, Mat, Real, by_prec, gemm, out, prec, read, read_i32};
use crate::backend::{AttentionOps, AttnArgs, AttnGrads};
use crate::{Error, Result, Tensor};

const BLOCK: usize = 32;

/// Which keys a query sees besides causality: the segments (packing, shared prefixes) and the
/// sliding window.
struct Mask<'a> {
    seg: Option<&'a [i32]>,
    prefix: bool,
    t: usize,
    /// `usize::MAX` without a window.
    window: usize,
}

impl<'a> Mask<'a> {
    fn new(a: &AttnArgs<'_>, seg: Option<&'a [i32]>, t: usize) -> Mask<'a> {
        Mask { seg, prefix: a.shared_prefix, t, window: a.window.unwrap_or(usize::MAX) }
    }
    /// The first key query `i` (absolute position) may see: the window's start.
    fn first(&self, i: usize) -> usize {
        (i + 1).saturating_sub(self.window)
    }
    /// Whether query `i` may see key `j` in batch row `b`: causal, inside the window, and the
    /// same segment or (with `prefix`) the query's group's shared prefix `4g`. Padding (-1) is
    /// never a prefix. Inside a segment index distance is position distance, so the window
    /// needs no positions.
    fn visible(&self, b: usize, i: usize, j: usize) -> bool {
        j <= i
            && i - j < self.window
            && self.seg.is_none_or(|s| {
                let (si, sj) = (s[b * self.t + i], s[b * self.t + j]);
                si == sj || (self.prefix && sj >= 0 && si >= 0 && sj % 4 == 0 && sj / 4 == si / 4)
            })
    }
}

/// Soft-capping of a score: `cap·tanh(s/cap)`, or `s` without a cap.
fn cap<T: Real>(s: T, c: Option<T>) -> T {
    c.map_or(s, |c| c * (s / c).tanh())
}

/// Dot product with eight independent accumulators: floating-point adds are not reassociated
/// by the compiler, so a single running sum would be one long dependency chain (no SIMD).
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let n = a.len().min(b.len());
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a[..n].chunks_exact(8), b[..n].chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&x, &y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

fn fwd<T: Real>(a: &AttnArgs<'_>) -> Result<(Tensor, Tensor)> {
    let dm = a.dims()?;
    let (qv, kv, vv) = (read::<T>(a.q)?, read::<T>(a.k)?, read::<T>(a.v)?);
    let seg = a.seg.map(read_i32).transpose()?;
    let (t, tk, hq, hkv, d) = (dm.t, dm.tk, dm.hq, dm.hkv, dm.d);
    let mask = Mask::new(a, seg, t);
    let group = hq / hkv;
    // A cap past T's range (f32) bends no score.
    let (scale, softcap) = (T::from_f64(a.scale), a.softcap.map(T::from_f64).filter(|c| c.is_finite()));
    let off = tk - t;
    let mut o = vec![T::zero(); dm.b * t * hq * d];
    let mut lse = vec![T::zero(); dm.b * t * hq];
    // One task per (b, i, h) query row: row index r = (b·T + i)·Hq + h.
    o.par_chunks_mut(d).zip(lse.par_iter_mut()).enumerate().for_each(|(r, (orow, l))| {
        let (h, bi) = (r % hq, r / hq);
        let (b, i) = (bi / t, bi % t + off);
        let g = h / group;
        let qr = &qv[r * d..(r + 1) * d];
        let (mut m, mut sum) = (T::neg_infinity(), T::zero());
        let mut s = [T::zero(); BLOCK];
        // Keys before the window's start are skipped whole.
        for j0 in (mask.first(i)..=i).step_by(BLOCK) {
            let j1 = (j0 + BLOCK).min(i + 1);
            let mut bmax = T::neg_infinity();
            for j in j0..j1 {
                s[j - j0] = if mask.visible(b, i, j) {
                    let kr = &kv[((b * tk + j) * hkv + g) * d..][..d];
                    cap(dot(qr, kr) * scale, softcap)
                } else {
                    T::neg_infinity()
                };
                bmax = bmax.max(s[j - j0]);
            }
            if bmax == T::neg_infinity() {
                continue;
            }
            let m_new = m.max(bmax);
            let corr = (m - m_new).exp();
            sum *= corr;
            orow.iter_mut().for_each(|x| *x *= corr);
            for j in j0..j1 {
                let p = (s[j - j0] - m_new).exp();
                if p == T::zero() {
                    continue;
                }
                sum += p;
                let vr = &vv[((b * tk + j) * hkv + g) * d..][..d];
                orow.iter_mut().zip(vr).for_each(|(x, &y)| *x += p * y);
            }
            m = m_new;
        }
        // The diagonal is always visible, so sum ≥ exp(0) > 0.
        let inv = T::one() / sum;
        orow.iter_mut().for_each(|x| *x *= inv);
        *l = m + sum.ln();
    });
    let qd = a.q.dims().to_vec();
    Ok((out(o, qd.clone())?, out(lse, [qd[0], qd[1], qd[2]])?))
}

/// One task's result: batch row, kv head, and its dQ (query heads of the group), dK, dV.
type HeadGrads<T> = (usize, usize, Vec<T>, Vec<T>, Vec<T>);

fn bwd<T: Real>(a: &AttnArgs<'_>, o: &Tensor, lse: &Tensor, d_o: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let dm = a.dims()?;
    if dm.tk != dm.t {
        return Err(Error::shape("attention_bwd", "backward needs as many keys as queries (no KV cache)"));
    }
    let (qv, kv, vv) = (read::<T>(a.q)?, read::<T>(a.k)?, read::<T>(a.v)?);
    let (ov, lv, gv) = (read::<T>(o)?, read::<T>(lse)?, read::<T>(d_o)?);
    if ov.len() != qv.len() || gv.len() != qv.len() || lv.len() != qv.len() / dm.d.max(1) {
        return Err(Error::shape(
            "attention_bwd",
            format!("o {:?}, lse {:?}, do {:?}", o.shape(), lse.shape(), d_o.shape()),
        ));
    }
    let seg = a.seg.map(read_i32).transpose()?;
    let (t, hq, hkv, d) = (dm.t, dm.hq, dm.hkv, dm.d);
    let mask = Mask::new(a, seg, t);
    let group = hq / hkv;
    // A cap past T's range (f32) bends no score.
    let (scale, softcap) = (T::from_f64(a.scale), a.softcap.map(T::from_f64).filter(|c| c.is_finite()));
    // delta_i = dO_i · O_i
    let delta: Vec<T> =
        (0..qv.len() / d.max(1)).into_par_iter().map(|r| dot(&gv[r * d..][..d], &ov[r * d..][..d])).collect();
    let qrow = |b: usize, i: usize, h: usize| ((b * t + i) * hq + h) * d;
    let krow = |b: usize, j: usize, g: usize| ((b * t + j) * hkv + g) * d;
    // One task per (batch row, kv head): it owns dK/dV of that head and dQ of the query heads
    // sharing it, so tasks never write the same memory. Within a task, blocks of QBLOCK queries:
    // S = Q·Kᵀ and dP = dO·Vᵀ by GEMM, P and dS = P ⊙ (dP − δ) once per pair, then dQ = dS·K,
    // dK += dSᵀ·Q, dV += Pᵀ·dO by GEMM (FlashAttention-2's backward, with the block's
    // probabilities in cache instead of recomputed per pass).
    const QBLOCK: usize = 64;
    let (qs, ks) = (hq * d, hkv * d);
    let tasks: Vec<(usize, usize)> = (0..dm.b).flat_map(|b| (0..hkv).map(move |g| (b, g))).collect();
    let parts = tasks
        .into_par_iter()
        .map(|(b, g)| -> Result<HeadGrads<T>> {
            let (mut dq, mut dk, mut dv) =
                (vec![T::zero(); group * t * d], vec![T::zero(); t * d], vec![T::zero(); t * d]);
            let (mut sp, mut ds) = (vec![T::zero(); QBLOCK * t], vec![T::zero(); QBLOCK * t]);
            let kb = krow(b, 0, g);
            for hh in 0..group {
                let h = g * group + hh;
                for i0 in (0..t).step_by(QBLOCK) {
                    // Keys k0..nk: causal up to the block's last query, and none before the
                    // window of its first.
                    let (nq, nk, k0) = ((t - i0).min(QBLOCK), (i0 + QBLOCK).min(t), mask.first(i0));
                    let nw = nk - k0;
                    let qm = Mat { data: &qv[qrow(b, i0, h)..], rows: nq, cols: d, rs: qs, cs: 1 };
                    let gm = Mat { data: &gv[qrow(b, i0, h)..], rows: nq, cols: d, rs: qs, cs: 1 };
                    let kt = Mat { data: &kv[kb + k0 * ks..], rows: d, cols: nw, rs: 1, cs: ks };
                    let vt = Mat { data: &vv[kb + k0 * ks..], rows: d, cols: nw, rs: 1, cs: ks };
                    let (s, dp) = (&mut sp[..nq * nw], &mut ds[..nq * nw]);
                    gemm(qm, kt, s, false, scale)?;
                    gemm(gm, vt, dp, false, T::one())?;
                    for ii in 0..nq {
                        let i = i0 + ii;
                        let r = (b * t + i) * hq + h;
                        let (srow, drow) = (&mut s[ii * nw..][..nw], &mut dp[ii * nw..][..nw]);
                        for jj in 0..nw {
                            if mask.visible(b, i, k0 + jj) {
                                // Capped: s' = c·tanh(s/c), ds'/ds = 1 − tanh²(s/c).
                                let (sc, dcap) = match softcap {
                                    Some(c) => {
                                        let th = (srow[jj] / c).tanh();
                                        (c * th, T::one() - th * th)
                                    }
                                    None => (srow[jj], T::one()),
                                };
                                let p = (sc - lv[r]).exp();
                                srow[jj] = p;
                                drow[jj] = p * (drow[jj] - delta[r]) * dcap;
                            } else {
                                srow[jj] = T::zero();
                                drow[jj] = T::zero();
                            }
                        }
                    }
                    let km = Mat { data: &kv[kb + k0 * ks..], rows: nw, cols: d, rs: ks, cs: 1 };
                    gemm(Mat::rm(dp, nq, nw), km, &mut dq[(hh * t + i0) * d..][..nq * d], false, scale)?;
                    gemm(Mat::tr(dp, nw, nq), qm, &mut dk[k0 * d..nk * d], true, scale)?;
                    gemm(Mat::tr(s, nw, nq), gm, &mut dv[k0 * d..nk * d], true, T::one())?;
                }
            }
            Ok((b, g, dq, dk, dv))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut dq = vec![T::zero(); qv.len()];
    let mut dk = vec![T::zero(); kv.len()];
    let mut dv = vec![T::zero(); kv.len()];
    for (b, g, pq, pk, pv) in parts {
        for i in 0..t {
            for hh in 0..group {
                dq[qrow(b, i, g * group + hh)..][..d].copy_from_slice(&pq[(hh * t + i) * d..][..d]);
            }
            dk[krow(b, i, g)..][..d].copy_from_slice(&pk[i * d..][..d]);
            dv[krow(b, i, g)..][..d].copy_from_slice(&pv[i * d..][..d]);
        }
    }
    Ok((out(dq, a.q.dims().to_vec())?, out(dk, a.k.dims().to_vec())?, out(dv, a.v.dims().to_vec())?))
}

impl AttentionOps for CpuBackend {
    fn attention_fwd(&self, a: &AttnArgs<'_>) -> Result<(Tensor, Tensor)> {
        by_prec!(prec(&[a.q, a.k, a.v]), fwd(a))
    }
    fn attention_bwd(&self, a: &AttnArgs<'_>, o: &Tensor, lse: &Tensor, d_o: &Tensor) -> Result<AttnGrads> {
        by_prec!(prec(&[a.q, a.k, a.v, d_o]), bwd(a, o, lse, d_o))
    }
}
