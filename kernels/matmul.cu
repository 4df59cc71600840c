// The matmul family (Op::Matmul, Op::Linear): GEMM with LoRA fused,
// C[i,j] = alpha·(Σ_p A(i,p)·B(p,j) + Σ_r s·U[i,r]·L(j,r)) + bias[j].
// A is f32 (activations, gradients); B is f32, bf16 or f16 (frozen weights stay 16-bit).
// Operands are addressed through element strides, so one kernel serves x·Wᵀ, dy·W and the
// transposed products of the weight gradients.
//
// The low-rank term rides in the main loop as `rank` extra reduction steps: the K dimension is
// extended by U's columns (scaled by s) against L's, so y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ costs r/K more
// multiply-adds on the tensor cores and no epilogue work. U = x·Aᵀ (forward) or dy·B (dx) is a
// small GEMM launched first: "one kernel plus a tiny rank-r pre-pass" — except in v7's forward
// at rank ≤ 16, which computes U itself from the x tiles it already holds (see v7).
//
// Variants (all kept here; `_q` takes a block-quantized B). The backend chooses one by value,
// `GemmVariant` in runtime/kiln-cuda/src/variant.rs, which names each variant's kernels:
//   gemm_v1_naive_*   one thread per output, straight from global memory (the reference);
//   gemm_v2_tiled_*   64×64 block tile, 16-deep K tiles in shared memory, 4×4 outputs per thread;
//   gemm_v3_mma_*     tensor cores: 64×64 block tile, four warps of 32×32, mma.m16n8k16 with
//                     ldmatrix fragments, f32 accumulators; A rounded to B's 16-bit type;
//   gemm_v4_mma_pipelined_*  128×128 block tile, eight warps of 64×32, two shared buffers: the
//                     next K tile is fetched into registers while the tensor cores work on the
//                     current one (one barrier per K step);
//   gemm_v5_wgmma_*   Hopper (sm_90a): v4's tiles and loading, the products by wgmma, which
//                     reads both operands from shared memory and runs asynchronously;
//   gemm_v6_mma_multistage_*  (the default) 16-bit operands in memory (A packed first by
//                     gemm_pack_*), 128×128 tiles of four 64×64 warps, a 3-stage ring of
//                     16-byte cp.async into swizzled tiles, LoRA as a second pipeline phase,
//                     split-K; its own parameters (`Gemm16Params`, below);
//   gemm_v7_tma_wgmma_*  Hopper (sm_90a): v6's packed operands loaded by TMA into a 4-stage
//                     mbarrier ring with the 128-byte swizzle, a producer warpgroup and two
//                     consumer warpgroups of wgmma m64n256k16 (128×256 tiles), NK layout only
//                     (`Gemm90Params`: tensor maps); LoRA of rank ≤ 16 fused whole.
#include "common.cuh"

// Mirrored by `GemmParams` in runtime/kiln-cuda/src/kernels.rs.
struct GemmParams {
  const void* a;
  const void* b;
  float* c;
  const float* bias;    // [n] or null
  const float* lora_u;  // [m, rank] or null
  const float* lora_l;  // L(j, r) = lora_l[j·sl_n + r·sl_r]
  i64 sam, sak;         // A(i, p) = a[i·sam + p·sak]
  i64 sbk, sbn;         // B(p, j) = b[p·sbk + j·sbn]
  i64 sl_n, sl_r;
  int m, n, k, ldc;
  int rank;
  float alpha;
  float lora_scale;
  int qtype, qblock, qbytes;  // B block-quantized (the `_q` kernels): kiln_decode's type and block
};

// B stored block-quantized: each value decoded where it is loaded (never written back).
struct QBlock {};

// The reduction length: K, plus the LoRA rank when the low-rank term is fused.
__device__ __forceinline__ int gemm_kk(const GemmParams& p) { return p.lora_u ? p.k + p.rank : p.k; }
// A(i, q) of the extended problem: A, then s·U.
__device__ __forceinline__ float gemm_a(const GemmParams& p, int i, int q) {
  if (q < p.k) return static_cast<const float*>(p.a)[i64(i) * p.sam + i64(q) * p.sak];
  return p.lora_scale * p.lora_u[i64(i) * p.rank + (q - p.k)];
}
template <class TB>
__device__ __forceinline__ float gemm_bval(const GemmParams& p, i64 idx) {
  return to_f32<TB>(static_cast<const TB*>(p.b)[idx]);
}
template <>
__device__ __forceinline__ float gemm_bval<QBlock>(const GemmParams& p, i64 idx) {
  return kiln_decode(static_cast<const unsigned char*>(p.b), idx, p.qtype, p.qblock, p.qbytes);
}
// B(q, j) of the extended problem: B, then L.
template <class TB>
__device__ __forceinline__ float gemm_b(const GemmParams& p, int q, int j) {
  if (q < p.k) return gemm_bval<TB>(p, i64(q) * p.sbk + i64(j) * p.sbn);
  return p.lora_l[j * p.sl_n + (q - p.k) * p.sl_r];
}

__device__ __forceinline__ void gemm_store(const GemmParams& p, int i, int j, float acc) {
  if (i >= p.m || j >= p.n) return;
  float v = p.alpha * acc;
  if (p.bias) v += p.bias[j];
  p.c[i64(i) * p.ldc + j] = v;
}

// ---- v1: naive. Blocks of 16×16 threads, one output each. ----
template <class TB>
__device__ __forceinline__ void gemm_v1(const GemmParams& p) {
  const int j = blockIdx.x * 16 + threadIdx.x, i = blockIdx.y * 16 + threadIdx.y;
  if (i >= p.m || j >= p.n) return;
  float acc = 0.f;
  const int kk = gemm_kk(p);
  for (int q = 0; q < kk; ++q) acc = fmaf(gemm_a(p, i, q), gemm_b<TB>(p, q, j), acc);
  gemm_store(p, i, j, acc);
}
KILN_KERNEL(gemm_v1_naive_f32, GemmParams) { gemm_v1<float>(p); }
KILN_KERNEL(gemm_v1_naive_bf16, GemmParams) { gemm_v1<bf16>(p); }
KILN_KERNEL(gemm_v1_naive_f16, GemmParams) { gemm_v1<f16>(p); }
KILN_KERNEL(gemm_v1_naive_q, GemmParams) { gemm_v1<QBlock>(p); }

