// Cross-entropy over the vocabulary with ignored targets, f32 (AdamW: optim.cu).
// Forward: a block of 256 threads per row of logits [M, V]: the row's max, then Σ exp(x − max)
// (block reductions), lse = max + ln Σ, nll = lse − x[target] (0 where target < 0); the host
// forms the mean from nll. Backward: a thread per logit, (exp(x − lse) − [c = target])·g[row],
// zero on ignored rows; g is the per-row weight (dloss/n_valid for the mean, or given per row).
// The fused LM head (ops::linear_cross_entropy) uses ce_chunk_f32 and loss_sum_f32 instead: one
// read of a chunk's logits for max, Σ exp, nll and dlogits, and the mean kept on the device.
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
  float s;  // ce_chunk: the gradient's scale (1/n_valid); loss_sum: the sum's
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

// An online (max, Σ exp(x − max)) pair taking one more logit.
__device__ __forceinline__ void ce_take(float x, float& mx, float& se) {
  if (x > mx) {
    se = se * expf(mx - x) + 1.f;
    mx = x;
  } else {
    se += expf(x - mx);
  }
}

// The dlogits of the four logits q holds (columns c0 … c0+3 of a row with target t), the
// one-hot subtracted where it falls, as the four f32 bits to store.
__device__ __forceinline__ uint4 ce_grad4(uint4 q, int c0, int t, float lse, float g) {
  const float x[4] = {__uint_as_float(q.x), __uint_as_float(q.y), __uint_as_float(q.z), __uint_as_float(q.w)};
  u32 d[4];
  for (int j = 0; j < 4; ++j) d[j] = __float_as_uint((expf(x[j] - lse) - (c0 + j == t ? 1.f : 0.f)) * g);
  return uint4{d[0], d[1], d[2], d[3]};
}

// A chunk of the fused LM head's loss: a block of 256 threads per row reads the row once for
// its max and Σ exp (online pairs merged across the block), writes nll = lse − x[target] (out1;
// 0 where target < 0) and, when out0 is set, reads it again for dlogits = (exp(x − lse) −
// [c = target])·s (zero on ignored rows). 16-byte loads and stores when the rows are (v a
// multiple of 4, x and out0 16-byte aligned); no per-element divide.
KILN_KERNEL_LB(ce_chunk_f32, CeParams, 256) {
  __shared__ float red[32];
  const bool vec = (p.v & 3) == 0 && ((reinterpret_cast<u64>(p.x) | reinterpret_cast<u64>(p.out0)) & 15) == 0;
  for (i64 r = blockIdx.x; r < p.m; r += gridDim.x) {
    const float* x = p.x + r * p.v;
    float mx = -3.0e38f, se = 0.f;
    if (vec) {
      for (int i = 4 * threadIdx.x; i < p.v; i += 4 * blockDim.x) {
        const uint4 q = load_u32x4(x + i);
        ce_take(__uint_as_float(q.x), mx, se);
        ce_take(__uint_as_float(q.y), mx, se);
        ce_take(__uint_as_float(q.z), mx, se);
        ce_take(__uint_as_float(q.w), mx, se);
      }
    } else {
      for (int i = threadIdx.x; i < p.v; i += blockDim.x) ce_take(x[i], mx, se);
    }
    const float m = block_max(mx, red);
    const float lse = m + logf(block_sum(se * expf(mx - m), red));
    const int t = p.t[r];
    if (threadIdx.x == 0) p.out1[r] = t >= 0 ? lse - x[t] : 0.f;
    if (!p.out0) continue;
    float* o = p.out0 + r * p.v;
    const float g = t >= 0 ? p.s : 0.f;
    if (vec) {
      for (int i = 4 * threadIdx.x; i < p.v; i += 4 * blockDim.x) {
        store_u32x4(o + i, ce_grad4(load_u32x4(x + i), i, t, lse, g));
      }
    } else {
      for (int i = threadIdx.x; i < p.v; i += blockDim.x) o[i] = (expf(x[i] - lse) - (i == t ? 1.f : 0.f)) * g;
    }
  }
}

// out0[0] = (lse ? lse[0] : 0) + s·Σ x[0 … m): the mean loss over a fused head's chunks, kept on
// the device (lse is the running sum, out1 unused). One block; each thread sums a stride in
// order, then the block's tree: deterministic.
KILN_KERNEL_LB(loss_sum_f32, CeParams, 1024) {
  __shared__ float red[32];
  float acc = 0.f;
  for (i64 i = threadIdx.x; i < p.m; i += blockDim.x) acc += p.x[i];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) p.out0[0] = (p.lse ? p.lse[0] : 0.f) + p.s * acc;
}
