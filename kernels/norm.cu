// RMSNorm (forward and backward), RoPE and SwiGLU, f32. Each reads and writes an activation
// once: a block of 256 threads per row for the norm (block reductions), one thread per element
// (pair, for RoPE) otherwise.
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

// Mirrored by `RopeParams`.
struct RopeParams {
  const float* x;         // [B·T, H, D]
  const int* pos;         // [B·T]
  const float* inv_freq;  // [D/2]
  float* y;
  i64 bt;
  int h;
  int d;
  float sign;  // −1 rotates backwards (the gradient)
  int pad;
};

// HF "rotate half": dims i and i + D/2 rotate by pos·inv_freq[i]. A thread per pair.
KILN_KERNEL(rope_f32, RopeParams) {
  const int half = p.d / 2;
  const i64 n = p.bt * p.h * half;
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x) {
    const int i = int(e % half);
    const i64 row = e / half;  // (t, head)
    const i64 t = row / p.h;
    const float ang = p.inv_freq[i] * float(p.pos[t]);
    const float c = cosf(ang), s = p.sign * sinf(ang);
    const float a = p.x[row * p.d + i], b = p.x[row * p.d + i + half];
    p.y[row * p.d + i] = a * c - b * s;
    p.y[row * p.d + i + half] = b * c + a * s;
  }
}

// Mirrored by `GluParams`.
struct GluParams {
  const float* g;
  const float* u;
  const float* dy;
  float* out0;  // forward: silu(g)·u; backward: dg
  float* out1;  // backward: du
  i64 n;
};

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

KILN_KERNEL(swiglu_fwd_f32, GluParams) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += i64(gridDim.x) * blockDim.x) {
    const float g = p.g[i];
    p.out0[i] = g * sigmoidf(g) * p.u[i];
  }
}

// d silu/dg = s + g·s·(1 − s).
KILN_KERNEL(swiglu_bwd_f32, GluParams) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += i64(gridDim.x) * blockDim.x) {
    const float g = p.g[i], u = p.u[i], d = p.dy[i];
    const float s = sigmoidf(g);
    p.out0[i] = d * u * (s + g * s * (1.0f - s));
    p.out1[i] = d * g * s;
  }
}