// ---- v2: shared-memory tiles. 256 threads; thread (tx, ty) owns rows ty+16r, cols tx+16c. ----
template <class TB>
__device__ __forceinline__ void gemm_v2(const GemmParams& p) {
  constexpr int BM = 64, BN = 64, BK = 16;
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
  float acc[4][4] = {};
  const int kk_end = gemm_kk(p);
  for (int k0 = 0; k0 < kk_end; k0 += BK) {
    // Consecutive threads walk the operand's contiguous dimension (coalesced loads).
    for (int l = 0; l < BM * BK / 256; ++l) {
      const int e = tid + 256 * l;
      const int kk = p.sak == 1 ? e % BK : e / BM, mm = p.sak == 1 ? e / BK : e % BM;
      const int gi = bm + mm, gk = k0 + kk;
      As[kk][mm] = gi < p.m && gk < kk_end ? gemm_a(p, gi, gk) : 0.f;
    }
    for (int l = 0; l < BN * BK / 256; ++l) {
      const int e = tid + 256 * l;
      const int kk = p.sbk == 1 ? e % BK : e / BN, nn = p.sbk == 1 ? e / BK : e % BN;
      const int gj = bn + nn, gk = k0 + kk;
      Bs[kk][nn] = gj < p.n && gk < kk_end ? gemm_b<TB>(p, gk, gj) : 0.f;
    }
    __syncthreads();
    KILN_UNROLL
    for (int kk = 0; kk < BK; ++kk) {
      float a[4], b[4];
      KILN_UNROLL
      for (int r = 0; r < 4; ++r) a[r] = As[kk][ty + 16 * r];
      KILN_UNROLL
      for (int c = 0; c < 4; ++c) b[c] = Bs[kk][tx + 16 * c];
      KILN_UNROLL
      for (int r = 0; r < 4; ++r)
        KILN_UNROLL
        for (int c = 0; c < 4; ++c) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
    __syncthreads();
  }
  KILN_UNROLL
  for (int r = 0; r < 4; ++r)
    KILN_UNROLL
    for (int c = 0; c < 4; ++c) gemm_store(p, bm + ty + 16 * r, bn + tx + 16 * c, acc[r][c]);
}
KILN_KERNEL_LB(gemm_v2_tiled_f32, GemmParams, 256) { gemm_v2<float>(p); }
KILN_KERNEL_LB(gemm_v2_tiled_bf16, GemmParams, 256) { gemm_v2<bf16>(p); }
KILN_KERNEL_LB(gemm_v2_tiled_f16, GemmParams, 256) { gemm_v2<f16>(p); }
// Block-quantized B (QLoRA bases) in f32 arithmetic: exact dequantization, f32 products.
KILN_KERNEL_LB(gemm_v2_tiled_q, GemmParams, 256) { gemm_v2<QBlock>(p); }

// ---- v3: tensor cores. 128 threads = 4 warps in 2×2, each a 32×32 tile of 2×4 mma tiles. ----
// Shared tiles hold 16-bit bits, K-contiguous, rows padded to 40 halves (80 bytes: 16-byte
// aligned rows for ldmatrix, and the eight rows of an 8×8 fragment fall in distinct banks).
template <class T, class TB = T>
__device__ __forceinline__ void gemm_v3(const GemmParams& p) {
  constexpr int BM = 64, BN = 64, BK = 32, LD = BK + 8;
  __shared__ __align__(16) unsigned short As[BM][LD];
  __shared__ __align__(16) unsigned short Bs[BN][LD];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / 2, wn = warp % 2;
  const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
  float acc[2][4][4] = {};
  const int kk_end = gemm_kk(p);
  for (int k0 = 0; k0 < kk_end; k0 += BK) {
    KILN_UNROLL4
    for (int l = 0; l < BM * BK / 128; ++l) {
      const int e = tid + 128 * l;
      const int kk = p.sak == 1 ? e % BK : e / BM, mm = p.sak == 1 ? e / BK : e % BM;
      const int gi = bm + mm, gk = k0 + kk;
      As[mm][kk] = bits16(from_f32<T>(gi < p.m && gk < kk_end ? gemm_a(p, gi, gk) : 0.f));
    }
    KILN_UNROLL4
    for (int l = 0; l < BN * BK / 128; ++l) {
      const int e = tid + 128 * l;
      const int kk = p.sbk == 1 ? e % BK : e / BN, nn = p.sbk == 1 ? e / BK : e % BN;
      const int gj = bn + nn, gk = k0 + kk;
      Bs[nn][kk] = bits16(from_f32<T>(gj < p.n && gk < kk_end ? gemm_b<TB>(p, gk, gj) : 0.f));
    }
    __syncthreads();
    KILN_UNROLL
    for (int ks = 0; ks < BK / 16; ++ks) {
      u32 af[2][4], bf[4][2];
      KILN_UNROLL
      for (int mi = 0; mi < 2; ++mi) ldmatrix_a(af[mi], As, wm * 32 + mi * 16, ks * 16);
      KILN_UNROLL
      for (int nj = 0; nj < 2; ++nj) ldmatrix_b2(bf[2 * nj], bf[2 * nj + 1], Bs, wn * 32 + nj * 16, ks * 16);
      KILN_UNROLL
      for (int mi = 0; mi < 2; ++mi)
        KILN_UNROLL
        for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], af[mi], bf[ni], T());
    }
    __syncthreads();
  }
  const int g = lane >> 2, t = lane & 3;
  KILN_UNROLL
  for (int mi = 0; mi < 2; ++mi)
    KILN_UNROLL
    for (int ni = 0; ni < 4; ++ni)
      KILN_UNROLL
      for (int i = 0; i < 4; ++i)
        gemm_store(p, bm + wm * 32 + mi * 16 + g + 8 * (i >= 2), bn + wn * 32 + ni * 8 + 2 * t + (i & 1),
                   acc[mi][ni][i]);
}
KILN_KERNEL_LB(gemm_v3_mma_bf16, GemmParams, 128) { gemm_v3<bf16>(p); }
KILN_KERNEL_LB(gemm_v3_mma_f16, GemmParams, 128) { gemm_v3<f16>(p); }
// QLoRA bases on the tensor cores: blocks decoded in the loader, rounded to bf16 (activations
// keep bf16's range).
KILN_KERNEL_LB(gemm_v3_mma_q, GemmParams, 128) { gemm_v3<bf16, QBlock>(p); }

