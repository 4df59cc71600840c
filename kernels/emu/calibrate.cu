// Kernels with known memory behaviour, the profiler's calibration (runtime/kiln-cuda/tests/
// cuda_prof.rs): coalesced copies (every byte of every sector used), a stride-32 gather (one
// sector per 4-byte lane: 1/8 of each sector used), a copy one element off the sector boundary
// (five sectors per 128 bytes), and a 32×32 shared-memory transpose read down a column, unpadded
// (all 32 lanes in one bank: 32 wavefronts) and padded to 33 (one wavefront). Emulation only.
#include "common.cuh"

// Mirrored by `CalibParams` in runtime/kiln-cuda/tests/cuda_prof.rs.
struct CalibParams {
  const float* a;
  float* c;
  int n, pad;
};

KILN_KERNEL(calib_copy_f32, CalibParams) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < p.n) p.c[i] = p.a[i];
}
KILN_KERNEL(calib_copy_f32_offset, CalibParams) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < p.n) p.c[i] = p.a[i + 1];
}
KILN_KERNEL(calib_copy_v4, CalibParams) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < p.n / 4) reinterpret_cast<uint4*>(p.c)[i] = reinterpret_cast<const uint4*>(p.a)[i];
}
KILN_KERNEL(calib_gather_stride32, CalibParams) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < p.n / 32) p.c[i] = p.a[32 * i];
}

// One 32×32 tile per block of 32×32 threads: written along rows, read down columns.
template <int LD>
__device__ __forceinline__ void calib_transpose(const CalibParams& p) {
  __shared__ float tile[32][LD];
  const int x = int(threadIdx.x), y = int(threadIdx.y), base = int(blockIdx.x) * 1024;
  tile[y][x] = p.a[base + y * 32 + x];
  __syncthreads();
  p.c[base + y * 32 + x] = tile[x][y];
}
KILN_KERNEL(calib_transpose_unpadded, CalibParams) { calib_transpose<32>(p); }
KILN_KERNEL(calib_transpose_padded, CalibParams) { calib_transpose<33>(p); }

// ldmatrix.x4 over 32 rows of 16 bytes: rows 16 bytes apart fill all 32 banks once per 8-row
// matrix (4 wavefronts, the minimum); rows PITCH bytes apart with PITCH = 128 put a matrix's 8
// rows in the same 4 banks (8 wavefronts per matrix, 32 in all). 16-byte lane loads: 8 lanes
// per 128-byte phase, contiguous (4 wavefronts) or 32 bytes apart (2-way conflicts, 8).
template <int PITCH>
__device__ __forceinline__ void calib_ldsm(const CalibParams& p) {
  __shared__ __align__(16) unsigned short rows[32 * PITCH / 2];
  const int lane = int(threadIdx.x);
  for (int i = lane; i < 32 * PITCH / 2; i += 32) rows[i] = (unsigned short)(i & 0x7fff);
  __syncthreads();
  u32 r[4];
  ldmatrix_x4(r, &rows[lane * (PITCH / 2)]);
  p.c[lane] = float(r[0] + r[1] + r[2] + r[3]);
}
KILN_KERNEL(calib_ldmatrix_packed, CalibParams) { calib_ldsm<16>(p); }
KILN_KERNEL(calib_ldmatrix_pitch128, CalibParams) { calib_ldsm<128>(p); }

template <int STRIDE>
__device__ __forceinline__ void calib_lds128(const CalibParams& p) {
  __shared__ __align__(16) unsigned char buf[32 * STRIDE];
  const int lane = int(threadIdx.x);
  for (int i = lane; i < 32 * STRIDE / 4; i += 32) reinterpret_cast<u32*>(buf)[i] = u32(i);
  __syncthreads();
  // Copied whole: one 16-byte access here too (fields read one by one would be four 4-byte
  // accesses to the host compiler, though ptxas may merge them).
  reinterpret_cast<uint4*>(p.c)[lane] = *reinterpret_cast<const uint4*>(&buf[lane * STRIDE]);
}
KILN_KERNEL(calib_lds128_packed, CalibParams) { calib_lds128<16>(p); }
KILN_KERNEL(calib_lds128_stride32, CalibParams) { calib_lds128<32>(p); }
