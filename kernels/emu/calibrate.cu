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