// The K tile a block of NT threads is about to use (v4, v5): fetched from global memory into
// registers (rounded to T, two values a register: half the registers), then stored into shared
// memory where the caller's `at(row, k)` says. Element e of a thread walks the operand's
// contiguous dimension across consecutive threads (coalesced loads).
template <class T, class TB, int BM, int BN, int BK, int NT>
struct TileRegs {
  static constexpr int PA = BM * BK / NT, PB = BN * BK / NT;
  u32 ra[PA / 2], rb[PB / 2];
  // (row, k) of element e of a ROWS×BK tile whose k stride is `unit` (1: k contiguous).
  template <int ROWS>
  __device__ __forceinline__ static void pos(int e, bool unit, int& row, int& kk) {
    kk = unit ? e % BK : e / ROWS;
    row = unit ? e / BK : e % ROWS;
  }
  // Fetches K tile k0 into registers (zero outside the matrices).
  __device__ __forceinline__ void fetch(const GemmParams& p, int bm, int bn, int k0, int kk_end, int tid) {
    KILN_UNROLL
    for (int l = 0; l < PA; ++l) {
      int mm, kk;
      pos<BM>(tid + NT * l, p.sak == 1, mm, kk);
      const int gi = bm + mm, gk = k0 + kk;
      const u32 h = bits16(from_f32<T>(gi < p.m && gk < kk_end ? gemm_a(p, gi, gk) : 0.f));
      ra[l / 2] = (l & 1) ? (ra[l / 2] | (h << 16)) : h;
    }
    KILN_UNROLL
    for (int l = 0; l < PB; ++l) {
      int nn, kk;
      pos<BN>(tid + NT * l, p.sbk == 1, nn, kk);
      const int gj = bn + nn, gk = k0 + kk;
      const u32 h = bits16(from_f32<T>(gj < p.n && gk < kk_end ? gemm_b<TB>(p, gk, gj) : 0.f));
      rb[l / 2] = (l & 1) ? (rb[l / 2] | (h << 16)) : h;
    }
  }
  template <class FA, class FB>
  __device__ __forceinline__ void stash(const GemmParams& p, int tid, FA a_at, FB b_at) const {
    KILN_UNROLL
    for (int l = 0; l < PA; ++l) {
      int mm, kk;
      pos<BM>(tid + NT * l, p.sak == 1, mm, kk);
      *a_at(mm, kk) = (unsigned short)((l & 1) ? ra[l / 2] >> 16 : ra[l / 2] & 0xffffu);
    }
    KILN_UNROLL
    for (int l = 0; l < PB; ++l) {
      int nn, kk;
      pos<BN>(tid + NT * l, p.sbk == 1, nn, kk);
      *b_at(nn, kk) = (unsigned short)((l & 1) ? rb[l / 2] >> 16 : rb[l / 2] & 0xffffu);
    }
  }
};

// ---- v4: 128×128 tiles, 8 warps (2×4) of 64×32, double-buffered shared memory ----
template <class T, class TB = T>
__device__ __forceinline__ void gemm_v4(const GemmParams& p) {
  constexpr int BM = 128, BN = 128, BK = 32, LD = BK + 8;
  __shared__ __align__(16) unsigned short As[2][BM][LD];
  __shared__ __align__(16) unsigned short Bs[2][BN][LD];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp / 4, wn = warp % 4;
  const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
  const int kk_end = gemm_kk(p);
  float acc[4][4][4] = {};
  TileRegs<T, TB, BM, BN, BK, 256> f;
  auto stash = [&](int s) {
    f.stash(p, tid, [&](int mm, int kk) { return &As[s][mm][kk]; }, [&](int nn, int kk) { return &Bs[s][nn][kk]; });
  };
  f.fetch(p, bm, bn, 0, kk_end, tid);
  stash(0);
  __syncthreads();
  int cur = 0;
  for (int k0 = 0; k0 < kk_end; k0 += BK) {
    const bool more = k0 + BK < kk_end;
    // The next tile's global loads are issued before this tile's math, and land meanwhile.
    if (more) f.fetch(p, bm, bn, k0 + BK, kk_end, tid);
    KILN_UNROLL
    for (int ks = 0; ks < BK / 16; ++ks) {
      u32 af[4][4], bf[4][2];
      KILN_UNROLL
      for (int mi = 0; mi < 4; ++mi) ldmatrix_a(af[mi], As[cur], wm * 64 + mi * 16, ks * 16);
      KILN_UNROLL
      for (int nj = 0; nj < 2; ++nj) ldmatrix_b2(bf[2 * nj], bf[2 * nj + 1], Bs[cur], wn * 32 + nj * 16, ks * 16);
      KILN_UNROLL
      for (int mi = 0; mi < 4; ++mi)
        KILN_UNROLL
        for (int ni = 0; ni < 4; ++ni) mma_16816(acc[mi][ni], af[mi], bf[ni], T());
    }
    // The other buffer was last read before the previous barrier: it is free to fill.
    if (more) stash(cur ^ 1);
    __syncthreads();
    cur ^= 1;
  }
  const int g = lane >> 2, t = lane & 3;
  KILN_UNROLL
  for (int mi = 0; mi < 4; ++mi)
    KILN_UNROLL
    for (int ni = 0; ni < 4; ++ni)
      KILN_UNROLL
      for (int i = 0; i < 4; ++i)
        gemm_store(p, bm + wm * 64 + mi * 16 + g + 8 * (i >= 2), bn + wn * 32 + ni * 8 + 2 * t + (i & 1),
                   acc[mi][ni][i]);
}
KILN_KERNEL_LB(gemm_v4_mma_pipelined_bf16, GemmParams, 256) { gemm_v4<bf16>(p); }
KILN_KERNEL_LB(gemm_v4_mma_pipelined_f16, GemmParams, 256) { gemm_v4<f16>(p); }
KILN_KERNEL_LB(gemm_v4_mma_pipelined_q, GemmParams, 256) { gemm_v4<bf16, QBlock>(p); }

