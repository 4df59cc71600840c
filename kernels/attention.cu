// Causal grouped-query attention with packed-row segments, f32 (attention v1: a warp per row).
//
// Layout: q [B, T, Hq, D], k/v [B, Tk, Hkv, D], o like q, lse [B, T, Hq], seg [B, T] (optional).
// Query i (absolute position i + Tk − T when decoding with a cache) sees key j when j ≤ i,
// i − j < window (a sliding window, when `window` > 0) and, with segments, both carry the same
// id — or, with `shared_prefix`, the key's id is 4g for the query's group g (a preference pair's
// prompt). With `softcap` > 0 each score s = q·k·scale becomes softcap·tanh(s/softcap) before
// the softmax (lse is of the capped scores), and the backward multiplies dS by 1 − tanh²(s/cap).
// Key loops start at the window's first key, so a window also skips the work outside it.
// Forward: a warp per (b, i, head) query row, lanes splitting D (≤ 256, 8 columns a lane); an
// online softmax over the keys (running max, running sum, rescaled accumulator in registers),
// so no T×T matrix exists, and only the log-sum-exp is saved.
// Backward (FlashAttention-2's algebra, recomputing P from lse): `attn_delta` forms δ = dO·O per
// query row; `attn_bwd_dq` — a warp per query row — dq = scale·Σ_j P(dP − δ)·k_j;
// `attn_bwd_dkv` — a warp per (b, j, kv head) key row — sums over the queries and the heads
// sharing that kv head: dk = scale·Σ P(dP − δ)·q, dv = Σ P·dO. Each output has one writer.
// v2 (below): the forward on tensor cores, FlashAttention-2's tiling.
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
  int window;     // sliding window in keys; 0: none
  float softcap;  // logit soft-cap; 0: none
  int pad;
};

constexpr int ATT_DL = 8;  // columns per lane: D ≤ 256

__device__ __forceinline__ bool attn_visible(const AttnParams& p, int b, int i, int j) {
  if (j > i) return false;
  if (p.window > 0 && i - j >= p.window) return false;
  if (!p.has_seg) return true;
  const int si = p.seg[i64(b) * p.t + i], sj = p.seg[i64(b) * p.t + j];
  if (si == sj) return true;
  return p.shared_prefix && si >= 0 && sj >= 0 && sj % 4 == 0 && sj / 4 == si / 4;
}

