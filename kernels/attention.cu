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
// v3 (below): forward and backward on tensor cores with FlashAttention-2's structure, reading
// 16-bit Q, K, V, O and dO as they are.
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
  int vec;        // v3: rows 16-byte aligned and D a multiple of 8 (cp.async loads)
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

// ---- v3: the FlashAttention-2 forward, 16-bit Q, K, V read as they are (mma.m16n8k16) ----
// A CTA of 8 warps takes 128 query rows of one (b, head), 16 rows a warp; the head dim is
// zero-padded to a multiple of 16, at most 128. Dynamic shared memory holds two stages of a
// 64-key K tile and V tile (16 KiB each), rows of 256 bytes whose 16-byte chunks are XOR-swizzled
// by the row's low three bits, so the 8 rows of each ldmatrix phase hit 8 distinct bank groups.
// Q passes once through the second stage into registers (the A fragments of every k-step) before
// the keys start. Tiles arrive by 16-byte cp.async, zero-filled past the sequence and the head
// dim, while the previous tile is computed: one barrier a tile. Scores go to base 2 (log2(e)
// folded into the scale) for ex2. The CTA's clean tiles (seen whole by every row) run first in
// a loop with no per-element test (`Av3Order`); in the others a warp skips a tile none of its
// rows sees (causal, window) and masks each score (causal, window, the keys' end, segments: the
// keys' ids staged with the tile, the rows' held in registers). P is rounded to T from the accumulators into the A fragments of
// O += P·V; V's B fragments come from its row-major tile by ldmatrix.trans. Head dims that are
// not a multiple of 8, or tensors not 16-byte aligned, take plain loads into the same layout
// (`p.vec` = 0). Query tiles run longest first (causal: the last tiles see the most keys).
constexpr int AV3_BQ = 128, AV3_BK = 64, AV3_D = 128, AV3_THREADS = 256;
constexpr int AV3_TILE = AV3_BK * AV3_D;  // 16-bit elements of one K or V tile
// Bytes of dynamic shared memory (`ATTN_V3_SMEM` in runtime/kiln-cuda/src/backend/attention.rs):
// two stages of K and V, then each stage's 64 key segment ids.
constexpr int AV3_SMEM = 2 * 2 * AV3_TILE * 2 + 2 * AV3_BK * 4;
static_assert(AV3_SMEM <= 99 * 1024, "v3 attention fits the 99 KiB a block of sm_86/89/120");
constexpr float AV3_LOG2E = 1.4426950408889634f, AV3_LN2 = 0.6931471805599453f;

// Offset of element (row, col) of a swizzled tile (128 columns a row).
__device__ __forceinline__ int av3_sw(int row, int col) {
  return row * AV3_D + ((((col >> 3) ^ row) & 7) | (col >> 3 & 8)) * 8 + (col & 7);
}

// Rows [r0, r0 + R) of a tensor whose row r starts at base + r·stride, columns [0, dp), into a
// swizzled tile: zero past `rows` and `d`. cp.async when `vec`; otherwise plain loads, out of
// line so that the key loops' SASS holds only the path they take on aligned head dims.
template <class T, int R, int NT>
__device__ __noinline__ void av3_stage_plain(unsigned short* tile, const T* base, i64 stride, int r0, int rows, int d,
                                             int dp) {
  for (int e = threadIdx.x; e < R * AV3_D; e += NT) {
    const int r = e >> 7, c = e & 127;
    if (c < dp) {
      const bool in = r0 + r < rows && c < d;
      tile[av3_sw(r, c)] = in ? bits16(base[(r0 + r) * stride + c]) : (unsigned short)0;
    }
  }
}
template <class T, int R, int NT = AV3_THREADS>
__device__ __forceinline__ void av3_stage(unsigned short* tile, const T* base, i64 stride, int r0, int rows,
                                          int d, int dp, bool vec) {
  if (!vec) return av3_stage_plain<T, R, NT>(tile, base, stride, r0, rows, d, dp);
  KILN_UNROLL
  for (int i = 0; i < R * 16 / NT; ++i) {
    const int e = threadIdx.x + i * NT, r = e >> 4, c = (e & 15) * 8;
    if (c < dp) {
      const bool in = r0 + r < rows && c < d;
      cp_async_16_zfill(tile + av3_sw(r, c), in ? base + (r0 + r) * stride + c : base, in);
    }
  }
}

// A compile-time flag for the generic lambdas of the key loops.
template <bool B>
struct av3_flag {
  static constexpr bool value = B;
};

// Whether absolute query i sees key j (both in range), their segment ids si and sj.
__device__ __forceinline__ bool av3_sees(const AttnParams& p, int i, int j, int si, int sj) {
  if (j > i || (p.window > 0 && i - j >= p.window)) return false;
  return !p.has_seg || si == sj ||
         (p.shared_prefix && si >= 0 && sj >= 0 && (sj & 3) == 0 && (sj >> 2) == (si >> 2));
}
// Queries [i0, i1] and keys [j0, j1] (absolute): no pair visible (causal, window; i1 < i0: rows
// past T).
__device__ __forceinline__ bool av3_none(const AttnParams& p, int i0, int i1, int j0, int j1) {
  return i1 < i0 || j0 > i1 || (p.window > 0 && j1 <= i0 - p.window);
}