// ---- v5 (sm_90a): wgmma. 128×128 tiles, two warpgroups of 64×128, K tiles of 32 ----
// The tensor cores read both operands from shared memory (no ldmatrix, no fragments): one
// wgmma m64n128k16 per warpgroup per 16 of K, issued asynchronously, so the next tile is
// stored into the other buffer while they run. Shared memory is dynamic, two stages of A then
// B, each tile in wgmma's K-major unswizzled layout: core matrix (r/8, k/8) of a ROWS-row tile
// at ((k/8)·(ROWS/8) + r/8)·128 bytes, so LBO (the next 8 of K) is ROWS·16 bytes and SBO (the
// next 8 rows) 128. Loading is v4's (A rounded from f32, B decoded from blocks on the way).
constexpr int V5_BM = 128, V5_BN = 128, V5_BK = 32;
constexpr int V5_STAGE = (V5_BM + V5_BN) * V5_BK * 2;  // bytes; the launch gives 2 stages
__device__ __forceinline__ u32 v5_core(int r, int k, int rows) {
  return u32(((k / 8) * (rows / 8) + r / 8) * 128 + (r % 8) * 16 + (k % 8) * 2);
}
template <class T, class TB = T>
__device__ __forceinline__ void gemm_v5(const GemmParams& p) {
  if (wgmma_unavailable()) return;
  unsigned char* smem = dyn_smem();
  const int tid = threadIdx.x, wg = tid / 128, lane = tid & 31, wq = (tid / 32) % 4;
  const int bm = blockIdx.y * V5_BM, bn = blockIdx.x * V5_BN;
  const int kk_end = gemm_kk(p);
  TileRegs<T, TB, V5_BM, V5_BN, V5_BK, 256> f;
  auto stash = [&](int s) {
    unsigned char* st = smem + s * V5_STAGE;
    f.stash(
        p, tid, [&](int mm, int kk) { return reinterpret_cast<unsigned short*>(st + v5_core(mm, kk, V5_BM)); },
        [&](int nn, int kk) {
          return reinterpret_cast<unsigned short*>(st + V5_BM * V5_BK * 2 + v5_core(nn, kk, V5_BN));
        });
    fence_proxy_async();  // the stores above become visible to the tensor cores
  };
  float acc[WGMMA_N / 2];
  KILN_UNROLL
  for (int i = 0; i < WGMMA_N / 2; ++i) acc[i] = 0.f;
  f.fetch(p, bm, bn, 0, kk_end, tid);
  stash(0);
  __syncthreads();
  int cur = 0;
  for (int k0 = 0; k0 < kk_end; k0 += V5_BK) {
    const bool more = k0 + V5_BK < kk_end;
    if (more) f.fetch(p, bm, bn, k0 + V5_BK, kk_end, tid);
    const unsigned char* st = smem + cur * V5_STAGE;
    wgmma_fence(acc);
    KILN_UNROLL
    for (int ks = 0; ks < V5_BK / 16; ++ks) {
      const u64 da = wgmma_desc(st + v5_core(wg * 64, ks * 16, V5_BM), V5_BM * 16, 128);
      const u64 db = wgmma_desc(st + V5_BM * V5_BK * 2 + v5_core(0, ks * 16, V5_BN), V5_BN * 16, 128);
      wgmma_m64n128k16(acc, da, db, T());
    }
    wgmma_commit();
    // The other buffer's wgmmas were waited for before the previous barrier: free to fill.
    if (more) stash(cur ^ 1);
    wgmma_wait<0>(acc);
    __syncthreads();
    cur ^= 1;
  }
  const int g = lane >> 2, t = lane & 3;
  KILN_UNROLL
  for (int i = 0; i < WGMMA_N / 2; ++i)
    gemm_store(p, bm + wg * 64 + wq * 16 + g + 8 * ((i >> 1) & 1), bn + 8 * (i >> 2) + 2 * t + (i & 1), acc[i]);
}
KILN_KERNEL_LB(gemm_v5_wgmma_bf16, GemmParams, 256) { gemm_v5<bf16>(p); }
KILN_KERNEL_LB(gemm_v5_wgmma_f16, GemmParams, 256) { gemm_v5<f16>(p); }
KILN_KERNEL_LB(gemm_v5_wgmma_q, GemmParams, 256) { gemm_v5<bf16, QBlock>(p); }

// ---- v6 (sm_80+): the multistage GEMM on 16-bit operands ----
// CUTLASS's Ampere structure: 128×128 CTA tiles of four warps (2×2), each warp 64×64 (32
// mma.m16n8k16 per 16 of K against 8 ldmatrix.x4), K tiles of 32 in a 3-stage cp.async ring
// (48 KiB of static shared memory: no opt-in), one barrier per K tile. Operands are 16-bit in
// global memory (the backend packs f32 activations once, `gemm_pack_*`), so every load is a
// 16-byte cp.async straight into shared memory, with no conversion in the loop: A rows (and
// NK B rows) are 64 bytes, B in KN layout 256-byte rows of 128 n. Shared tiles are
// XOR-swizzled in 16-byte chunks so that both the copies and the ldmatrix reads of eight rows
// at one chunk hit eight different bank groups: 64-byte rows swap chunk c with c ^ ((row/2)%4),
// 256-byte rows with c ^ (row%8). Edges are predicated per 16-byte chunk (zero-filled copies),
// never per element: K must be a multiple of 8 (NK) and N a multiple of 8 (KN), strides
// multiples of 8 and bases 16-byte aligned; the backend checks and otherwise runs v4.
// LoRA's rank-r term is a second phase of the same K loop over the packed s·U [m, ru] and L
// (NK [n, ru] or KN [ru, n]; ru a multiple of 32, zero-padded), the same tiles and fragments.
// Mirrored by `Gemm16Params` in runtime/kiln-cuda/src/kernels.rs.
struct Gemm16Params {
  const void* a;  // [m, lda]: A(i, p) = a[i·lda + p]
  const void* b;  // NK: B(p, j) = b[j·ldb + p]; KN: b[p·ldb + j]
  const void* u;  // [m, ru] s·U, or null
  const void* l;  // L in B's layout: NK [n, ru], KN [ru, ldl = n]
  void* c;        // f32, or T where `c16`
  const float* bias;  // [n] or null
  i64 lda, ldb, ldl;
  int m, n, k, ldc;
  int ru;  // the padded rank (a multiple of 32; 0 without LoRA)
  float alpha;
  // Split-K: CTA z of the grid's depth takes K tiles [z·kst, (z+1)·kst) and writes its partial
  // product to slab z of c (m·ldc floats apart; `gemm_splitk_sum` adds them). 0: one split.
  int kst;
  int c16;  // C in the operands' 16-bit type (activations on the mixed-precision path), not f32
};
constexpr int V6_BM = 128, V6_BN = 128, V6_BK = 32, V6_STAGES = 3;
constexpr int V6_TILE = V6_BM * V6_BK * 2;  // bytes of one operand tile (A and B alike)

