// Deliberately broken kernels, each beside its correct twin: the emulation's tests assert that
// the harness catches every one (a parity failure or a race report). Built only into the CPU
// emulation; never compiled by NVRTC, never used by the backend.
#include "common.cuh"

// Mirrored by `TestParams` in runtime/kiln-cuda/tests/cuda_emu.rs.
struct TestParams {
  const float* a;
  const float* b;
  float* c;
  int m, n, k, pad;
};

// ---- transpose of an m×n matrix through a 32×32 shared tile (blocks of 32×8 threads) ----
template <bool BARRIER>
__device__ __forceinline__ void transpose(const TestParams& p) {
  __shared__ float tile[32][33];
  const int bx = blockIdx.x * 32, by = blockIdx.y * 32;
  for (int r = threadIdx.y; r < 32; r += 8) {
    const int i = by + r, j = bx + threadIdx.x;
    tile[r][threadIdx.x] = i < p.m && j < p.n ? p.a[i * p.n + j] : 0.f;
  }
  if (BARRIER) __syncthreads();
  for (int r = threadIdx.y; r < 32; r += 8) {
    const int i = bx + r, j = by + threadIdx.x;  // output is n×m
    if (i < p.n && j < p.m) p.c[i * p.m + j] = tile[threadIdx.x][r];
  }
}
KILN_KERNEL(ok_transpose, TestParams) { transpose<true>(p); }
KILN_KERNEL(broken_transpose_no_barrier, TestParams) { transpose<false>(p); }

// ---- C = A·B (A m×k, B k×n row-major) with 16×16 tiles (blocks of 16×16 threads) ----
template <int SHIFT>
__device__ __forceinline__ void tiled(const TestParams& p) {
  __shared__ float As[16][16];
  __shared__ float Bs[16][16];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int i = blockIdx.y * 16 + ty, j = blockIdx.x * 16 + tx;
  float acc = 0.f;
  for (int k0 = 0; k0 < p.k; k0 += 16) {
    const int ka = k0 + tx + SHIFT, kb = k0 + ty;  // SHIFT = 1: the off-by-one
    As[ty][tx] = i < p.m && ka < p.k ? p.a[i * p.k + ka] : 0.f;
    Bs[ty][tx] = j < p.n && kb < p.k ? p.b[kb * p.n + j] : 0.f;
    __syncthreads();
    for (int q = 0; q < 16; ++q) acc = fmaf(As[ty][q], Bs[q][tx], acc);
    __syncthreads();
  }
  if (i < p.m && j < p.n) p.c[i * p.n + j] = acc;
}
KILN_KERNEL(ok_tiled_matmul, TestParams) { tiled<0>(p); }
KILN_KERNEL(broken_tiled_matmul_off_by_one, TestParams) { tiled<1>(p); }

// ---- one warp: C (16×8) = A (16×16, row-major) · B (16×8, row-major) through mma ----
// Fragments are loaded from global memory by the documented layout; SWAP exchanges a1 and a2
// (the rows g+8 / columns 2t+8 registers), the classic fragment mistake. SHFL uses the shuffle
// implementation of the same contract.
template <int MODE>
__device__ __forceinline__ void mma_tile(const TestParams& p) {
  const int lane = lane_id(), g = lane >> 2, t = lane & 3;
  auto A = [&](int r, int c) { return from_f32<bf16>(p.a[r * 16 + c]); };
  auto B = [&](int r, int c) { return from_f32<bf16>(p.b[r * 8 + c]); };
  u32 a[4] = {pack2(A(g, 2 * t), A(g, 2 * t + 1)), pack2(A(g + 8, 2 * t), A(g + 8, 2 * t + 1)),
              pack2(A(g, 2 * t + 8), A(g, 2 * t + 9)), pack2(A(g + 8, 2 * t + 8), A(g + 8, 2 * t + 9))};
  if (MODE == 1) {
    const u32 x = a[1];
    a[1] = a[2];
    a[2] = x;
  }
  const u32 b[2] = {pack2(B(2 * t, g), B(2 * t + 1, g)), pack2(B(2 * t + 8, g), B(2 * t + 9, g))};
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  if (MODE == 2) {
    mma_16816_shfl<bf16>(d, a, b);
  } else {
    mma_16816(d, a, b, bf16());
  }
  for (int i = 0; i < 4; ++i) p.c[(g + 8 * (i >= 2)) * 8 + 2 * t + (i & 1)] = d[i];
}
KILN_KERNEL(ok_mma_16816, TestParams) { mma_tile<0>(p); }
KILN_KERNEL(broken_mma_swapped_fragment, TestParams) { mma_tile<1>(p); }
KILN_KERNEL(ok_mma_16816_shuffles, TestParams) { mma_tile<2>(p); }