// Two outputs of one row into OT (one 8-byte or 4-byte store when `pair`).
__device__ __forceinline__ void av3_put(float* dst, float a, float b, bool pair, bool second) {
  if (pair) {
    store_f32x2(dst, a, b);
  } else {
    dst[0] = a;
    if (second) dst[1] = b;
  }
}
template <class T>
__device__ __forceinline__ void av3_put(T* dst, float a, float b, bool pair, bool second) {
  if (pair) {
    *reinterpret_cast<u32*>(dst) = pack2(from_f32<T>(a), from_f32<T>(b));
  } else {
    dst[0] = from_f32<T>(a);
    if (second) dst[1] = from_f32<T>(b);
  }
}

// Per-thread parts of the ldmatrix addresses into swizzled tiles, computed once: a fragment's
// first row is a multiple of 8 and its first column k0 a multiple of 16, so the row's low bits
// are the lane's and the swizzled chunk is (k0 / 8) ^ (c ^ lane % 8), c the lane's chunk (0, 1).
struct Av3Lane {
  int arow, ax;  // A fragments: rows lane % 16, chunk lane / 16
  int brow, bx;  // B fragments of two n-tiles (rows = n): rows (lane / 16)·8 + lane % 8, chunk (lane / 8) % 2
  int trow, tx;  // the same by ldmatrix.trans (rows = k): rows ((lane / 8) % 2)·8 + lane % 8, chunk lane / 16
};
__device__ __forceinline__ Av3Lane av3_lane() {
  const int l = int(lane_id()), x = l & 7, h = l >> 4, o = (l >> 3) & 1;
  return {(l & 15) * AV3_D, h ^ x, (h * 8 + x) * AV3_D, o ^ x, (o * 8 + x) * AV3_D, h ^ x};
}
// The A fragment of rows r0.. at column k0; the B fragments of two n-tiles at rows n0.. (keys
// against a row-major operand's d), or by ldmatrix.trans with rows k0.. as k and columns n0.. as n.
__device__ __forceinline__ void av3_lda(u32 a[4], const unsigned short* tile, const Av3Lane& L, int r0, int k0) {
  ldmatrix_x4(a, tile + r0 * AV3_D + L.arow + (((k0 >> 3) ^ L.ax) << 3));
}
__device__ __forceinline__ void av3_ldb(u32 b0[2], u32 b1[2], const unsigned short* tile, const Av3Lane& L, int n0,
                                        int k0) {
  u32 r[4];
  ldmatrix_x4(r, tile + n0 * AV3_D + L.brow + (((k0 >> 3) ^ L.bx) << 3));
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}
__device__ __forceinline__ void av3_ldbt(u32 b0[2], u32 b1[2], const unsigned short* tile, const Av3Lane& L, int k0,
                                         int n0) {
  u32 r[4];
  ldmatrix_x4_trans(r, tile + k0 * AV3_D + L.trow + (((n0 >> 3) ^ L.tx) << 3));
  b0[0] = r[0], b0[1] = r[1], b1[0] = r[2], b1[1] = r[3];
}
// acc[16 × D] += a · tile[k0..k0+16)[0..D): the A fragment against a row-major tile.
template <class T>
__device__ __forceinline__ void av3_mma_d(float (&acc)[AV3_D / 8][4], const u32 a[4], const unsigned short* tile,
                                          const Av3Lane& L, int k0, int ksteps) {
  KILN_UNROLL
  for (int dn = 0; dn < AV3_D / 16; ++dn)
    if (dn < ksteps) {
      u32 b0[2], b1[2];
      av3_ldbt(b0, b1, tile, L, k0, dn * 16);
      mma_16816(acc[2 * dn], a, b0, T());
      mma_16816(acc[2 * dn + 1], a, b1, T());
    }
}
// The key tiles (of 64) from kfirst that a query block with absolute rows [qa, qz] walks, in
// the order of the key loops: first the clean tiles [c0, c1), which every row sees whole (at or
// before the first row, inside the last row's window, no segments, no cap), then the others
// (the window's edge below c0, the diagonal from c1). The two kinds run in two loops, the clean
// one with no per-element test and no branch on the mask.
struct Av3Order {
  int kfirst, c0, c1, nclean, nlow;
  __device__ __forceinline__ int at(int it) const {
    const int m = it - nclean;
    return it < nclean ? c0 + it * 64 : m < nlow ? kfirst + m * 64 : c1 + (m - nlow) * 64;
  }
};
__device__ __forceinline__ Av3Order av3_order(const AttnParams& p, int kfirst, int qa, int qz) {
  int c0 = kfirst, c1 = kfirst;
  if (!p.has_seg && p.softcap <= 0.f) {
    c1 = imin(qa + 1, p.tk) / 64 * 64;
    if (p.window > 0) c0 = imax(kfirst, (imax(qz - p.window + 1, 0) + 63) / 64 * 64);
    c1 = imax(c1, c0);
  }
  return {kfirst, c0, c1, (c1 - c0) / 64, (c0 - kfirst) / 64};
}