// Byte offsets of 16-byte chunk c of row r in the swizzled tiles.
__device__ __forceinline__ u32 v6_off64(u32 r, u32 c) { return r * 64 + ((c ^ ((r >> 1) & 3u)) << 4); }
__device__ __forceinline__ u32 v6_off256(u32 r, u32 c) { return r * 256 + ((c ^ (r & 7u)) << 4); }

// The tile ordering: CTAs run in groups of 8 M-tiles walking N, so the B columns of a group
// and the A rows of a wave stay in L2 (a plain row-major grid streams all of B per M-tile row).
__device__ __forceinline__ void v6_raster(int& tm, int& tn) {
  const int gm = gridDim.y, gn = gridDim.x, id = blockIdx.y * gn + blockIdx.x;
  const int group = 8 * gn, first = (id / group) * 8, rows = imin(gm - first, 8);
  tm = first + (id % group) % rows;
  tn = (id % group) / rows;
}

// Columns j and j + 1 of output row i (v6's and v7's epilogues), C f32 or (`c16`, the
// mixed-precision path) in the operands' 16-bit type T: one 8-byte (4-byte) store where both lie
// inside and the row stride keeps pairs aligned (`pairs`), else what lies inside.
template <class T>
__device__ __forceinline__ void store_c_pair(void* c, i64 row, int j, int n, bool pairs, bool c16, float v0, float v1) {
  if (c16) {
    T* r = static_cast<T*>(c) + row;
    if (pairs && j + 1 < n) {
      *reinterpret_cast<u32*>(r + j) = pack2(from_f32<T>(v0), from_f32<T>(v1));
    } else {
      if (j < n) r[j] = from_f32<T>(v0);
      if (j + 1 < n) r[j + 1] = from_f32<T>(v1);
    }
    return;
  }
  float* r = static_cast<float*>(c) + row;
  if (pairs && j + 1 < n) {
    store_f32x2(r + j, v0, v1);
  } else {
    if (j < n) r[j] = v0;
    if (j + 1 < n) r[j + 1] = v1;
  }
}

