// Multi-tensor optimizer kernels: one launch updates every trainable tensor of a parameter group
// (apex's multi_tensor_apply idea), and one launch sums the squares of every gradient for the
// global norm, instead of a launch (and, for the norm, a read-back) per tensor.
// The host uploads a table of the tensors (pointers and sizes) and a list of chunks of
// `chunk` elements (tensor, chunk index); a block takes a chunk at a time.
#include "common.cuh"

// One tensor of the table: its gradient, parameter and moments (f32), and its size.
struct MultiTensor {
  const float* g;
  float* p;
  float* m;
  float* v;
  i64 n;
};

// Mirrored by `MultiParams` in runtime/kiln-cuda/src/kernels.rs.
struct MultiParams {
  const MultiTensor* table;
  const int* chunks;  // (tensor, chunk) pairs
  double* out;        // sum_squares_multi: one partial per chunk
  int nchunks;
  int chunk;
  float b1, b2;
  float decay;   // 1 − lr·weight_decay (decoupled)
  float step;    // lr / (1 − β1^t)
  float bc2s;    // sqrt(1 − β2^t)
  float eps;
  float gscale;  // gradient-norm clipping: every gradient times this (1: none)
  int pad;
};

// AdamW in place on every tensor's p, m, v — the arithmetic of loss.cu's adamw_f32, with the
// gradient first multiplied by the clipping factor (as the unfused path's scale kernel does).
KILN_KERNEL_LB(adamw_multi_f32, MultiParams, 256) {
  for (int c = blockIdx.x; c < p.nchunks; c += gridDim.x) {
    const MultiTensor t = p.table[p.chunks[2 * c]];
    const i64 start = i64(p.chunks[2 * c + 1]) * p.chunk;
    const i64 end = start + p.chunk < t.n ? start + p.chunk : t.n;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
      const float g = p.gscale == 1.0f ? t.g[i] : t.g[i] * p.gscale;
      float x = t.p[i] * p.decay;
      const float mm = p.b1 * t.m[i] + (1.0f - p.b1) * g;
      const float vv = p.b2 * t.v[i] + (1.0f - p.b2) * g * g;
      x -= p.step * mm / (sqrtf(vv) / p.bc2s + p.eps);
      t.m[i] = mm;
      t.v[i] = vv;
      t.p[i] = x;
    }
  }
}

// Σ g² of each chunk (f64; the host adds the chunks).
KILN_KERNEL_LB(sum_squares_multi_f32, MultiParams, 256) {
  __shared__ float part[8];
  for (int c = blockIdx.x; c < p.nchunks; c += gridDim.x) {
    const MultiTensor t = p.table[p.chunks[2 * c]];
    const i64 start = i64(p.chunks[2 * c + 1]) * p.chunk;
    const i64 end = start + p.chunk < t.n ? start + p.chunk : t.n;
    float acc = 0.f;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) acc = fmaf(t.g[i], t.g[i], acc);
    acc = warp_sum(acc);
    if (lane_id() == 0) part[warp_id()] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      double s = 0.0;
      for (u32 w = 0; w < blockDim.x / 32; ++w) s += double(part[w]);
      p.out[c] = s;
    }
    __syncthreads();
  }
}