template <class T, class OT>
__device__ __forceinline__ void attn_fwd_v3(const AttnParams& p) {
  unsigned short* sm = reinterpret_cast<unsigned short*>(dyn_smem());
  int* kseg = reinterpret_cast<int*>(sm + 4 * AV3_TILE);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const Av3Lane L = av3_lane();
  const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, kvh = h / (p.hq / p.hkv);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * AV3_BQ;
  const int dp = (p.d + 15) & ~15, ksteps = dp >> 4;
  const bool vec = p.vec != 0;
  const T* qb = reinterpret_cast<const T*>(p.q) + (i64(b) * p.t * p.hq + h) * p.d;
  const i64 kvoff = (i64(b) * p.tk * p.hkv + kvh) * p.d;
  const T* kb = reinterpret_cast<const T*>(p.k) + kvoff;
  const T* vb = reinterpret_cast<const T*>(p.v) + kvoff;
  const i64 qstride = i64(p.hq) * p.d, kstride = i64(p.hkv) * p.d;
  // Query row iq sits at absolute position iq + shift (decoding with a cache: Tk > T).
  const int shift = p.tk - p.t, rlo = q0 + warp * 16;
  const int kfirst = attn_first(p, q0 + shift) / AV3_BK * AV3_BK;
  const int kend = imin(imin(q0 + AV3_BQ, p.t) + shift, p.tk);
  const int ntiles = (kend - kfirst + AV3_BK - 1) / AV3_BK;
  // This warp's rows (absolute positions; r1 < r0 when all lie past T) and their segment ids.
  const int r0 = rlo + shift, r1 = imin(rlo + 15, p.t - 1) + shift;
  int qseg[2] = {0, 0};
  if (p.has_seg) {
    KILN_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int iq = rlo + g + 8 * r;
      qseg[r] = iq < p.t ? p.seg[i64(b) * p.t + iq] : -1;
    }
  }
  // K, V and the keys' segment ids of the tile at k0 into stage st.
  auto load_kv = [&](int st, int k0) {
    av3_stage<T, AV3_BK>(sm + 2 * st * AV3_TILE, kb, kstride, k0, p.tk, p.d, dp, vec);
    av3_stage<T, AV3_BK>(sm + (2 * st + 1) * AV3_TILE, vb, kstride, k0, p.tk, p.d, dp, vec);
    if (p.has_seg && tid < AV3_BK) kseg[st * AV3_BK + tid] = k0 + tid < p.tk ? p.seg[i64(b) * p.t + k0 + tid] : -2;
  };
  unsigned short* qs = sm + 2 * AV3_TILE;
  av3_stage<T, AV3_BQ>(qs, qb, qstride, q0, p.t, p.d, dp, vec);
  const Av3Order ord = av3_order(p, kfirst, q0 + shift, imin(q0 + AV3_BQ, p.t) - 1 + shift);
  load_kv(0, ord.at(0));
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  u32 qf[AV3_D / 16][4];
  KILN_UNROLL
  for (int ks = 0; ks < AV3_D / 16; ++ks)
    if (ks < ksteps) av3_lda(qf[ks], qs, L, warp * 16, ks * 16);
  __syncthreads();  // Q's stage is free for the second tile

  float o[AV3_D / 8][4] = {};
  const float ninf = __uint_as_float(0xff800000u);
  float m[2] = {ninf, ninf}, l[2] = {0.f, 0.f};
  const float sl2 = p.scale * AV3_LOG2E;
  auto step = [&](int it, auto clean) {
    constexpr bool CLEAN = decltype(clean)::value;
    const int k0 = ord.at(it), st = it & 1;
    if (it > 0) {
      cp_async_wait<0>();
      __syncthreads();  // tile it landed; every warp is done with the other stage
    }
    if (it + 1 < ntiles) {
      load_kv(st ^ 1, ord.at(it + 1));
      cp_async_commit();
    }
    // No row of this warp sees the tile: all its keys come after the rows, or before every
    // row's window (or the rows lie past T).
    if (!CLEAN && av3_none(p, r0, r1, k0, k0 + AV3_BK - 1)) return;
    const unsigned short* kt = sm + 2 * st * AV3_TILE;
    const unsigned short* vt = kt + AV3_TILE;
    float s[AV3_BK / 8][4] = {};
    KILN_UNROLL
    for (int ks = 0; ks < AV3_D / 16; ++ks) {
      if (ks < ksteps) {
        KILN_UNROLL
        for (int nj = 0; nj < AV3_BK / 16; ++nj) {
          u32 b0[2], b1[2];
          av3_ldb(b0, b1, kt, L, nj * 16, ks * 16);
          mma_16816(s[2 * nj], qf[ks], b0, T());
          mma_16816(s[2 * nj + 1], qf[ks], b1, T());
        }
      }
    }
    // This thread holds rows g (registers 0, 1) and g + 8 (2, 3), keys 8nt + 2·t4 + {0, 1}.
    float mx[2] = {ninf, ninf};
    const int* sg = kseg + st * AV3_BK;
    KILN_UNROLL
    for (int nt = 0; nt < AV3_BK / 8; ++nt)
      KILN_UNROLL
      for (int e = 0; e < 4; ++e) {
        if (CLEAN) {
          s[nt][e] *= sl2;
        } else {
          const int i = r0 + g + 8 * (e >> 1), jj = nt * 8 + 2 * t4 + (e & 1), j = k0 + jj;
          const bool ok = j < p.tk && av3_sees(p, i, j, qseg[e >> 1], sg[jj]);
          float dcap;
          s[nt][e] = ok ? attn_cap(p, s[nt][e] * p.scale, &dcap) * AV3_LOG2E : ninf;
        }
        mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
      }
    // The online softmax; a row that has seen no key yet keeps m = −∞ and takes 0 as its base.
    float base[2];
    KILN_UNROLL
    for (int r = 0; r < 2; ++r) {
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
      mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
      const float mn = fmaxf(m[r], mx[r]);
      base[r] = mn == ninf ? 0.f : mn;
      const float corr = exp2_ftz(m[r] - base[r]);
      m[r] = mn;
      l[r] *= corr;
      KILN_UNROLL
      for (int dt = 0; dt < AV3_D / 8; ++dt) {
        o[dt][2 * r] *= corr;
        o[dt][2 * r + 1] *= corr;
      }
    }
    // P into A fragments: key step kk covers n-tiles 2kk (a0 row g, a1 row g + 8) and 2kk + 1.
    u32 pa[AV3_BK / 16][4];
    KILN_UNROLL
    for (int nt = 0; nt < AV3_BK / 8; ++nt) {
      float pv[4];
      KILN_UNROLL
      for (int e = 0; e < 4; ++e) {
        pv[e] = exp2_ftz(s[nt][e] - base[e >> 1]);
        l[e >> 1] += pv[e];
      }
      pa[nt / 2][(nt % 2) * 2] = pack2(from_f32<T>(pv[0]), from_f32<T>(pv[1]));
      pa[nt / 2][(nt % 2) * 2 + 1] = pack2(from_f32<T>(pv[2]), from_f32<T>(pv[3]));
    }
    KILN_UNROLL
    for (int kk = 0; kk < AV3_BK / 16; ++kk) av3_mma_d<T>(o, pa[kk], vt, L, kk * 16, ksteps);
  };
  int it = 0;
  for (; it < ord.nclean; ++it) step(it, av3_flag<true>());
  for (; it < ntiles; ++it) step(it, av3_flag<false>());
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  OT* out = reinterpret_cast<OT*>(p.out0);
  const bool pairs = (p.d & 1) == 0;
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int iq = rlo + g + 8 * r;
    if (iq < p.t) {
      const i64 row = (i64(b) * p.t + iq) * p.hq + h;
      const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
      KILN_UNROLL
      for (int dt = 0; dt < AV3_D / 8; ++dt) {
        const int c = dt * 8 + 2 * t4;
        if (c < p.d) av3_put(out + row * p.d + c, o[dt][2 * r] * inv, o[dt][2 * r + 1] * inv, pairs, c + 1 < p.d);
      }
      if (t4 == 0) p.out1[row] = (m[r] + log2f(l[r])) * AV3_LN2;
    }
  }
}