template <class T, bool KN>
__device__ __forceinline__ void gemm_v6(const Gemm16Params& p) {
  __shared__ __align__(128) unsigned char smem[V6_STAGES * 2 * V6_TILE];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm = warp >> 1, wn = warp & 1;
  int tm, tn;
  v6_raster(tm, tn);
  const int bm = tm * V6_BM, bn = tn * V6_BN;
  const int kt_main = (p.k + V6_BK - 1) / V6_BK;
  // This thread's chunks: A (and NK B) rows tid/4 + 32i at chunk tid%4; KN B rows tid/16 + 8i
  // at chunk tid%16 (i = 0..3). Their shared offsets differ by 2048 bytes per i.
  const int ra = tid >> 2, ca = tid & 3, rk = tid >> 4, ck = tid & 15;
  const u32 sa = v6_off64(ra, ca), sb = KN ? v6_off256(rk, ck) : sa;
  // The copy state of the phase being loaded (tiles are loaded once each, in order): a global
  // pointer per chunk, advanced one K tile per load, so the loop does no index arithmetic.
  // Chunks past the matrix's rows (or N, KN) point at the tile's first row or column; those
  // past K are zero-filled copies that read nothing (src-size 0).
  const unsigned short* ga[4];
  const unsigned short* gb[4];
  bool oka[4], okb[4];
  int kload = 0, kend = 0;  // the next K tile's first k within its phase; the phase's extent
  i64 bstep = 0;            // B's pointer step per K tile
  auto setup = [&](const void* av, i64 lda, const void* bv, i64 ldb, int k, int k0) {
    const unsigned short* ab = static_cast<const unsigned short*>(av) + k0;
    const unsigned short* bb = static_cast<const unsigned short*>(bv) + (KN ? k0 * ldb : k0);
    KILN_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int gi = bm + ra + 32 * i;
      oka[i] = gi < p.m;
      ga[i] = ab + i64(oka[i] ? gi : bm) * lda + ca * 8;
      if (KN) {
        okb[i] = bn + ck * 8 < p.n;
        gb[i] = bb + i64(rk + 8 * i) * ldb + (okb[i] ? bn + ck * 8 : bn);
      } else {
        const int gj = bn + ra + 32 * i;
        okb[i] = gj < p.n;
        gb[i] = bb + i64(okb[i] ? gj : bn) * ldb + ca * 8;
      }
    }
    bstep = KN ? V6_BK * ldb : V6_BK;
    kload = k0;
    kend = k;
  };
  int lstage = 0, rstage = 0;  // the stage the next load fills; the stage the next tile reads
  auto load = [&]() {
    unsigned char* st = smem + lstage * 2 * V6_TILE;
    const bool ka = kload + ca * 8 < kend;
    KILN_UNROLL
    for (int i = 0; i < 4; ++i) {
      cp_async_16_zfill(st + sa + 2048 * i, ga[i], ka && oka[i]);
      ga[i] += V6_BK;
    }
    KILN_UNROLL
    for (int i = 0; i < 4; ++i) {
      const bool ok = KN ? kload + rk + 8 * i < kend && okb[i] : ka && okb[i];
      cp_async_16_zfill(st + V6_TILE + sb + 2048 * i, gb[i], ok);
      gb[i] += bstep;
    }
    kload += V6_BK;
    lstage = lstage == V6_STAGES - 1 ? 0 : lstage + 1;
  };
  float acc[4][8][4];
  KILN_UNROLL
  for (int mi = 0; mi < 4; ++mi)
    KILN_UNROLL
    for (int ni = 0; ni < 8; ++ni)
      KILN_UNROLL
      for (int i = 0; i < 4; ++i) acc[mi][ni][i] = 0.f;
  // One phase's K loop over `tiles` tiles: the ring filled two tiles ahead, then per tile a
  // wait, a barrier, the next load and the math.
  auto phase = [&](int tiles) {
    KILN_UNROLL
    for (int s = 0; s < V6_STAGES - 1; ++s) {
      if (s < tiles) load();
      cp_async_commit();
    }
    for (int t = 0; t < tiles; ++t) {
      // Tile t's group is complete (one newer may fly); the barrier publishes every thread's
      // copies and says the stage loaded next was read by all (in iteration t - 1).
      cp_async_wait<V6_STAGES - 2>();
      __syncthreads();
      if (t + V6_STAGES - 1 < tiles) load();
      cp_async_commit();
      const unsigned char* st = smem + rstage * 2 * V6_TILE;
      rstage = rstage == V6_STAGES - 1 ? 0 : rstage + 1;
      KILN_UNROLL
      for (int ks = 0; ks < V6_BK / 16; ++ks) {
        u32 af[4][4], bf[8][2];
        KILN_UNROLL
        for (int mi = 0; mi < 4; ++mi) {
          const u32 r = wm * 64 + mi * 16 + (lane & 15), c = ks * 2 + (lane >> 4);
          ldmatrix_x4(af[mi], st + v6_off64(r, c));
        }
        KILN_UNROLL
        for (int nj = 0; nj < 4; ++nj) {
          u32 q[4];
          if (KN) {
            // Four 8×8 blocks (k 0-7 | 8-15) × (n 0-7 | 8-15), transposed into B fragments.
            const u32 j = lane >> 3, r = ks * 16 + (j & 1) * 8 + (lane & 7), c = (wn * 64 + nj * 16) / 8 + (j >> 1);
            ldmatrix_x4_trans(q, st + V6_TILE + v6_off256(r, c));
          } else {
            const u32 r = wn * 64 + nj * 16 + (lane >> 4) * 8 + (lane & 7), c = ks * 2 + ((lane >> 3) & 1);
            ldmatrix_x4(q, st + V6_TILE + v6_off64(r, c));
          }
          bf[2 * nj][0] = q[0];
          bf[2 * nj][1] = q[1];
          bf[2 * nj + 1][0] = q[2];
          bf[2 * nj + 1][1] = q[3];
        }
        KILN_UNROLL
        for (int mi = 0; mi < 4; ++mi)
          KILN_UNROLL
          for (int ni = 0; ni < 8; ++ni) mma_16816(acc[mi][ni], af[mi], bf[ni], T());
      }
    }
  };
  const int z = blockIdx.z, kt0 = p.kst ? z * p.kst : 0, kt1 = p.kst ? imin(kt_main, kt0 + p.kst) : kt_main;
  setup(p.a, p.lda, p.b, p.ldb, p.k, kt0 * V6_BK);
  phase(kt1 - kt0);
  if (p.ru > 0 && z == 0) {
    // LoRA's phase: its own short pipeline over s·U and L. (The two phases as one loop would
    // select between their pointers on every load; the ring's refill costs about one tile.)
    cp_async_wait<0>();
    __syncthreads();  // every stage was read: the LoRA tiles may overwrite them
    setup(p.u, p.ru, p.l, p.ldl, p.ru, 0);
    phase(p.ru / V6_BK);
  }
  cp_async_wait<0>();  // only empty groups remain; nothing may be in flight at exit
  // Each quad of lanes holds 8 consecutive columns of a row: 8-byte stores fill whole sectors.
  const int g = lane >> 2, t4 = lane & 3;
  const bool pairs = (p.ldc & 1) == 0, bias = p.bias && z == 0;
  void* c = static_cast<char*>(p.c) + (p.c16 ? 2 : 4) * i64(z) * p.m * p.ldc;
  KILN_UNROLL
  for (int mi = 0; mi < 4; ++mi)
    KILN_UNROLL
    for (int ni = 0; ni < 8; ++ni) {
      const int j = bn + wn * 64 + ni * 8 + 2 * t4;
      const float b0 = bias && j < p.n ? p.bias[j] : 0.f, b1 = bias && j + 1 < p.n ? p.bias[j + 1] : 0.f;
      KILN_UNROLL
      for (int h = 0; h < 2; ++h) {
        const int i = bm + wm * 64 + mi * 16 + g + 8 * h;
        if (i >= p.m) continue;
        store_c_pair<T>(c, i64(i) * p.ldc, j, p.n, pairs, p.c16, p.alpha * acc[mi][ni][2 * h] + b0,
                        p.alpha * acc[mi][ni][2 * h + 1] + b1);
      }
    }
}
KILN_KERNEL_LB(gemm_v6_mma_multistage_bf16, Gemm16Params, 128) { gemm_v6<bf16, false>(p); }
KILN_KERNEL_LB(gemm_v6_mma_multistage_f16, Gemm16Params, 128) { gemm_v6<f16, false>(p); }
KILN_KERNEL_LB(gemm_v6_mma_multistage_kn_bf16, Gemm16Params, 128) { gemm_v6<bf16, true>(p); }
KILN_KERNEL_LB(gemm_v6_mma_multistage_kn_f16, Gemm16Params, 128) { gemm_v6<f16, true>(p); }

