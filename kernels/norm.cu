// RMSNorm forward and backward, f32 (Op::RmsNorm). Each reads and writes an activation once: a
// block of 256 threads per row (block reductions); dw a thread per column.
#include "common.cuh"

// Mirrored by `NormParams` in runtime/kiln-cuda/src/kernels.rs.
struct NormParams {
  const float* x;     // [rows, h]
  const float* w;     // [h]
  const float* dy;    // backward: [rows, h]
  const float* rstd;  // backward: [rows]
  float* y;           // forward: y; backward: dx (or dw for rms_norm_bwd_dw_f32)
  float* rstd_out;    // forward: [rows]
  i64 rows;
  int h;
  float eps;
};

// y = x·rstd·w with rstd = 1/sqrt(mean(x²) + eps).
KILN_KERNEL_LB(rms_norm_fwd_f32, NormParams, 256) {
  __shared__ float red[32];
  for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float* x = p.x + r * p.h;
    float ss = 0.f;
    for (int i = threadIdx.x; i < p.h; i += blockDim.x) ss = fmaf(x[i], x[i], ss);
    const float s = 1.0f / sqrtf(block_sum(ss, red) / float(p.h) + p.eps);
    for (int i = threadIdx.x; i < p.h; i += blockDim.x) p.y[r * p.h + i] = x[i] * s * p.w[i];
    if (threadIdx.x == 0) p.rstd_out[r] = s;
  }
}

// dx = rstd·(g − x̂·mean(g·x̂)), g = dy·w, x̂ = x·rstd.
KILN_KERNEL_LB(rms_norm_bwd_dx_f32, NormParams, 256) {
  __shared__ float red[32];
  for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const float *x = p.x + r * p.h, *dy = p.dy + r * p.h;
    const float s = p.rstd[r];
    float dot = 0.f;
    for (int i = threadIdx.x; i < p.h; i += blockDim.x) dot = fmaf(dy[i] * p.w[i], x[i] * s, dot);
    dot = block_sum(dot, red) / float(p.h);
    for (int i = threadIdx.x; i < p.h; i += blockDim.x) p.y[r * p.h + i] = s * (dy[i] * p.w[i] - x[i] * s * dot);
  }
}

// dw[i] = Σ_rows dy·x·rstd: a thread per column, rows in order (deterministic).
KILN_KERNEL(rms_norm_bwd_dw_f32, NormParams) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.h; i += i64(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (i64 r = 0; r < p.rows; ++r) acc = fmaf(p.dy[r * p.h + i], p.x[r * p.h + i] * p.rstd[r], acc);
    p.y[i] = acc;
  }
}