KILN_KERNEL_LB(attn_fwd_v3_mma_bf16, AttnParams, AV3_THREADS) { attn_fwd_v3<bf16, bf16>(p); }
KILN_KERNEL_LB(attn_fwd_v3_mma_f16, AttnParams, AV3_THREADS) { attn_fwd_v3<f16, f16>(p); }
// f32 activations: Q, K, V rounded to bf16 by the caller, the output kept in f32.
KILN_KERNEL_LB(attn_fwd_v3_mma_bf16_f32, AttnParams, AV3_THREADS) { attn_fwd_v3<bf16, float>(p); }

// ---- v3 backward: FlashAttention-2's algebra on tensor cores, 16-bit operands as they are ----
// Two kernels, so that every output has one writer: no atomics, the same bits on every run.
// `attn_bwd_dq_v3_*`: a CTA of 4 warps takes 64 query rows of one (b, head), 16 a warp, forms
// δ = dO·O for them (written for the second kernel), then walks the key tiles as the forward
// does (64 keys, two cp.async stages): S = Q·Kᵀ and dP = dO·Vᵀ, P = exp2(S·scale·log2 e −
// lse·log2 e), dS = P∘(dP − δ)·scale rounded into A fragments, dQ += dS·K.
// `attn_bwd_dkv_v3_*`: a CTA of 4 warps takes 64 keys of one (b, kv head), 16 a warp, and walks
// the 64-query tiles of every head sharing it (two stages of Q, dO, lse, δ and segment ids):
// Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ in 32-query halves, then dV += Pᵀ·dO and dK += dSᵀ·Q, Pᵀ and dSᵀ
// going from the accumulators straight into A fragments. Seven products per score against
// FlashAttention-2's five (it adds dQ up with atomics): the price of determinism. Clean tiles
// first and alone, skips and masks as in the forward; rows past T get lse = +∞, so P = 0.
constexpr int AB3_B = 64, AB3_THREADS = 128, AB3_TILE = AB3_B * AV3_D;
// Dynamic shared memory (`ATTN_V3_DQ_SMEM`, `ATTN_V3_DKV_SMEM` in backend/attention.rs).
constexpr int AB3_DQ_SMEM = 6 * AB3_TILE * 2 + 2 * AB3_B * 4;
constexpr int AB3_DKV_SMEM = 6 * AB3_TILE * 2 + 2 * 3 * AB3_B * 4;
static_assert(AB3_DQ_SMEM <= 99 * 1024 && AB3_DKV_SMEM <= 99 * 1024, "the v3 backward fits 99 KiB a block");