// The first key query i (absolute position) sees: the window's start.
__device__ __forceinline__ int attn_first(const AttnParams& p, int i) {
  return p.window > 0 && i >= p.window ? i - p.window + 1 : 0;
}
// The last query (exclusive bound, over `n` queries) that sees key j: the window's end.
__device__ __forceinline__ int attn_end(const AttnParams& p, int j, int n) {
  return p.window > 0 && j + p.window < n ? j + p.window : n;
}
// tanh inline: with the library's tanhf, ptxas 12.9 spilled 4 bytes in the f32 dk/dv kernel
// on sm_90. An odd Taylor polynomial below |z| = 1/4 (no cancellation; its next term is 3e-8 of
// the value), one exp above it, both within f32 rounding of tanh.
__device__ __forceinline__ float attn_tanh(float z) {
  const float a = fabsf(z);
  float t;
  if (a < 0.25f) {
    const float z2 = z * z;
    t = a * (1.f + z2 * (-1.f / 3.f + z2 * (2.f / 15.f + z2 * (-17.f / 315.f + z2 * (62.f / 2835.f)))));
  } else {
    const float e = expf(-2.f * fminf(a, 40.f));
    t = (1.f - e) / (1.f + e);
  }
  return copysignf(t, z);
}
// A scaled score, soft-capped; `*dcap` gets d(capped)/d(score) (1 without a cap). A window of
// one key leaves each query only itself: P = 1 whatever the score, so dS is exactly 0 (the
// tiled backward's bf16 dP − δ would leave its rounding there); dcap = 0 says so.
__device__ __forceinline__ float attn_cap(const AttnParams& p, float s, float* dcap) {
  if (p.softcap <= 0.f) {
    *dcap = p.window == 1 ? 0.f : 1.f;
    return s;
  }
  const float th = attn_tanh(s / p.softcap);
  *dcap = p.window == 1 ? 0.f : 1.f - th * th;
  return p.softcap * th;
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
    for (int j = attn_first(p, i); j <= i; ++j) {
      // Segments exist only in training (T = Tk), where i is also the row index of seg.
      if (!attn_visible(p, b, i, j)) continue;
      const i64 kb = attn_krow(p, b, j, g);
      float dcap;
      const float s = attn_cap(p, attn_dot(qv, p.k + kb, p.d, lane) * p.scale, &dcap);
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
    for (int j = attn_first(p, i); j <= i; ++j) {
      if (!attn_visible(p, b, i, j)) continue;
      const i64 kb = attn_krow(p, b, j, g);
      float dcap;
      const float pr = expf(attn_cap(p, attn_dot(qv, p.k + kb, p.d, lane) * p.scale, &dcap) - lse);
      const float ds = pr * (attn_dot(dov, p.v + kb, p.d, lane) - delta) * dcap * p.scale;
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
      for (int i = j, end = attn_end(p, j, p.t); i < end; ++i) {
        if (!attn_visible(p, b, i, j)) continue;
        const i64 qb = attn_qrow(p, b, i, h), qi = qb / p.d;
        float dcap;
        const float pr = expf(attn_cap(p, attn_dot(kv, p.q + qb, p.d, lane) * p.scale, &dcap) - p.lse[qi]);
        const float ds = pr * (attn_dot(vv, p.d_o + qb, p.d, lane) - p.delta[qi]) * dcap * p.scale;
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

// ---- v2: the FlashAttention-2 forward on tensor cores (bf16 mma.m16n8k16, f32 accumulators) ----
// A CTA of 4 warps takes 64 query rows of one (b, head), 16 rows a warp. Q, rounded to bf16,
// stays in shared memory; K and V pass through it 32 keys at a time (V transposed, so both
// products take their B fragments with plain ldmatrix). S = Q·Kᵀ on tensor cores, then masked
// (causal, window, segments), scaled and soft-capped in f32; the online softmax runs per row (a row's 4 threads
// combine through two shuffles); P is rounded to bf16 straight from the accumulator registers
// into the A fragments of O += P·V, as FlashAttention-2 does. Head dims up to 128 (zero-padded
// to a multiple of 16); the key loop starts at the tile whose keys the tile's first query's
// window reaches and ends at the tile's last query (causal).
constexpr int AV2_BQ = 64, AV2_BK = 32, AV2_DMAX = 128, AV2_LDQ = AV2_DMAX + 8, AV2_LDV = AV2_BK + 8;
constexpr float AV2_MASKED = -1.0e30f;

// Stores row half r (0: row g, 1: row g + 8) of accumulator tiles over D (eight columns a tile;
// this thread's columns 2·t4, 2·t4 + 1 of each) into the row at `dst`, times `scale`.
__device__ __forceinline__ void av2_store_row(float* dst, const float (&acc)[AV2_DMAX / 8][4], int r, int t4, int d,
                                              float scale) {
  KILN_UNROLL
  for (int dt = 0; dt < AV2_DMAX / 8; ++dt) {
    const int c = dt * 8 + 2 * t4;
    if (c < d) dst[c] = acc[dt][2 * r] * scale;
    if (c + 1 < d) dst[c + 1] = acc[dt][2 * r + 1] * scale;
  }
}

// acc[16 × D] += a · Mt[0..D)[k0..k0+16)ᵀ: the 16×16 A fragment `a` against an operand staged
// transposed (Mt's rows are the output's columns over D), two output tiles a load.
template <int LD>
__device__ __forceinline__ void av2_mma_over_d(float (&acc)[AV2_DMAX / 8][4], const u32 a[4],
                                               const unsigned short (*Mt)[LD], int k0, int dp) {
  KILN_UNROLL
  for (int dn = 0; dn < AV2_DMAX / 16; ++dn)
    if (dn * 16 < dp) {
      u32 b0[2], b1[2];
      ldmatrix_b2(b0, b1, Mt, dn * 16, k0);
      mma_16816(acc[2 * dn], a, b0, bf16());
      mma_16816(acc[2 * dn + 1], a, b1, bf16());
    }
}

KILN_KERNEL_LB(attn_fwd_v2_mma, AttnParams, 128) {
  __shared__ __align__(16) unsigned short Qs[AV2_BQ][AV2_LDQ];
  __shared__ __align__(16) unsigned short Ks[AV2_BK][AV2_LDQ];
  __shared__ __align__(16) unsigned short Vt[AV2_DMAX][AV2_LDV];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, kvh = h / (p.hq / p.hkv);
  const int q0 = blockIdx.x * AV2_BQ;
  const int dp = (p.d + 15) / 16 * 16, ksteps = dp / 16;
  for (int e = tid; e < AV2_BQ * dp; e += 128) {
    const int r = e / dp, c = e % dp, iq = q0 + r;
    const float x = iq < p.t && c < p.d ? p.q[attn_qrow(p, b, iq, h) + c] : 0.f;
    Qs[r][c] = bits16(from_f32<bf16>(x));
  }
  float o[AV2_DMAX / 8][4] = {};
  float m[2] = {-3.0e38f, -3.0e38f}, l[2] = {0.f, 0.f};
  // Query row iq sits at absolute position iq + shift (decoding with a cache: Tk > T).
  const int shift = p.tk - p.t;
  const int last = (q0 + AV2_BQ < p.t ? q0 + AV2_BQ : p.t) - 1 + shift;
  for (int k0 = attn_first(p, q0 + shift) / AV2_BK * AV2_BK; k0 <= last && k0 < p.tk; k0 += AV2_BK) {
    __syncthreads();  // the previous K/V tiles are consumed (and, the first time, Q is written)
    for (int e = tid; e < AV2_BK * dp; e += 128) {
      const int r = e / dp, c = e % dp, j = k0 + r;
      const bool in = j < p.tk && c < p.d;
      const i64 kb = attn_krow(p, b, in ? j : 0, kvh) + c;
      Ks[r][c] = bits16(from_f32<bf16>(in ? p.k[kb] : 0.f));
      Vt[c][r] = bits16(from_f32<bf16>(in ? p.v[kb] : 0.f));
    }
    __syncthreads();
    // S: this warp's 16 rows × 32 keys, four n-tiles of 8 keys.
    float s[4][4] = {};
    for (int ks = 0; ks < ksteps; ++ks) {
      u32 af[4];
      ldmatrix_a(af, Qs, warp * 16, ks * 16);
      KILN_UNROLL
      for (int nj = 0; nj < 2; ++nj) {
        u32 b0[2], b1[2];
        ldmatrix_b2(b0, b1, Ks, nj * 16, ks * 16);
        mma_16816(s[2 * nj], af, b0, bf16());
        mma_16816(s[2 * nj + 1], af, b1, bf16());
      }
    }
    // This thread holds rows g (registers 0, 1) and g + 8 (2, 3), keys 8nt + 2·t4 + {0, 1}.
    float mx[2] = {-3.0e38f, -3.0e38f};
    KILN_UNROLL
    for (int nt = 0; nt < 4; ++nt)
      KILN_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int iq = q0 + warp * 16 + g + 8 * (e >> 1), j = k0 + nt * 8 + 2 * t4 + (e & 1);
        const bool ok = iq < p.t && j < p.tk && attn_visible(p, b, iq + shift, j);
        float dcap;
        s[nt][e] = ok ? attn_cap(p, s[nt][e] * p.scale, &dcap) : AV2_MASKED;
        mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
      }
    float corr[2];
    KILN_UNROLL
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      corr[r] = expf(m[r] - mn);
      m[r] = mn;
      l[r] *= corr[r];
    }
    // P into A fragments: k-step kk covers n-tiles 2kk (registers a0 row g, a1 row g+8) and
    // 2kk + 1 (a2, a3).
    u32 pa[2][4];
    KILN_UNROLL
    for (int nt = 0; nt < 4; ++nt) {
      float pv[4];
      KILN_UNROLL
      for (int e = 0; e < 4; ++e) {
        pv[e] = s[nt][e] > AV2_MASKED ? expf(s[nt][e] - m[e >> 1]) : 0.f;
        l[e >> 1] += pv[e];
      }
      pa[nt / 2][(nt % 2) * 2] = pack2(from_f32<bf16>(pv[0]), from_f32<bf16>(pv[1]));
      pa[nt / 2][(nt % 2) * 2 + 1] = pack2(from_f32<bf16>(pv[2]), from_f32<bf16>(pv[3]));
    }
    KILN_UNROLL
    for (int dt = 0; dt < AV2_DMAX / 8; ++dt)
      KILN_UNROLL
      for (int e = 0; e < 4; ++e) o[dt][e] *= corr[e >> 1];
    KILN_UNROLL
    for (int kk = 0; kk < 2; ++kk) av2_mma_over_d(o, pa[kk], Vt, kk * 16, dp);
  }
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int iq = q0 + warp * 16 + g + 8 * r;
    if (iq < p.t) {
      const i64 row = attn_qrow(p, b, iq, h);
      av2_store_row(p.out0 + row, o, r, t4, p.d, 1.f / l[r]);
      if (t4 == 0) p.out1[row / p.d] = m[r] + logf(l[r]);
    }
  }
}

// ---- v2 backward on tensor cores (FlashAttention-2's algebra; P recomputed from lse) ----
// Two kernels, so that every output has one writer and no atomics are needed:
// `attn_bwd_dq_v2_mma` — a CTA of 2 warps takes 32 query rows of one (b, head) and walks the key
// tiles like the forward: S = Q·Kᵀ and dP = dO·Vᵀ on tensor cores, dS = P∘(dP − δ)·scale in
// registers, rounded to bf16 into A fragments, dQ += dS·K;
// `attn_bwd_dkv_v2_mma` — a CTA of 2 warps takes 32 keys of one (b, kv head) and walks the
// query tiles (16 queries) of every head sharing it: Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ, then
// dV += Pᵀ·dO and dK += dSᵀ·Q, the key rows' accumulators in registers.
// Operands whose reduction runs over keys or queries are staged transposed (Kt, Qt, dOt) so
// every B fragment is a plain ldmatrix. δ = dO·O comes from `attn_delta_f32`.
constexpr int AB_BQ = 32, AB_BK = 32, AB_QT = 16, AB_LDT = AB_BK + 8, AB_LDQT = AB_QT + 8;

// Stages rows r0.. of a [rows, D] tensor (f32, row i at base(i)) as bf16 into S[r][c] and, when
// T is given, transposed into T[c][r]; zero past `rows` and D.
template <int R, int LD, int LDT>
__device__ __forceinline__ void attn_stage(unsigned short (*S)[LD], unsigned short (*Tr)[LDT], const float* src,
                                           const AttnParams& p, int b, int r0, int nrows, int head, bool is_q,
                                           int dp) {
  for (int e = threadIdx.x; e < R * dp; e += blockDim.x) {
    const int r = e / dp, c = e % dp, i = r0 + r;
    const bool in = i < nrows && c < p.d;
    const i64 at = (is_q ? attn_qrow(p, b, in ? i : 0, head) : attn_krow(p, b, in ? i : 0, head)) + c;
    const unsigned short v = bits16(from_f32<bf16>(in ? src[at] : 0.f));
    if (S) S[r][c] = v;
    if (Tr) Tr[c][r] = v;
  }
}

KILN_KERNEL_LB(attn_bwd_dq_v2_mma, AttnParams, 64) {
  __shared__ __align__(16) unsigned short Qs[AB_BQ][AV2_LDQ];
  __shared__ __align__(16) unsigned short dOs[AB_BQ][AV2_LDQ];
  __shared__ __align__(16) unsigned short Ks[AB_BK][AV2_LDQ];
  __shared__ __align__(16) unsigned short Vs[AB_BK][AV2_LDQ];
  __shared__ __align__(16) unsigned short Kt[AV2_DMAX][AB_LDT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, kvh = h / (p.hq / p.hkv);
  const int q0 = blockIdx.x * AB_BQ;
  const int dp = (p.d + 15) / 16 * 16, ksteps = dp / 16;
  attn_stage<AB_BQ, AV2_LDQ, AB_LDT>(Qs, nullptr, p.q, p, b, q0, p.t, h, true, dp);
  attn_stage<AB_BQ, AV2_LDQ, AB_LDT>(dOs, nullptr, p.d_o, p, b, q0, p.t, h, true, dp);
  float lse[2], dlt[2];
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int iq = q0 + warp * 16 + g + 8 * r;
    const i64 row = (i64(b) * p.t + (iq < p.t ? iq : 0)) * p.hq + h;
    lse[r] = p.lse[row];
    dlt[r] = p.delta[row];
  }
  float dq[AV2_DMAX / 8][4] = {};
  const int last = (q0 + AB_BQ < p.t ? q0 + AB_BQ : p.t) - 1;
  for (int k0 = attn_first(p, q0) / AB_BK * AB_BK; k0 <= last; k0 += AB_BK) {
    __syncthreads();
    attn_stage<AB_BK, AV2_LDQ, AB_LDT>(Ks, Kt, p.k, p, b, k0, p.tk, kvh, false, dp);
    attn_stage<AB_BK, AV2_LDQ, AB_LDT>(Vs, nullptr, p.v, p, b, k0, p.tk, kvh, false, dp);
    __syncthreads();
    float s[4][4] = {}, dpv[4][4] = {};
    for (int ks = 0; ks < ksteps; ++ks) {
      u32 aq[4], ad[4];
      ldmatrix_a(aq, Qs, warp * 16, ks * 16);
      ldmatrix_a(ad, dOs, warp * 16, ks * 16);
      KILN_UNROLL
      for (int nj = 0; nj < 2; ++nj) {
        u32 k0f[2], k1f[2], v0f[2], v1f[2];
        ldmatrix_b2(k0f, k1f, Ks, nj * 16, ks * 16);
        ldmatrix_b2(v0f, v1f, Vs, nj * 16, ks * 16);
        mma_16816(s[2 * nj], aq, k0f, bf16());
        mma_16816(s[2 * nj + 1], aq, k1f, bf16());
        mma_16816(dpv[2 * nj], ad, v0f, bf16());
        mma_16816(dpv[2 * nj + 1], ad, v1f, bf16());
      }
    }
    u32 da[2][4];
    KILN_UNROLL
    for (int nt = 0; nt < 4; ++nt) {
      float ds[4];
      KILN_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int iq = q0 + warp * 16 + g + 8 * (e >> 1), j = k0 + nt * 8 + 2 * t4 + (e & 1);
        const bool ok = iq < p.t && j < p.tk && attn_visible(p, b, iq, j);
        float dcap = 0.f;
        const float pr = ok ? expf(attn_cap(p, s[nt][e] * p.scale, &dcap) - lse[e >> 1]) : 0.f;
        ds[e] = pr * (dpv[nt][e] - dlt[e >> 1]) * dcap * p.scale;
      }
      da[nt / 2][(nt % 2) * 2] = pack2(from_f32<bf16>(ds[0]), from_f32<bf16>(ds[1]));
      da[nt / 2][(nt % 2) * 2 + 1] = pack2(from_f32<bf16>(ds[2]), from_f32<bf16>(ds[3]));
    }
    KILN_UNROLL
    for (int kk = 0; kk < 2; ++kk) av2_mma_over_d(dq, da[kk], Kt, kk * 16, dp);
  }
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int iq = q0 + warp * 16 + g + 8 * r;
    if (iq < p.t) av2_store_row(p.out0 + attn_qrow(p, b, iq, h), dq, r, t4, p.d, 1.f);
  }
}