// ---- v7 (sm_90a): TMA loads into an mbarrier ring, warp-specialized wgmma ----
// CUTLASS's Hopper structure. 128×256 CTA tiles, K tiles of 64 in a 4-stage ring (50 KiB a
// stage: 200 KiB of dynamic shared memory, one CTA per SM). Three warpgroups: one thread of the
// first (the producer) issues the TMA box loads of each K tile (A's 128 rows, B's 256, each row
// 64 values = 128 bytes in the 128-byte swizzle, so wgmma's reads hit every bank once); the other
// two (consumers) each own 64 rows × 256 columns and run four wgmma m64n256k16 per tile straight
// from the swizzled tiles, keeping one tile's wgmmas in flight (wait_group 1) while they wait
// for the next. Stage s has two barriers: `full` (the producer's arrive.expect_tx plus the
// loads' bytes) and `empty` (one arrival per consumer warp once its wgmmas on the stage are
// done), so no block-wide barrier runs in the loop. The tensor maps zero-fill every edge (any M,
// N; K a multiple of 8, the 16-byte stride rule).
// LoRA, y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, two ways. With a pre-pass (any rank): s·U and L (rank padded to
// 64) are more K tiles of the same ring from their own maps, and the consumers never know.
// Fused (the `_lora_` kernels, rank ≤ 16): each K tile also brings LoRA's A (16 rows × 64, 2 KiB), and each
// consumer accumulates its rows of U = x·Aᵀ with one wgmma m64n16k16 beside each m64n256k16 (1/16
// more tensor work, no pre-pass launch and no second read of x); after the last K tile it writes
// s·U in T into its own rows of the stage holding L and runs one more k16 step against L. U
// itself (f32) is written for the backward by the CTAs of the first column tile.
// Mirrored by `Gemm90Params` in runtime/kiln-cuda/src/kernels.rs.
struct Gemm90Params {
  TensorMap ta, tb;  // A [m, k], B [n, k] (NK): boxes of 64 × 128 and 64 × 256, 128-byte swizzle
  TensorMap tu, tl;  // pre-pass: s·U [m, ru], L [n, ru]; fused: LoRA's A [16, k], L [n, 16]
  void* c;            // f32, or T where `c16`
  const float* bias;  // [n] or null
  float* u_out;       // fused: U [m, rank] (f32, unscaled), or null
  int m, n, k, ldc;
  int ru;  // the pre-pass's padded rank (a multiple of 64; 0 without it)
  float alpha;
  int c16;    // C in T (the mixed-precision path), not f32
  int rank;   // fused: LoRA's rank
  float scale;  // fused: LoRA's s
  int pad;
};
constexpr int V7_BM = 128, V7_BN = 256, V7_BK = 64, V7_STAGES = 4, V7_RF = 16;
constexpr int V7_A = V7_BM * V7_BK * 2, V7_B = V7_BN * V7_BK * 2, V7_LA = V7_RF * V7_BK * 2;
constexpr int V7_STAGE = V7_A + V7_B + V7_LA;
static_assert(V7_STAGE % 1024 == 0, "each stage's tiles start on the swizzle's 1024-byte period");
// The ring, the barriers, and slack to align the ring to 1024 bytes (the swizzle's period).
constexpr int V7_SMEM = V7_STAGES * V7_STAGE + 2 * V7_STAGES * 8 + 1024;
static_assert(V7_SMEM <= 227 * 1024, "v7's ring exceeds what an sm_90 block may opt in to");

// FUSE: the fused-LoRA kernel (`gemm_v7_tma_wgmma_lora_*`). A kernel of its own,
// so that the plain product's loop carries no U work and each kernel's SASS main loop is what its
// runs execute (the profiler reads trips off it).
template <class T, bool FUSE>
__device__ __forceinline__ void gemm_v7(const Gemm90Params& p) {
  if (wgmma_unavailable()) return;
  unsigned char* raw = dyn_smem();
  unsigned char* smem = raw + (1024 - smem_offset(raw) % 1024) % 1024;
  u64* full = reinterpret_cast<u64*>(smem + V7_STAGES * V7_STAGE);
  u64* empty = full + V7_STAGES;
  const int tid = threadIdx.x, wg = tid >> 7, lane = tid & 31;
  int tm, tn;
  v6_raster(tm, tn);
  const int bm = tm * V7_BM, bn = tn * V7_BN;
  const int nmain = (p.k + V7_BK - 1) / V7_BK, tiles = nmain + (FUSE ? 1 : p.ru / V7_BK);
  if (tid == 0) {
    for (int s = 0; s < V7_STAGES; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], 8);  // the consumers' eight warps
    }
    mbar_fence_init();
  }
  __syncthreads();
  if (wg == 0) {
    for (int t = 0; tid == 0 && t < tiles; ++t) {
      const int s = t % V7_STAGES;
      // From the second round on, the stage is free once the consumers released its last use.
      if (t >= V7_STAGES) mbar_wait(&empty[s], (t / V7_STAGES - 1) & 1);
      unsigned char* st = smem + s * V7_STAGE;
      if (t < nmain) {
        mbar_arrive_expect_tx(&full[s], FUSE ? V7_STAGE : V7_A + V7_B);
        tma_load_2d(st, &p.ta, t * V7_BK, bm, &full[s]);
        tma_load_2d(st + V7_A, &p.tb, t * V7_BK, bn, &full[s]);
        if (FUSE) tma_load_2d(st + V7_A + V7_B, &p.tu, t * V7_BK, 0, &full[s]);
      } else if (FUSE) {
        // L only: the consumers write s·U into the A tile themselves.
        mbar_arrive_expect_tx(&full[s], V7_B);
        tma_load_2d(st + V7_A, &p.tl, 0, bn, &full[s]);
      } else {
        mbar_arrive_expect_tx(&full[s], V7_A + V7_B);
        tma_load_2d(st, &p.tu, (t - nmain) * V7_BK, bm, &full[s]);
        tma_load_2d(st + V7_A, &p.tl, (t - nmain) * V7_BK, bn, &full[s]);
      }
    }
    // The consumers' one block-wide barrier (before their LoRA step) counts this warpgroup too.
    if constexpr (FUSE) __syncthreads();
    return;
  }
  const int cw = wg - 1;  // this consumer's 64 rows of the tile
  const int w = (tid & 127) >> 5, g = lane >> 2, t4 = lane & 3;
  float acc[128], accu[8];
  KILN_UNROLL
  for (int i = 0; i < 128; ++i) acc[i] = 0.f;
  KILN_UNROLL
  for (int i = 0; i < 8; ++i) accu[i] = 0.f;
  const int loop = FUSE ? nmain : tiles;
  for (int t = 0; t < loop; ++t) {
    const int s = t % V7_STAGES;
    mbar_wait(&full[s], (t / V7_STAGES) & 1);
    const unsigned char* st = smem + s * V7_STAGE;
    if constexpr (FUSE) wgmma_fence_regs<8>(accu);
    wgmma_fence<128>(acc);
    KILN_UNROLL
    for (int ks = 0; ks < V7_BK / 16; ++ks)
      wgmma_m64n256k16(acc, wgmma_desc_sw128(st + cw * 64 * 128 + ks * 32), wgmma_desc_sw128(st + V7_A + ks * 32), T());
    if constexpr (FUSE) {
      KILN_UNROLL
      for (int ks = 0; ks < V7_BK / 16; ++ks)
        wgmma_m64n16k16(accu, wgmma_desc_sw128(st + cw * 64 * 128 + ks * 32),
                        wgmma_desc_sw128(st + V7_A + V7_B + ks * 32), T());
    }
    wgmma_commit();
    // The previous tile's wgmmas are done (this one's may still run): release its stage.
    wgmma_wait<1, 128>(acc);
    if constexpr (FUSE) wgmma_fence_regs<8>(accu);
    if (t > 0 && lane == 0) mbar_arrive(&empty[(t - 1) % V7_STAGES]);
  }
  wgmma_wait<0, 128>(acc);
  if constexpr (FUSE) wgmma_fence_regs<8>(accu);
  if constexpr (FUSE) {
    // accu[i]: U at row 16w + g + 8·((i>>1)&1) of this consumer's 64, column 8·(i>>2) + 2t4 + (i&1).
    const int s = nmain % V7_STAGES;
    mbar_wait(&full[s], (nmain / V7_STAGES) & 1);
    unsigned char* st = smem + s * V7_STAGE;
    KILN_UNROLL
    for (int h = 0; h < 2; ++h) {
      KILN_UNROLL
      for (int j8 = 0; j8 < 2; ++j8) {
        // Row r of the A tile, byte 2c: the 128-byte swizzle XORs the 16-byte chunk with r % 8.
        const int r = cw * 64 + 16 * w + g + 8 * h, c = 8 * j8 + 2 * t4;
        const int off = r * 128 + ((c * 2) ^ ((r & 7) << 4));
        const float* u = &accu[4 * j8 + 2 * h];
        *reinterpret_cast<u32*>(st + off) = pack2(from_f32<T>(p.scale * u[0]), from_f32<T>(p.scale * u[1]));
        const int i = bm + r, j = c;
        if (p.u_out && tn == 0 && i < p.m) {
          if (j < p.rank) p.u_out[i64(i) * p.rank + j] = u[0];
          if (j + 1 < p.rank) p.u_out[i64(i) * p.rank + j + 1] = u[1];
        }
      }
    }
    fence_proxy_async();
    __syncthreads();
    wgmma_fence<128>(acc);
    wgmma_m64n256k16(acc, wgmma_desc_sw128(st + cw * 64 * 128), wgmma_desc_sw128(st + V7_A), T());
    wgmma_commit();
    wgmma_wait<0, 128>(acc);
  }
  // Each quad of lanes holds 8 consecutive columns of a row: 8-byte stores fill whole sectors.
  const bool pairs = (p.ldc & 1) == 0, bias = p.bias != nullptr;
  KILN_UNROLL
  for (int j8 = 0; j8 < V7_BN / 8; ++j8) {
    const int j = bn + j8 * 8 + 2 * t4;
    const float b0 = bias && j < p.n ? p.bias[j] : 0.f, b1 = bias && j + 1 < p.n ? p.bias[j + 1] : 0.f;
    KILN_UNROLL
    for (int h = 0; h < 2; ++h) {
      const int i = bm + cw * 64 + 16 * w + g + 8 * h;
      if (i >= p.m) continue;
      store_c_pair<T>(p.c, i64(i) * p.ldc, j, p.n, pairs, p.c16, p.alpha * acc[4 * j8 + 2 * h] + b0,
                      p.alpha * acc[4 * j8 + 2 * h + 1] + b1);
    }
  }
}
KILN_KERNEL_GC(gemm_v7_tma_wgmma_bf16, Gemm90Params, 384) { gemm_v7<bf16, false>(p); }
KILN_KERNEL_GC(gemm_v7_tma_wgmma_f16, Gemm90Params, 384) { gemm_v7<f16, false>(p); }
KILN_KERNEL_GC(gemm_v7_tma_wgmma_lora_bf16, Gemm90Params, 384) { gemm_v7<bf16, true>(p); }
KILN_KERNEL_GC(gemm_v7_tma_wgmma_lora_f16, Gemm90Params, 384) { gemm_v7<f16, true>(p); }

