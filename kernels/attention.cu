// Causal grouped-query attention with packed-row segments, f32 (attention v1: a warp per row).
//
// Layout: q [B, T, Hq, D], k/v [B, Tk, Hkv, D], o like q, lse [B, T, Hq], seg [B, T] (optional).
// Query i (absolute position i + Tk − T when decoding with a cache) sees key j when j ≤ i and,
// with segments, both carry the same id — or, with `shared_prefix`, the key's id is 4g for the
// query's group g (a preference pair's prompt).
// Forward: a warp per (b, i, head) query row, lanes splitting D (≤ 256, 8 columns a lane); an
// online softmax over the keys (running max, running sum, rescaled accumulator in registers),
// so no T×T matrix exists, and only the log-sum-exp is saved.
// Backward (FlashAttention-2's algebra, recomputing P from lse): `attn_delta` forms δ = dO·O per
// query row; `attn_bwd_dq` — a warp per query row — dq = scale·Σ_j P(dP − δ)·k_j;
// `attn_bwd_dkv` — a warp per (b, j, kv head) key row — sums over the queries and the heads
// sharing that kv head: dk = scale·Σ P(dP − δ)·q, dv = Σ P·dO. Each output has one writer.
// The tiled tensor-core variant (v2) joins beside this one.
#include "common.cuh"

// Mirrored by `AttnParams` in runtime/kiln-cuda/src/kernels.rs.
struct AttnParams {
  const float* q;
  const float* k;
  const float* v;
  const int* seg;
  const float* o;
  const float* lse;
  const float* d_o;
  const float* delta;
  float* out0;  // fwd: o; delta: δ; dq: dq; dkv: dk
  float* out1;  // fwd: lse; dkv: dv
  float* out2;
  int b, t, tk, hq, hkv, d;
  int has_seg, shared_prefix;
  float scale;
  int pad;
};

constexpr int ATT_DL = 8;  // columns per lane: D ≤ 256

__device__ __forceinline__ bool attn_visible(const AttnParams& p, int b, int i, int j) {
  if (j > i) return false;
  if (!p.has_seg) return true;
  const int si = p.seg[i64(b) * p.t + i], sj = p.seg[i64(b) * p.t + j];
  if (si == sj) return true;
  return p.shared_prefix && si >= 0 && sj >= 0 && sj % 4 == 0 && sj / 4 == si / 4;
}

__device__ __forceinline__ i64 attn_qrow(const AttnParams& p, int b, int i, int h) {
  return ((i64(b) * p.t + i) * p.hq + h) * p.d;
}
__device__ __forceinline__ i64 attn_krow(const AttnParams& p, int b, int j, int g) {
  return ((i64(b) * p.tk + j) * p.hkv + g) * p.d;
}

// Loads this lane's columns of a row (zero past D).
__device__ __forceinline__ void attn_load(float out[ATT_DL], const float* row, int d, int lane) {
  KILN_UNROLL
  for (int u = 0; u < ATT_DL; ++u) {
    const int c = lane + 32 * u;
    out[u] = c < d ? row[c] : 0.f;
  }
}
// The warp's dot product of a row held in registers with a row in memory.
__device__ __forceinline__ float attn_dot(const float a[ATT_DL], const float* row, int d, int lane) {
  float s = 0.f;
  KILN_UNROLL
  for (int u = 0; u < ATT_DL; ++u) {
    const int c = lane + 32 * u;
    if (c < d) s = fmaf(a[u], row[c], s);
  }
  return warp_sum(s);
}

KILN_KERNEL_LB(attn_fwd_f32, AttnParams, 128) {
  const int lane = lane_id();
  const i64 rows = i64(p.b) * p.t * p.hq;
  for (i64 r = i64(blockIdx.x) * 4 + warp_id(); r < rows; r += i64(gridDim.x) * 4) {
    const int h = int(r % p.hq), b = int(r / p.hq / p.t), iq = int(r / p.hq % p.t);
    const int i = iq + p.tk - p.t, g = h / (p.hq / p.hkv);
    float qv[ATT_DL], acc[ATT_DL];
    attn_load(qv, p.q + r * p.d, p.d, lane);
    KILN_UNROLL
    for (int u = 0; u < ATT_DL; ++u) acc[u] = 0.f;
    float m = -3.0e38f, sum = 0.f;
    for (int j = 0; j <= i; ++j) {
      // Segments exist only in training (T = Tk), where i is also the row index of seg.
      if (!attn_visible(p, b, i, j)) continue;
      const i64 kb = attn_krow(p, b, j, g);
      const float s = attn_dot(qv, p.k + kb, p.d, lane) * p.scale;
      const float mn = fmaxf(m, s), corr = expf(m - mn), e = expf(s - mn);
      sum = sum * corr + e;
      KILN_UNROLL
      for (int u = 0; u < ATT_DL; ++u) {
        const int c = lane + 32 * u;
        acc[u] = acc[u] * corr + (c < p.d ? e * p.v[kb + c] : 0.f);
      }
      m = mn;
    }
    KILN_UNROLL
    for (int u = 0; u < ATT_DL; ++u) {
      const int c = lane + 32 * u;
      if (c < p.d) p.out0[r * p.d + c] = acc[u] / sum;
    }
    if (lane == 0) p.out1[r] = m + logf(sum);
  }
}