KILN_KERNEL_LB(attn_bwd_dkv_v2_mma, AttnParams, 64) {
  __shared__ __align__(16) unsigned short Ks[AB_BK][AV2_LDQ];
  __shared__ __align__(16) unsigned short Vs[AB_BK][AV2_LDQ];
  __shared__ __align__(16) unsigned short Qs[AB_QT][AV2_LDQ];
  __shared__ __align__(16) unsigned short dOs[AB_QT][AV2_LDQ];
  __shared__ __align__(16) unsigned short Qt[AV2_DMAX][AB_LDQT];
  __shared__ __align__(16) unsigned short dOt[AV2_DMAX][AB_LDQT];
  __shared__ float lse_s[AB_QT], dlt_s[AB_QT];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
  const int b = blockIdx.y / p.hkv, kvh = blockIdx.y % p.hkv, group = p.hq / p.hkv;
  const int k0 = blockIdx.x * AB_BK;
  const int dp = (p.d + 15) / 16 * 16, ksteps = dp / 16;
  attn_stage<AB_BK, AV2_LDQ, AB_LDT>(Ks, nullptr, p.k, p, b, k0, p.tk, kvh, false, dp);
  attn_stage<AB_BK, AV2_LDQ, AB_LDT>(Vs, nullptr, p.v, p, b, k0, p.tk, kvh, false, dp);
  float dk[AV2_DMAX / 8][4] = {}, dv[AV2_DMAX / 8][4] = {};
  // Causal: only queries at or after the tile's first key see it; with a window, only those
  // before the window's end of its last key.
  const int qend = attn_end(p, k0 + AB_BK - 1, p.t);
  for (int hh = 0; hh < group; ++hh) {
    const int h = kvh * group + hh;
    for (int qs = k0 / AB_QT * AB_QT; qs < qend; qs += AB_QT) {
      __syncthreads();
      attn_stage<AB_QT, AV2_LDQ, AB_LDQT>(Qs, Qt, p.q, p, b, qs, p.t, h, true, dp);
      attn_stage<AB_QT, AV2_LDQ, AB_LDQT>(dOs, dOt, p.d_o, p, b, qs, p.t, h, true, dp);
      for (int e = threadIdx.x; e < AB_QT; e += blockDim.x) {
        const i64 row = (i64(b) * p.t + (qs + e < p.t ? qs + e : 0)) * p.hq + h;
        lse_s[e] = p.lse[row];
        dlt_s[e] = p.delta[row];
      }
      __syncthreads();
      // Sᵀ, dPᵀ: this warp's 16 keys × 16 queries (two n-tiles).
      float s[2][4] = {}, dpv[2][4] = {};
      for (int ks = 0; ks < ksteps; ++ks) {
        u32 ak[4], av[4], q0f[2], q1f[2], d0f[2], d1f[2];
        ldmatrix_a(ak, Ks, warp * 16, ks * 16);
        ldmatrix_a(av, Vs, warp * 16, ks * 16);
        ldmatrix_b2(q0f, q1f, Qs, 0, ks * 16);
        ldmatrix_b2(d0f, d1f, dOs, 0, ks * 16);
        mma_16816(s[0], ak, q0f, bf16());
        mma_16816(s[1], ak, q1f, bf16());
        mma_16816(dpv[0], av, d0f, bf16());
        mma_16816(dpv[1], av, d1f, bf16());
      }
      // Registers: rows = keys (g, g + 8 of the warp's 16), columns = queries 8nt + 2·t4 + {0, 1}.
      u32 pa[4], sa[4];
      KILN_UNROLL
      for (int nt = 0; nt < 2; ++nt) {
        float pr[4], ds[4];
        KILN_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int j = k0 + warp * 16 + g + 8 * (e >> 1), qc = nt * 8 + 2 * t4 + (e & 1), iq = qs + qc;
          const bool ok = iq < p.t && j < p.tk && attn_visible(p, b, iq, j);
          float dcap = 0.f;
          pr[e] = ok ? expf(attn_cap(p, s[nt][e] * p.scale, &dcap) - lse_s[qc]) : 0.f;
          ds[e] = pr[e] * (dpv[nt][e] - dlt_s[qc]) * dcap * p.scale;
        }
        pa[nt * 2] = pack2(from_f32<bf16>(pr[0]), from_f32<bf16>(pr[1]));
        pa[nt * 2 + 1] = pack2(from_f32<bf16>(pr[2]), from_f32<bf16>(pr[3]));
        sa[nt * 2] = pack2(from_f32<bf16>(ds[0]), from_f32<bf16>(ds[1]));
        sa[nt * 2 + 1] = pack2(from_f32<bf16>(ds[2]), from_f32<bf16>(ds[3]));
      }
      av2_mma_over_d(dv, pa, dOt, 0, dp);
      av2_mma_over_d(dk, sa, Qt, 0, dp);
    }
  }
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int j = k0 + warp * 16 + g + 8 * r;
    if (j < p.tk) {
      const i64 row = attn_krow(p, b, j, kvh);
      av2_store_row(p.out0 + row, dk, r, t4, p.d, 1.f);
      av2_store_row(p.out1 + row, dv, r, t4, p.d, 1.f);
    }
  }
}