// ---- ldmatrix: the same tile through shared memory and ldmatrix_x4 / ldmatrix_x4_trans ----
KILN_KERNEL(ok_mma_ldmatrix, TestParams) {
  __shared__ __align__(16) unsigned short As[16][24];
  __shared__ __align__(16) unsigned short Bs[16][24];  // B row-major [k][n]: loaded with .trans
  const int lane = lane_id(), g = lane >> 2, t = lane & 3;
  for (int e = lane; e < 256; e += 32) As[e / 16][e % 16] = bits16(from_f32<bf16>(p.a[e]));
  for (int e = lane; e < 128; e += 32) Bs[e / 8][e % 8] = bits16(from_f32<bf16>(p.b[e]));
  __syncwarp();
  u32 a[4], bt[4];
  ldmatrix_x4(a, &As[lane % 16][(lane / 16) * 8]);
  // .trans of the k×n tile: matrices (k 0-7) and (k 8-15) give b0 and b1.
  ldmatrix_x4_trans(bt, &Bs[lane % 16][0]);
  const u32 b[2] = {bt[0], bt[1]};
  float d[4] = {0.f, 0.f, 0.f, 0.f};
  mma_16816(d, a, b, bf16());
  for (int i = 0; i < 4; ++i) p.c[(g + 8 * (i >= 2)) * 8 + 2 * t + (i & 1)] = d[i];
}

// ---- a warp reduction that forgets the lanes of a partial warp ----
KILN_KERNEL(broken_shfl_exited_lane, TestParams) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;  // lanes past n exit: the full-mask shuffle below names them
  const float v = warp_sum(p.a[i]);
  if (lane_id() == 0) p.c[i / 32] = v;
}

// ---- the harness's own cost: k barriers in a block (timed by the emulation tests) ----
KILN_KERNEL(ok_barrier_loop, TestParams) {
  float s = 0.f;
  for (int i = 0; i < p.k; ++i) {
    s += 1.f;
    __syncthreads();
  }
  p.c[tid_linear()] = s;
}

// ---- cp.async: a tile staged through shared memory in 16-byte copies, two groups in flight ----
KILN_KERNEL(ok_cp_async_copy, TestParams) {
  __shared__ __align__(16) float tile[2][128];
  const int t = threadIdx.x;  // 32 threads, 4 floats each per stage
  for (int s = 0; s < 2; ++s) cp_async_16(&tile[s][4 * t], p.a + s * 128 + 4 * t);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  for (int s = 0; s < 2; ++s)
    for (int i = 0; i < 4; ++i) p.c[s * 128 + 4 * t + i] = tile[s][(4 * t + i + 1) % 128] * 2.f;
}

// The same staging with the pipeline's mistakes. MODE 1 reads the tile before waiting (then
// waits); 2 waits for all but the newest group, which is the only one; 3 never waits; 4 copies
// the second stage only where `t` is even and fills the rest with zeros (the predicated tail).
template <int MODE>
__device__ __forceinline__ void cp_async_stage(const TestParams& p) {
  __shared__ __align__(16) float tile[2][128];
  const int t = threadIdx.x;
  cp_async_16(&tile[0][4 * t], p.a + 4 * t);
  if (MODE == 4)
    cp_async_16_zfill(&tile[1][4 * t], p.a + 128 + 4 * t, t % 2 == 0);
  else
    cp_async_16(&tile[1][4 * t], p.a + 128 + 4 * t);
  cp_async_commit();
  float early = 0.f;
  if (MODE == 1) early = tile[0][4 * t];
  if (MODE == 2) cp_async_wait<1>();
  if (MODE == 0 || MODE == 1 || MODE == 4) cp_async_wait<0>();
  __syncthreads();
  for (int s = 0; s < 2; ++s)
    for (int i = 0; i < 4; ++i) p.c[s * 128 + 4 * t + i] = tile[s][4 * t + i] + early;
  if (MODE == 2) cp_async_wait<0>();  // too late: the tile was read above
}
KILN_KERNEL(broken_cp_async_read_before_wait, TestParams) { cp_async_stage<1>(p); }
KILN_KERNEL(broken_cp_async_wait_leaves_the_group, TestParams) { cp_async_stage<2>(p); }
KILN_KERNEL(broken_cp_async_never_waited, TestParams) { cp_async_stage<3>(p); }
KILN_KERNEL(ok_cp_async_zfill, TestParams) { cp_async_stage<4>(p); }

