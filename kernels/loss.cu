// Cross-entropy over the vocabulary with ignored targets, f32 (AdamW: optim.cu).
// Forward: a block of 256 threads per row of logits [M, V]: the row's max, then Σ exp(x − max)
// (block reductions), lse = max + ln Σ, nll = lse − x[target] (0 where target < 0); the host
// forms the mean from nll. Backward: a thread per logit, (exp(x − lse) − [c = target])·g[row],
// zero on ignored rows; g is the per-row weight (dloss/n_valid for the mean, or given per row).
#include "common.cuh"

// Mirrored by `CeParams` in runtime/kiln-cuda/src/kernels.rs.
struct CeParams {
  const float* x;    // [m, v]
  const int* t;      // [m]
  const float* lse;  // backward: [m]
  const float* g;    // backward: [m]
  float* out0;       // forward: lse; backward: dx [m, v]
  float* out1;       // forward: nll
  i64 m;
  int v;
  int pad;
};

KILN_KERNEL_LB(ce_fwd_f32, CeParams, 256) {
  __shared__ float red[32];
  for (i64 r = blockIdx.x; r < p.m; r += gridDim.x) {
    const float* x = p.x + r * p.v;
    float mx = -3.0e38f;
    for (int i = threadIdx.x; i < p.v; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = block_max(mx, red);
    float acc = 0.f;
    for (int i = threadIdx.x; i < p.v; i += blockDim.x) acc += expf(x[i] - mx);
    acc = block_sum(acc, red);
    if (threadIdx.x == 0) {
      const float lse = mx + logf(acc);
      p.out0[r] = lse;
      const int t = p.t[r];
      p.out1[r] = t >= 0 ? lse - x[t] : 0.f;
    }
  }
}

KILN_KERNEL(ce_bwd_f32, CeParams) {
  const i64 n = p.m * p.v;
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x) {
    const i64 r = e / p.v;
    const int c = int(e % p.v), t = p.t[r];
    if (t < 0) {
      p.out0[e] = 0.f;
      continue;
    }
    float d = expf(p.x[e] - p.lse[r]);
    if (c == t) d -= 1.f;
    p.out0[e] = d * p.g[r];
  }
}