// ---- gemv: decoding, m ≤ GEMV_MAX_M rows (a batch-1 step), B(q, j) contiguous in q (x·Wᵀ) ----
// Reading the weight once is the whole cost, so the schedule is a warp per output column j:
// lane l takes values 8l..8l+7 of each 256-value stretch of W's row j (a warp reads 256
// consecutive values, coalesced; a block-quantized row is decoded as it is read, never
// expanded), multiplies them into the m rows of x (cached: every warp reads the same x), and
// the warp sums its lanes. LoRA's rank-r term is the tail of the reduction, as in the GEMMs.
constexpr int GEMV_MAX_M = 4;
template <class TB>
__device__ __forceinline__ void gemv(const GemmParams& p) {
  const int warps = blockDim.x / 32, lane = threadIdx.x % 32;
  const int j = blockIdx.x * warps + threadIdx.x / 32;
  // The whole warp leaves together (j is the warp's), so the shuffles below see full warps.
  if (j >= p.n) return;
  float acc[GEMV_MAX_M] = {};
  const int kk = gemm_kk(p);
  for (int q0 = lane * 8; q0 < kk; q0 += 256) {
    KILN_UNROLL
    for (int e = 0; e < 8; ++e) {
      const int q = q0 + e;
      if (q < kk) {
        const float b = gemm_b<TB>(p, q, j);
        KILN_UNROLL
        for (int i = 0; i < GEMV_MAX_M; ++i)
          if (i < p.m) acc[i] = fmaf(gemm_a(p, i, q), b, acc[i]);
      }
    }
  }
  KILN_UNROLL
  for (int i = 0; i < GEMV_MAX_M; ++i) {
    const float s = warp_sum(acc[i]);
    if (lane == 0 && i < p.m) gemm_store(p, i, j, s);
  }
}
// 256 threads, at least 4 blocks per SM: 32 warps streaming the weight (≤ 64 registers).
KILN_KERNEL_OCC(gemv_f32, GemmParams, 256, 4) { gemv<float>(p); }
KILN_KERNEL_OCC(gemv_bf16, GemmParams, 256, 4) { gemv<bf16>(p); }
KILN_KERNEL_OCC(gemv_f16, GemmParams, 256, 4) { gemv<f16>(p); }
KILN_KERNEL_OCC(gemv_q, GemmParams, 256, 4) { gemv<QBlock>(p); }
