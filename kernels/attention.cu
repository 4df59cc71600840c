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

// ---- v2: the FlashAttention-2 forward on tensor cores (bf16 mma.m16n8k16, f32 accumulators) ----
// A CTA of 4 warps takes 64 query rows of one (b, head), 16 rows a warp. Q, rounded to bf16,
// stays in shared memory; K and V pass through it 32 keys at a time (V transposed, so both
// products take their B fragments with plain ldmatrix). S = Q·Kᵀ on tensor cores, then masked
// (causal, segments) and scaled in f32; the online softmax runs per row (a row's 4 threads
// combine through two shuffles); P is rounded to bf16 straight from the accumulator registers
// into the A fragments of O += P·V, as FlashAttention-2 does. Head dims up to 128 (zero-padded
// to a multiple of 16); the key loop ends at the tile's last query (causal).
constexpr int AV2_BQ = 64, AV2_BK = 32, AV2_DMAX = 128, AV2_LDQ = AV2_DMAX + 8, AV2_LDV = AV2_BK + 8;
constexpr float AV2_MASKED = -1.0e30f;

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
  for (int k0 = 0; k0 <= last && k0 < p.tk; k0 += AV2_BK) {
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
      ldmatrix_x4(af, &Qs[warp * 16 + (lane % 16)][ks * 16 + (lane / 16) * 8]);
      KILN_UNROLL
      for (int nj = 0; nj < 2; ++nj) {
        u32 r[4];
        ldmatrix_x4(r, &Ks[nj * 16 + (lane / 16) * 8 + (lane % 8)][ks * 16 + ((lane / 8) % 2) * 8]);
        const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
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
        s[nt][e] = ok ? s[nt][e] * p.scale : AV2_MASKED;
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
    for (int kk = 0; kk < 2; ++kk)
      KILN_UNROLL
      for (int dn = 0; dn < AV2_DMAX / 16; ++dn)
        if (dn * 16 < dp) {
          u32 r[4];
          ldmatrix_x4(r, &Vt[dn * 16 + (lane / 16) * 8 + (lane % 8)][kk * 16 + ((lane / 8) % 2) * 8]);
          const u32 b0[2] = {r[0], r[1]}, b1[2] = {r[2], r[3]};
          mma_16816(o[2 * dn], pa[kk], b0, bf16());
          mma_16816(o[2 * dn + 1], pa[kk], b1, bf16());
        }
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
      const float inv = 1.f / l[r];
      KILN_UNROLL
      for (int dt = 0; dt < AV2_DMAX / 8; ++dt) {
        const int c = dt * 8 + 2 * t4;
        if (c < p.d) p.out0[row + c] = o[dt][2 * r] * inv;
        if (c + 1 < p.d) p.out0[row + c + 1] = o[dt][2 * r + 1] * inv;
      }
      if (t4 == 0) p.out1[row / p.d] = m[r] + logf(l[r]);
    }
  }
}