// ---- wgmma: one warpgroup, C (64×128) = A (64×16, row-major) · B (16×128, row-major) ----
// Staged in dynamic shared memory in the K-major unswizzled layout (A core matrices at
// ((k/8)·8 + r/8)·128 bytes, B after A at ((k/8)·16 + n/8)·128), then one wgmma m64n128k16.
// MODE 1 swaps the descriptors' LBO and SBO; 2 overwrites A while the wgmma is in flight;
// 3 reads the accumulators before waiting; 4 never waits; 5 stages without fence.proxy.async.
template <int MODE>
__device__ __forceinline__ void wgmma_tile(const TestParams& p) {
  unsigned char* s = dyn_smem();
  const int tid = threadIdx.x;
  auto core = [](int r, int k, int rows) { return ((k / 8) * (rows / 8) + r / 8) * 128 + (r % 8) * 16 + (k % 8) * 2; };
  for (int e = tid; e < 64 * 16; e += 128)
    *reinterpret_cast<unsigned short*>(s + core(e / 16, e % 16, 64)) = bits16(from_f32<bf16>(p.a[e]));
  for (int e = tid; e < 16 * 128; e += 128)  // B(k, n) = p.b[k·128 + n], stored n-rows × k
    *reinterpret_cast<unsigned short*>(s + 2048 + core(e % 128, e / 128, 128)) = bits16(from_f32<bf16>(p.b[e]));
  if (MODE != 5) fence_proxy_async();
  __syncthreads();
  float d[WGMMA_N / 2];
  for (int i = 0; i < WGMMA_N / 2; ++i) d[i] = 0.f;
  const u64 da = MODE == 1 ? wgmma_desc(s, 128, 64 * 16) : wgmma_desc(s, 64 * 16, 128);
  const u64 db = wgmma_desc(s + 2048, 128 * 16, 128);
  wgmma_fence(d);
  wgmma_m64n128k16(d, da, db, bf16());
  wgmma_commit();
  if (MODE == 2) *reinterpret_cast<unsigned short*>(s + core(tid % 64, 0, 64)) = 0;
  float early = 0.f;
  if (MODE == 3) early = d[0];
  if (MODE != 4) wgmma_wait<0>(d);
  if (MODE == 3) d[0] = early;
  const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
  for (int i = 0; i < WGMMA_N / 2; ++i)
    p.c[(16 * w + g + 8 * ((i >> 1) & 1)) * 128 + 8 * (i >> 2) + 2 * t + (i & 1)] = d[i];
}
KILN_KERNEL_LB(ok_wgmma_tile, TestParams, 128) { wgmma_tile<0>(p); }
KILN_KERNEL_LB(broken_wgmma_lbo_sbo_swapped, TestParams, 128) { wgmma_tile<1>(p); }
KILN_KERNEL_LB(broken_wgmma_store_in_flight, TestParams, 128) { wgmma_tile<2>(p); }
KILN_KERNEL_LB(broken_wgmma_read_before_wait, TestParams, 128) { wgmma_tile<3>(p); }
KILN_KERNEL_LB(broken_wgmma_never_waited, TestParams, 128) { wgmma_tile<4>(p); }
KILN_KERNEL_LB(broken_wgmma_no_proxy_fence, TestParams, 128) { wgmma_tile<5>(p); }

// ---- where dynamic shared memory starts: the GPU guarantees 16-byte alignment and no more ----
// c[0] = the base address mod 128 (the emulation puts it 16 past a 128-byte boundary, so a
// kernel that assumes more alignment misbehaves here as it may on a GPU), c[1] = mod 16.
KILN_KERNEL(probe_dyn_smem_alignment, TestParams) {
  const unsigned long long a = reinterpret_cast<unsigned long long>(dyn_smem());
  if (threadIdx.x == 0) {
    p.c[0] = float(a % 128);
    p.c[1] = float(a % 16);
  }
}