KILN_KERNEL_LB(attn_delta_f32, AttnParams, 128) {
  const int lane = lane_id();
  const i64 rows = i64(p.b) * p.t * p.hq;
  for (i64 r = i64(blockIdx.x) * 4 + warp_id(); r < rows; r += i64(gridDim.x) * 4) {
    float dov[ATT_DL];
    attn_load(dov, p.d_o + r * p.d, p.d, lane);
    const float delta = attn_dot(dov, p.o + r * p.d, p.d, lane);
    if (lane == 0) p.out0[r] = delta;
  }
}

KILN_KERNEL_LB(attn_bwd_dq_f32, AttnParams, 128) {
  const int lane = lane_id();
  const i64 rows = i64(p.b) * p.t * p.hq;
  for (i64 r = i64(blockIdx.x) * 4 + warp_id(); r < rows; r += i64(gridDim.x) * 4) {
    const int h = int(r % p.hq), b = int(r / p.hq / p.t), i = int(r / p.hq % p.t);
    const int g = h / (p.hq / p.hkv);
    float qv[ATT_DL], dov[ATT_DL], acc[ATT_DL];
    attn_load(qv, p.q + r * p.d, p.d, lane);
    attn_load(dov, p.d_o + r * p.d, p.d, lane);
    KILN_UNROLL
    for (int u = 0; u < ATT_DL; ++u) acc[u] = 0.f;
    const float lse = p.lse[r], delta = p.delta[r];
    for (int j = 0; j <= i; ++j) {
      if (!attn_visible(p, b, i, j)) continue;
      const i64 kb = attn_krow(p, b, j, g);
      const float pr = expf(attn_dot(qv, p.k + kb, p.d, lane) * p.scale - lse);
      const float ds = pr * (attn_dot(dov, p.v + kb, p.d, lane) - delta) * p.scale;
      KILN_UNROLL
      for (int u = 0; u < ATT_DL; ++u) {
        const int c = lane + 32 * u;
        if (c < p.d) acc[u] = fmaf(ds, p.k[kb + c], acc[u]);
      }
    }
    KILN_UNROLL
    for (int u = 0; u < ATT_DL; ++u) {
      const int c = lane + 32 * u;
      if (c < p.d) p.out0[r * p.d + c] = acc[u];
    }
  }
}

KILN_KERNEL_LB(attn_bwd_dkv_f32, AttnParams, 128) {
  const int lane = lane_id();
  const i64 rows = i64(p.b) * p.tk * p.hkv;
  const int group = p.hq / p.hkv;
  for (i64 r = i64(blockIdx.x) * 4 + warp_id(); r < rows; r += i64(gridDim.x) * 4) {
    const int g = int(r % p.hkv), b = int(r / p.hkv / p.t), j = int(r / p.hkv % p.t);
    const i64 kb = attn_krow(p, b, j, g);
    float kv[ATT_DL], vv[ATT_DL], dk[ATT_DL], dv[ATT_DL];
    attn_load(kv, p.k + kb, p.d, lane);
    attn_load(vv, p.v + kb, p.d, lane);
    KILN_UNROLL
    for (int u = 0; u < ATT_DL; ++u) dk[u] = dv[u] = 0.f;
    for (int hh = 0; hh < group; ++hh) {
      const int h = g * group + hh;
      for (int i = j; i < p.t; ++i) {
        if (!attn_visible(p, b, i, j)) continue;
        const i64 qb = attn_qrow(p, b, i, h), qi = qb / p.d;
        const float pr = expf(attn_dot(kv, p.q + qb, p.d, lane) * p.scale - p.lse[qi]);
        const float ds = pr * (attn_dot(vv, p.d_o + qb, p.d, lane) - p.delta[qi]) * p.scale;
        KILN_UNROLL
        for (int u = 0; u < ATT_DL; ++u) {
          const int c = lane + 32 * u;
          if (c < p.d) {
            dk[u] = fmaf(ds, p.q[qb + c], dk[u]);
            dv[u] = fmaf(pr, p.d_o[qb + c], dv[u]);
          }
        }
      }
    }
    KILN_UNROLL
    for (int u = 0; u < ATT_DL; ++u) {
      const int c = lane + 32 * u;
      if (c < p.d) {
        p.out0[kb + c] = dk[u];
        p.out1[kb + c] = dv[u];
      }
    }
  }
}