// Row half r of accumulators over D, times `scale`, into the row at dst.
template <class OT>
__device__ __forceinline__ void av3_store(OT* dst, const float (&acc)[AV3_D / 8][4], int r, int d, float scale) {
  const int t4 = lane_id() & 3;
  KILN_UNROLL
  for (int dt = 0; dt < AV3_D / 8; ++dt) {
    const int c = dt * 8 + 2 * t4;
    if (c < d) av3_put(dst + c, acc[dt][2 * r] * scale, acc[dt][2 * r + 1] * scale, (d & 1) == 0, c + 1 < d);
  }
}
// P (and dS, from dP, δ and the scale) of one score: s the raw product, l2 = lse·log2 e.
__device__ __forceinline__ float av3_p(const AttnParams& p, float s, float l2, bool ok, bool plain, float* dcap) {
  if (plain) {
    *dcap = 1.f;
    return ok ? exp2_ftz(s * (p.scale * AV3_LOG2E) - l2) : 0.f;
  }
  *dcap = 0.f;
  return ok ? exp2_ftz(attn_cap(p, s * p.scale, dcap) * AV3_LOG2E - l2) : 0.f;
}

template <class T, class OT>
__device__ __forceinline__ void attn_bwd_dq_v3(const AttnParams& p) {
  unsigned short* sm = reinterpret_cast<unsigned short*>(dyn_smem());
  unsigned short *qs = sm, *ds = sm + AB3_TILE;  // Q, dO; then two stages of K, V
  int* kseg = reinterpret_cast<int*>(sm + 6 * AB3_TILE);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2;
  const Av3Lane L = av3_lane();
  const int b = blockIdx.y / p.hq, h = blockIdx.y % p.hq, kvh = h / (p.hq / p.hkv);
  const int q0 = (gridDim.x - 1 - blockIdx.x) * AB3_B, rlo = q0 + warp * 16;
  const int dp = (p.d + 15) & ~15, ksteps = dp >> 4;
  const bool vec = p.vec != 0;
  const i64 qoff = (i64(b) * p.t * p.hq + h) * p.d, kvoff = (i64(b) * p.tk * p.hkv + kvh) * p.d;
  const i64 qstride = i64(p.hq) * p.d, kstride = i64(p.hkv) * p.d;
  const T* kb = reinterpret_cast<const T*>(p.k) + kvoff;
  const T* vb = reinterpret_cast<const T*>(p.v) + kvoff;
  const int kfirst = attn_first(p, q0) / AB3_B * AB3_B, kend = imin(q0 + AB3_B, p.t);
  const int ntiles = (kend - kfirst + AB3_B - 1) / AB3_B;
  const int r0 = rlo, r1 = imin(rlo + 15, p.t - 1);
  auto load_kv = [&](int st, int k0) {
    av3_stage<T, AB3_B, AB3_THREADS>(sm + (2 + 2 * st) * AB3_TILE, kb, kstride, k0, p.tk, p.d, dp, vec);
    av3_stage<T, AB3_B, AB3_THREADS>(sm + (3 + 2 * st) * AB3_TILE, vb, kstride, k0, p.tk, p.d, dp, vec);
    if (p.has_seg && tid < AB3_B) kseg[st * AB3_B + tid] = k0 + tid < p.tk ? p.seg[i64(b) * p.t + k0 + tid] : -2;
  };
  av3_stage<T, AB3_B, AB3_THREADS>(qs, reinterpret_cast<const T*>(p.q) + qoff, qstride, q0, p.t, p.d, dp, vec);
  av3_stage<T, AB3_B, AB3_THREADS>(ds, reinterpret_cast<const T*>(p.d_o) + qoff, qstride, q0, p.t, p.d, dp, vec);
  const Av3Order ord = av3_order(p, kfirst, q0, imin(q0 + AB3_B, p.t) - 1);
  load_kv(0, ord.at(0));
  cp_async_commit();
  // δ = dO·O of this warp's 16 rows (lanes over D, O from global memory while the tiles land);
  // this thread keeps rows g and g + 8, with their lse (base 2) and segment ids.
  float dlt[2] = {0.f, 0.f}, l2[2];
  const T* ob = reinterpret_cast<const T*>(p.o) + qoff;
  const T* dob = reinterpret_cast<const T*>(p.d_o) + qoff;
  for (int r = 0; r < 16; ++r) {
    float acc = 0.f;
    if (rlo + r < p.t) {
      for (int c = lane; c < p.d; c += 32)
        acc = fmaf(to_f32<T>(ob[(rlo + r) * qstride + c]), to_f32<T>(dob[(rlo + r) * qstride + c]), acc);
    }
    const float v = warp_sum(acc);
    if (r == g) dlt[0] = v;
    if (r == g + 8) dlt[1] = v;
    if (lane == 0 && rlo + r < p.t) p.out2[(i64(b) * p.t + rlo + r) * p.hq + h] = v;
  }
  int qseg[2] = {0, 0};
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int iq = rlo + g + 8 * r;
    const i64 row = (i64(b) * p.t + (iq < p.t ? iq : 0)) * p.hq + h;
    l2[r] = iq < p.t ? p.lse[row] * AV3_LOG2E : __uint_as_float(0x7f800000u);
    if (p.has_seg) qseg[r] = iq < p.t ? p.seg[i64(b) * p.t + iq] : -1;
  }
  float dq[AV3_D / 8][4] = {};
  auto step = [&](int it, auto clean) {
    constexpr bool CLEAN = decltype(clean)::value;
    const int k0 = ord.at(it), st = it & 1;
    cp_async_wait<0>();
    __syncthreads();  // tile it landed; every warp is done with the other stage
    if (it + 1 < ntiles) {
      load_kv(st ^ 1, ord.at(it + 1));
      cp_async_commit();
    }
    const unsigned short* kt = sm + (2 + 2 * st) * AB3_TILE;
    const unsigned short* vt = kt + AB3_TILE;
    const int* sg = kseg + st * AB3_B;
    // In 32-key halves (fewer live registers: sm_120's ptxas spilled the 64-key form).
    KILN_UNROLL
    for (int half = 0; half < 2; ++half) {
      const int j0 = k0 + half * 32;
      if (!CLEAN && av3_none(p, r0, r1, j0, j0 + 31)) continue;
      float s[4][4] = {}, dpv[4][4] = {};
      KILN_UNROLL
      for (int ks = 0; ks < AV3_D / 16; ++ks) {
        if (ks < ksteps) {
          u32 aq[4], ad[4];
          av3_lda(aq, qs, L, warp * 16, ks * 16);
          av3_lda(ad, ds, L, warp * 16, ks * 16);
          KILN_UNROLL
          for (int nj = 0; nj < 2; ++nj) {
            u32 b0[2], b1[2];
            av3_ldb(b0, b1, kt, L, half * 32 + nj * 16, ks * 16);
            mma_16816(s[2 * nj], aq, b0, T());
            mma_16816(s[2 * nj + 1], aq, b1, T());
            av3_ldb(b0, b1, vt, L, half * 32 + nj * 16, ks * 16);
            mma_16816(dpv[2 * nj], ad, b0, T());
            mma_16816(dpv[2 * nj + 1], ad, b1, T());
          }
        }
      }
      // Rows g (registers 0, 1) and g + 8 (2, 3), keys 8nt + 2·t4 + {0, 1} of the half.
      u32 da[2][4];
      KILN_UNROLL
      for (int nt = 0; nt < 4; ++nt) {
        float v[4];
        KILN_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int i = r0 + g + 8 * (e >> 1), jj = half * 32 + nt * 8 + 2 * (lane & 3) + (e & 1), j = k0 + jj;
          const bool ok = CLEAN || (j < p.tk && av3_sees(p, i, j, qseg[e >> 1], sg[jj]));
          float dcap;
          const float pr = av3_p(p, s[nt][e], l2[e >> 1], ok, CLEAN, &dcap);
          v[e] = pr * (dpv[nt][e] - dlt[e >> 1]) * dcap * p.scale;
        }
        da[nt / 2][(nt % 2) * 2] = pack2(from_f32<T>(v[0]), from_f32<T>(v[1]));
        da[nt / 2][(nt % 2) * 2 + 1] = pack2(from_f32<T>(v[2]), from_f32<T>(v[3]));
      }
      KILN_UNROLL
      for (int kk = 0; kk < 2; ++kk) av3_mma_d<T>(dq, da[kk], kt, L, half * 32 + kk * 16, ksteps);
    }
  };
  int it = 0;
  for (; it < ord.nclean; ++it) step(it, av3_flag<true>());
  for (; it < ntiles; ++it) step(it, av3_flag<false>());
  cp_async_wait<0>();
  OT* out = reinterpret_cast<OT*>(p.out0);
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int iq = rlo + g + 8 * r;
    if (iq < p.t) av3_store(out + qoff + iq * qstride, dq, r, p.d, 1.f);
  }
}