// ---- TMA and mbarriers (sm_90a): a bf16 tile through a 128-byte-swizzled TMA box ----
// Mirrored by `TmaTestParams` in runtime/kiln-cuda/tests/cuda_emu.rs. `a`: bf16 [rows, 64]
// in boxes of 64 × 64; `b`: bf16 [128, 64] in one box of 64 × 128.
struct TmaTestParams {
  TensorMap a, b;
  float* c;
  int pad[14];
};
// One warpgroup: c[r·64 + j] = the tile's (r, j), read back through the swizzle. MODE 0
// correct; 1 reads before waiting on the barrier; 2 waits on the wrong phase (parity 1 of a
// fresh barrier); 3 announces 128 more transaction bytes than the load delivers.
// The dynamic shared memory aligned to 1024 bytes (the swizzle's period), and one mbarrier
// `bar_at` bytes into it, initialized for one arrival and published to the block.
__device__ __forceinline__ unsigned char* tma_test_setup(int bar_at, u64*& bar) {
  unsigned char* raw = dyn_smem();
  unsigned char* base = raw + (1024 - smem_offset(raw) % 1024) % 1024;
  bar = reinterpret_cast<u64*>(base + bar_at);
  if (threadIdx.x == 0) {
    mbar_init(bar, 1);
    mbar_fence_init();
  }
  __syncthreads();
  return base;
}
template <int MODE>
__device__ __forceinline__ void tma_tile(const TmaTestParams& p) {
  u64* bar;
  unsigned char* tile = tma_test_setup(64 * 128, bar);
  const int tid = threadIdx.x;
  if (tid == 0) {
    mbar_arrive_expect_tx(bar, 64 * 128 + (MODE == 3 ? 128 : 0));
    tma_load_2d(tile, &p.a, 0, 0, bar);
  }
  if (MODE != 1) mbar_wait(bar, MODE == 2 ? 1 : 0);
  const int r = tid / 2;
  for (int j = (tid % 2) * 32; j < (tid % 2) * 32 + 32; ++j) {
    const u32 off = r * 128 + (((j / 8) ^ (r % 8)) << 4) + (j % 8) * 2;
    p.c[r * 64 + j] = to_f32<bf16>(*reinterpret_cast<const bf16*>(tile + off));
  }
  if (MODE == 1) mbar_wait(bar, 0);
}
KILN_KERNEL_GC(ok_tma_tile, TmaTestParams, 128) { tma_tile<0>(p); }
KILN_KERNEL_GC(broken_tma_read_before_wait, TmaTestParams, 128) { tma_tile<1>(p); }
KILN_KERNEL_GC(broken_mbarrier_wrong_phase, TmaTestParams, 128) { tma_tile<2>(p); }
KILN_KERNEL_GC(broken_mbarrier_tx_never_completes, TmaTestParams, 128) { tma_tile<3>(p); }

// c [64, 128] = A [64, 64] · B [128, 64]ᵀ by four wgmma m64n128k16 straight from the TMA boxes.
// SWIZZLED: descriptors in the 128-byte swizzle the loads wrote (correct), or unswizzled ones
// over the same bytes (the mistake the emulation must refuse).
template <bool SWIZZLED>
__device__ __forceinline__ void tma_wgmma(const TmaTestParams& p) {
  u64* bar;
  unsigned char* sa = tma_test_setup((64 + 128) * 128, bar);
  unsigned char* sb = sa + 64 * 128;
  const int tid = threadIdx.x;
  if (tid == 0) {
    mbar_arrive_expect_tx(bar, (64 + 128) * 128);
    tma_load_2d(sa, &p.a, 0, 0, bar);
    tma_load_2d(sb, &p.b, 0, 0, bar);
  }
  mbar_wait(bar, 0);
  float d[64];
  for (int i = 0; i < 64; ++i) d[i] = 0.f;
  wgmma_fence(d);
  for (int ks = 0; ks < 4; ++ks) {
    const u64 da = SWIZZLED ? wgmma_desc_sw128(sa + ks * 32) : wgmma_desc(sa + ks * 32, 128, 1024);
    const u64 db = SWIZZLED ? wgmma_desc_sw128(sb + ks * 32) : wgmma_desc(sb + ks * 32, 128, 1024);
    wgmma_m64n128k16(d, da, db, bf16());
  }
  wgmma_commit();
  wgmma_wait<0>(d);
  const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
  for (int i = 0; i < 64; ++i) p.c[(16 * w + g + 8 * ((i >> 1) & 1)) * 128 + 8 * (i >> 2) + 2 * t + (i & 1)] = d[i];
}
KILN_KERNEL_GC(ok_tma_wgmma_swizzled, TmaTestParams, 128) { tma_wgmma<true>(p); }
KILN_KERNEL_GC(broken_tma_wgmma_wrong_swizzle, TmaTestParams, 128) { tma_wgmma<false>(p); }
