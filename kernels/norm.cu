// RMSNorm forward and backward (Op::RmsNorm) on activations of type T (f32, or bf16/f16 on the
// mixed-precision path): x, dy, y and dx in T, the weight, rstd and dw in f32, every sum in f32.
// Each reads and writes an activation once: a block of 256 threads per row (block reductions);
// dw a thread per column.
#include "common.cuh"

// Mirrored by `NormParams` in runtime/kiln-cuda/src/kernels.rs.
struct NormParams {
  const void* x;      // [rows, h]
  const float* w;     // [h]
  const void* dy;     // backward: [rows, h]
  const float* rstd;  // backward: [rows]
  void* y;            // forward: y; backward: dx (f32 dw for rms_norm_bwd_dw_*)
  float* rstd_out;    // forward: [rows]
  i64 rows;
  int h;
  float eps;
};

// y = x·rstd·w with rstd = 1/sqrt(mean(x²) + eps).
template <class T>
__device__ __forceinline__ void rms_norm_fwd_body(const NormParams& p) {
  __shared__ float red[32];
  for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const T* x = static_cast<const T*>(p.x) + r * p.h;
    T* y = static_cast<T*>(p.y) + r * p.h;
    float ss = 0.f;
    for (int i = threadIdx.x; i < p.h; i += blockDim.x) {
      const float v = to_f32<T>(x[i]);
      ss = fmaf(v, v, ss);
    }
    const float s = 1.0f / sqrtf(block_sum(ss, red) / float(p.h) + p.eps);
    for (int i = threadIdx.x; i < p.h; i += blockDim.x) y[i] = from_f32<T>(to_f32<T>(x[i]) * s * p.w[i]);
    if (threadIdx.x == 0) p.rstd_out[r] = s;
  }
}

// dx = rstd·(g − x̂·mean(g·x̂)), g = dy·w, x̂ = x·rstd.
template <class T>
__device__ __forceinline__ void rms_norm_bwd_dx_body(const NormParams& p) {
  __shared__ float red[32];
  for (i64 r = blockIdx.x; r < p.rows; r += gridDim.x) {
    const T *x = static_cast<const T*>(p.x) + r * p.h, *dy = static_cast<const T*>(p.dy) + r * p.h;
    T* dx = static_cast<T*>(p.y) + r * p.h;
    const float s = p.rstd[r];
    float dot = 0.f;
    for (int i = threadIdx.x; i < p.h; i += blockDim.x)
      dot = fmaf(to_f32<T>(dy[i]) * p.w[i], to_f32<T>(x[i]) * s, dot);
    dot = block_sum(dot, red) / float(p.h);
    for (int i = threadIdx.x; i < p.h; i += blockDim.x)
      dx[i] = from_f32<T>(s * (to_f32<T>(dy[i]) * p.w[i] - to_f32<T>(x[i]) * s * dot));
  }
}

// dw[i] = Σ_rows dy·x·rstd: a thread per column, rows in order (deterministic).
template <class T>
__device__ __forceinline__ void rms_norm_bwd_dw_body(const NormParams& p) {
  const T *x = static_cast<const T*>(p.x), *dy = static_cast<const T*>(p.dy);
  float* dw = static_cast<float*>(p.y);
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.h; i += i64(gridDim.x) * blockDim.x) {
    float acc = 0.f;
    for (i64 r = 0; r < p.rows; ++r) acc = fmaf(to_f32<T>(dy[r * p.h + i]), to_f32<T>(x[r * p.h + i]) * p.rstd[r], acc);
    dw[i] = acc;
  }
}

#define KILN_NORM3(name, LB)                                                         \
  KILN_KERNEL_LB(name##_f32, NormParams, LB) { name##_body<float>(p); }             \
  KILN_KERNEL_LB(name##_bf16, NormParams, LB) { name##_body<bf16>(p); }             \
  KILN_KERNEL_LB(name##_f16, NormParams, LB) { name##_body<f16>(p); }
KILN_NORM3(rms_norm_fwd, 256)
KILN_NORM3(rms_norm_bwd_dx, 256)
KILN_NORM3(rms_norm_bwd_dw, 256)