template <class T, class OT>
__device__ __forceinline__ void attn_bwd_dkv_v3(const AttnParams& p) {
  unsigned short* sm = reinterpret_cast<unsigned short*>(dyn_smem());
  unsigned short *ks_ = sm, *vs = sm + AB3_TILE;  // K, V; then two stages of Q, dO
  float* fl = reinterpret_cast<float*>(sm + 6 * AB3_TILE);  // per stage: lse·log2 e, δ, seg ids
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
  const Av3Lane L = av3_lane();
  const int b = blockIdx.y / p.hkv, kvh = blockIdx.y % p.hkv, group = p.hq / p.hkv;
  const int k0 = (gridDim.x - 1 - blockIdx.x) * AB3_B;
  const int dp = (p.d + 15) & ~15, ksteps = dp >> 4;
  const bool vec = p.vec != 0;
  const i64 kvoff = (i64(b) * p.tk * p.hkv + kvh) * p.d, kstride = i64(p.hkv) * p.d, qstride = i64(p.hq) * p.d;
  // Query tiles that see these keys: from the tile holding key k0 (causal) to the window's end.
  const int qfirst = k0 / AB3_B * AB3_B, qend = attn_end(p, imin(k0 + AB3_B, p.tk) - 1, p.t);
  const int nq = (qend - qfirst + AB3_B - 1) / AB3_B, ntiles = nq * group;
  const int j0 = k0 + warp * 16, j1 = imin(j0 + 15, p.tk - 1);
  // Clean query tiles [qc0, qc1) see every key of the block whole (from the block's last key,
  // ending by T and inside its first key's window; no segments, no cap): every head's clean
  // tiles first, then the others (the diagonal below qc0, the window's edge from qc1).
  int qc0 = qfirst, qc1 = qfirst;
  if (!p.has_seg && p.softcap <= 0.f && k0 + AB3_B <= p.tk) {
    qc0 = imax(qfirst, (k0 + AB3_B - 1 + AB3_B - 1) / AB3_B * AB3_B);
    qc1 = p.t / AB3_B * AB3_B;
    if (p.window > 0) qc1 = imin(qc1, k0 + p.window - AB3_B >= 0 ? (k0 + p.window - AB3_B) / AB3_B * AB3_B + AB3_B : 0);
    qc1 = imax(qc1, qc0);
  }
  const int nclean = (qc1 - qc0) / AB3_B, nlow = (qc0 - qfirst) / AB3_B, nmask = nq - nclean;
  // Tile it of the walk: (head within the group, first query).
  auto tile_at = [&](int it, int* hh) {
    if (it < nclean * group) {
      *hh = it / nclean;
      return qc0 + it % nclean * AB3_B;
    }
    const int m = it - nclean * group, idx = m % nmask;
    *hh = m / nmask;
    return idx < nlow ? qfirst + idx * AB3_B : qc1 + (idx - nlow) * AB3_B;
  };
  auto load_q = [&](int st, int it) {
    int hh;
    const int q0 = tile_at(it, &hh), h = kvh * group + hh;
    const i64 qoff = (i64(b) * p.t * p.hq + h) * p.d;
    av3_stage<T, AB3_B, AB3_THREADS>(sm + (2 + 2 * st) * AB3_TILE, reinterpret_cast<const T*>(p.q) + qoff, qstride,
                                     q0, p.t, p.d, dp, vec);
    av3_stage<T, AB3_B, AB3_THREADS>(sm + (3 + 2 * st) * AB3_TILE, reinterpret_cast<const T*>(p.d_o) + qoff,
                                     qstride, q0, p.t, p.d, dp, vec);
    if (tid < AB3_B) {
      const int iq = q0 + tid;
      const i64 row = (i64(b) * p.t + (iq < p.t ? iq : 0)) * p.hq + h;
      float* f = fl + st * 3 * AB3_B;
      f[tid] = iq < p.t ? p.lse[row] * AV3_LOG2E : __uint_as_float(0x7f800000u);
      f[AB3_B + tid] = iq < p.t ? p.delta[row] : 0.f;
      reinterpret_cast<int*>(f)[2 * AB3_B + tid] = p.has_seg && iq < p.t ? p.seg[i64(b) * p.t + iq] : -1;
    }
  };
  av3_stage<T, AB3_B, AB3_THREADS>(ks_, reinterpret_cast<const T*>(p.k) + kvoff, kstride, k0, p.tk, p.d, dp, vec);
  av3_stage<T, AB3_B, AB3_THREADS>(vs, reinterpret_cast<const T*>(p.v) + kvoff, kstride, k0, p.tk, p.d, dp, vec);
  if (ntiles > 0) load_q(0, 0);
  cp_async_commit();
  int kseg[2] = {0, 0};
  if (p.has_seg) {
    KILN_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int j = j0 + g + 8 * r;
      kseg[r] = j < p.tk ? p.seg[i64(b) * p.t + j] : -2;
    }
  }
  float dk[AV3_D / 8][4] = {}, dv[AV3_D / 8][4] = {};
  auto step = [&](int it, auto clean) {
    constexpr bool CLEAN = decltype(clean)::value;
    int hh;
    const int st = it & 1, q0 = tile_at(it, &hh);
    cp_async_wait<0>();
    __syncthreads();
    if (it + 1 < ntiles) {
      load_q(st ^ 1, it + 1);
      cp_async_commit();
    }
    const unsigned short* qt = sm + (2 + 2 * st) * AB3_TILE;
    const unsigned short* dt = qt + AB3_TILE;
    const float* f = fl + st * 3 * AB3_B;
    const int* qsg = reinterpret_cast<const int*>(f) + 2 * AB3_B;
    KILN_UNROLL
    for (int half = 0; half < 2; ++half) {
      const int i0 = q0 + half * 32, i1 = imin(i0 + 31, p.t - 1);
      if (!CLEAN && av3_none(p, i0, i1, j0, j1)) continue;
      // Sᵀ, dPᵀ: this warp's 16 keys × 32 queries.
      float s[4][4] = {}, dpv[4][4] = {};
      KILN_UNROLL
      for (int ks = 0; ks < AV3_D / 16; ++ks) {
        if (ks < ksteps) {
          u32 ak[4], av[4];
          av3_lda(ak, ks_, L, warp * 16, ks * 16);
          av3_lda(av, vs, L, warp * 16, ks * 16);
          KILN_UNROLL
          for (int nj = 0; nj < 2; ++nj) {
            u32 b0[2], b1[2];
            av3_ldb(b0, b1, qt, L, half * 32 + nj * 16, ks * 16);
            mma_16816(s[2 * nj], ak, b0, T());
            mma_16816(s[2 * nj + 1], ak, b1, T());
            av3_ldb(b0, b1, dt, L, half * 32 + nj * 16, ks * 16);
            mma_16816(dpv[2 * nj], av, b0, T());
            mma_16816(dpv[2 * nj + 1], av, b1, T());
          }
        }
      }
      // Rows = keys (g, g + 8 of the warp's 16), columns = queries 8nt + 2·t4 + {0, 1}.
      u32 pa[2][4], sa[2][4];
      KILN_UNROLL
      for (int nt = 0; nt < 4; ++nt) {
        float pr[4], dsv[4];
        KILN_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int j = j0 + g + 8 * (e >> 1), qc = half * 32 + nt * 8 + 2 * t4 + (e & 1), i = q0 + qc;
          const bool ok = CLEAN || (i < p.t && j < p.tk && av3_sees(p, i, j, qsg[qc], kseg[e >> 1]));
          float dcap;
          pr[e] = av3_p(p, s[nt][e], f[qc], ok, CLEAN, &dcap);
          dsv[e] = pr[e] * (dpv[nt][e] - f[AB3_B + qc]) * dcap * p.scale;
        }
        pa[nt / 2][(nt % 2) * 2] = pack2(from_f32<T>(pr[0]), from_f32<T>(pr[1]));
        pa[nt / 2][(nt % 2) * 2 + 1] = pack2(from_f32<T>(pr[2]), from_f32<T>(pr[3]));
        sa[nt / 2][(nt % 2) * 2] = pack2(from_f32<T>(dsv[0]), from_f32<T>(dsv[1]));
        sa[nt / 2][(nt % 2) * 2 + 1] = pack2(from_f32<T>(dsv[2]), from_f32<T>(dsv[3]));
      }
      KILN_UNROLL
      for (int kk = 0; kk < 2; ++kk) {
        av3_mma_d<T>(dv, pa[kk], dt, L, half * 32 + kk * 16, ksteps);
        av3_mma_d<T>(dk, sa[kk], qt, L, half * 32 + kk * 16, ksteps);
      }
    }
  };
  int it = 0;
  for (; it < nclean * group; ++it) step(it, av3_flag<true>());
  for (; it < ntiles; ++it) step(it, av3_flag<false>());
  cp_async_wait<0>();
  KILN_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int j = j0 + g + 8 * r;
    if (j < p.tk) {
      const i64 row = kvoff + j * kstride;
      av3_store(reinterpret_cast<OT*>(p.out0) + row, dk, r, p.d, 1.f);
      av3_store(reinterpret_cast<OT*>(p.out1) + row, dv, r, p.d, 1.f);
    }
  }
}

KILN_KERNEL_LB(attn_bwd_dq_v3_mma_bf16, AttnParams, AB3_THREADS) { attn_bwd_dq_v3<bf16, bf16>(p); }
KILN_KERNEL_LB(attn_bwd_dq_v3_mma_f16, AttnParams, AB3_THREADS) { attn_bwd_dq_v3<f16, f16>(p); }
KILN_KERNEL_LB(attn_bwd_dq_v3_mma_bf16_f32, AttnParams, AB3_THREADS) { attn_bwd_dq_v3<bf16, float>(p); }
KILN_KERNEL_LB(attn_bwd_dkv_v3_mma_bf16, AttnParams, AB3_THREADS) { attn_bwd_dkv_v3<bf16, bf16>(p); }
KILN_KERNEL_LB(attn_bwd_dkv_v3_mma_f16, AttnParams, AB3_THREADS) { attn_bwd_dkv_v3<f16, f16>(p); }
KILN_KERNEL_LB(attn_bwd_dkv_v3_mma_bf16_f32, AttnParams, AB3_THREADS) { attn_bwd_dkv_v3<bf16, float>(p); }
