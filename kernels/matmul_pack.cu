// The GEMMs' operand preparation and reductions (Op::Matmul, Op::Linear; beside matmul.cu): the
// 16-bit packing of A and LoRA's factors for v6 and v7, the 16-bit transpose of v7's dx weight,
// and the split-K sum of v6's slabs.
#include "common.cuh"

// A 16-bit transpose, out [cols, rows] (rows ld_out apart) = in [rows, cols] (rows ld_in
// apart): v7 on Hopper reads the weight of dx = dy·W as NK through it. 64×64 tiles through
// shared memory, 16-byte loads and stores (a group of 8 lanes writes one 128-byte output row);
// rows and cols multiples of 8, bases 16-byte aligned (the backend checks).
struct TransposeParams {
  const void* in;
  void* out;
  i64 ld_in, ld_out;
  int rows, cols;
};
KILN_KERNEL_LB(gemm_transpose16, TransposeParams, 256) {
  // Rows of 66 values: a column read (8 rows apart per lane group) spreads over the banks.
  __shared__ __align__(16) unsigned short tile[64][66];
  const int r0 = blockIdx.y * 64, c0 = blockIdx.x * 64, tid = threadIdx.x;
  const unsigned short* in = static_cast<const unsigned short*>(p.in);
  unsigned short* out = static_cast<unsigned short*>(p.out);
  KILN_UNROLL
  for (int q = tid; q < 512; q += 256) {
    const int r = q >> 3, j = q & 7;
    uint4 v = {0u, 0u, 0u, 0u};
    if (r0 + r < p.rows && c0 + 8 * j < p.cols) v = load_u32x4(in + i64(r0 + r) * p.ld_in + c0 + 8 * j);
    u32* d = reinterpret_cast<u32*>(&tile[r][8 * j]);
    d[0] = v.x;
    d[1] = v.y;
    d[2] = v.z;
    d[3] = v.w;
  }
  __syncthreads();
  KILN_UNROLL
  for (int q = tid; q < 512; q += 256) {
    const int c = q >> 3, j = q & 7;
    if (c0 + c >= p.cols || r0 + 8 * j >= p.rows) continue;
    u32 e[4];
    KILN_UNROLL
    for (int i = 0; i < 4; ++i) e[i] = u32(tile[8 * j + 2 * i][c]) | (u32(tile[8 * j + 2 * i + 1][c]) << 16);
    store_u32x4(out + i64(c0 + c) * p.ld_out + r0 + 8 * j, uint4{e[0], e[1], e[2], e[3]});
  }
}

// Operand packing for v6 and v7: out[r·ld + c] = T(scale · x[r·s_row + c·s_col]) for r < rows,
// c < cols, and zero up to out_rows × ld (the padding 16-byte chunks read); x in f32, or in T
// itself (`gemm_pack16_*`: 16-bit activations whose rows need padding or another layout).
// A thread makes 4 consecutive outputs (one 8-byte store: a warp writes 256 contiguous bytes);
// contiguous rows are read 16 (f32) or 8 (16-bit) bytes a thread.
// Mirrored by `PackParams` in runtime/kiln-cuda/src/kernels.rs.
struct PackParams {
  const void* x;
  void* out;
  i64 s_row, s_col;
  int rows, cols, out_rows, ld;
  float scale;
  int pad;
};
template <class TI, class T>
__device__ __forceinline__ void gemm_pack(const PackParams& p) {
  const i64 e = (i64(blockIdx.y) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
  const int per_row = p.ld / 4;
  if (e >= i64(p.out_rows) * per_row) return;
  const int r = int(e / per_row), c0 = int(e % per_row) * 4;
  float v[4];
  const TI* src = static_cast<const TI*>(p.x) + i64(r) * p.s_row + i64(c0) * p.s_col;
  const bool vec = p.s_col == 1 && r < p.rows && c0 + 4 <= p.cols &&
                   (reinterpret_cast<u64>(src) & (4 * sizeof(TI) - 1)) == 0;
  if (vec) {
    if constexpr (sizeof(TI) == 4) {
      const uint4 q = load_u32x4(src);
      v[0] = __uint_as_float(q.x), v[1] = __uint_as_float(q.y), v[2] = __uint_as_float(q.z), v[3] = __uint_as_float(q.w);
    } else {
      const u64 q = *reinterpret_cast<const u64*>(src);
      KILN_UNROLL
      for (int i = 0; i < 4; ++i) v[i] = to_f32<TI>(of_bits16<TI>((unsigned short)(q >> (16 * i))));
    }
  } else {
    KILN_UNROLL
    for (int i = 0; i < 4; ++i) v[i] = r < p.rows && c0 + i < p.cols ? to_f32<TI>(src[i64(i) * p.s_col]) : 0.f;
  }
  const u32 lo = pack2(from_f32<T>(p.scale * v[0]), from_f32<T>(p.scale * v[1]));
  const u32 hi = pack2(from_f32<T>(p.scale * v[2]), from_f32<T>(p.scale * v[3]));
  reinterpret_cast<u64*>(static_cast<unsigned short*>(p.out) + i64(r) * p.ld + c0)[0] = u64(lo) | (u64(hi) << 32);
}
// The split-K sum: out[i] = Σ_z ws[z·len + i] (splits in order: deterministic).
struct SplitSumParams {
  const float* ws;
  float* out;
  i64 len;
  int splits;
  int cols;  // > 0: the slabs are [len / cols, cols] and out is their transpose (LoRA's dB)
};
KILN_KERNEL(gemm_splitk_sum, SplitSumParams) {
  const i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.len) return;
  float s = 0.f;
  for (int z = 0; z < p.splits; ++z) s += p.ws[z * p.len + i];
  if (p.cols > 0)
    p.out[(i % p.cols) * (p.len / p.cols) + i / p.cols] = s;
  else
    p.out[i] = s;
}

KILN_KERNEL(gemm_pack_bf16, PackParams) { gemm_pack<float, bf16>(p); }
KILN_KERNEL(gemm_pack_f16, PackParams) { gemm_pack<float, f16>(p); }
KILN_KERNEL(gemm_pack16_bf16, PackParams) { gemm_pack<bf16, bf16>(p); }
KILN_KERNEL(gemm_pack16_f16, PackParams) { gemm_pack<f16, f16>(p); }

// Two packings in one launch (blockIdx.z picks the job; the grid covers the larger): v7's fused
// LoRA packs its A and B together. Mirrored by `PackPairParams` in runtime/kiln-cuda/src/kernels.rs.
struct PackPairParams {
  PackParams job[2];
};
KILN_KERNEL(gemm_pack_pair_bf16, PackPairParams) { gemm_pack<float, bf16>(p.job[blockIdx.z]); }
KILN_KERNEL(gemm_pack_pair_f16, PackPairParams) { gemm_pack<float, f16>(p.job[blockIdx.z]); }
