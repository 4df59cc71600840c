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
// One AdamW step's coefficients, shared by the f32 and 8-bit kernels. Mirrored by `AdamCoeffs`.
// The host computes each in f64 (`AdamWStep::factors`) and rounds it once: 1 − β is never
// formed here from the f32 β (at β2 = 0.999 that would be 1.3e-5 too small).
struct AdamCoeffs {
  float b1, c1;  // β1, 1 − β1
  float b2, c2;  // β2, 1 − β2
  float decay;   // 1 − lr·weight_decay (decoupled)
  float step;    // lr / (1 − β1^t)
  float bc2s;    // sqrt(1 − β2^t)
  float eps;
  float gscale;  // gradient-norm clipping: every gradient times this (1: none)
  int pad;
};

struct MultiParams {
  const MultiTensor* table;
  const int* chunks;  // (tensor, chunk) pairs
  double* out;        // sum_squares_multi: one partial per chunk
  int nchunks;
  int chunk;
  AdamCoeffs c;  // adamw_multi
};

// One AdamW update of a value, the gradient first multiplied by the clipping factor (as the
// unfused path's scale kernel does): decoupled decay, then the moments, then the step (bias
// corrections folded into `step` and `bc2s`). The one copy of the arithmetic, so the f32 and
// 8-bit kernels agree with each other and with the CPU's order of operations.
__device__ __forceinline__ float adamw_value(float x, float g, float& m, float& v, const AdamCoeffs& c) {
  if (c.gscale != 1.0f) g *= c.gscale;
  x *= c.decay;
  m = c.b1 * m + c.c1 * g;
  v = c.b2 * v + c.c2 * g * g;
  return x - c.step * m / (sqrtf(v) / c.bc2s + c.eps);
}

// AdamW in place on every tensor's p, m, v, the gradient first multiplied by the clipping factor
// (as the unfused path's scale kernel does). A single tensor's step is a table of one.
KILN_KERNEL_LB(adamw_multi_f32, MultiParams, 256) {
  for (int c = blockIdx.x; c < p.nchunks; c += gridDim.x) {
    const MultiTensor t = p.table[p.chunks[2 * c]];
    const i64 start = i64(p.chunks[2 * c + 1]) * p.chunk;
    const i64 end = start + p.chunk < t.n ? start + p.chunk : t.n;
    for (i64 i = start + threadIdx.x; i < end; i += blockDim.x) {
      float mm = t.m[i], vv = t.v[i];
      t.p[i] = adamw_value(t.p[i], t.g[i], mm, vv, p.c);
      t.m[i] = mm;
      t.v[i] = vv;
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

// ---- 8-bit AdamW: the moments stay on the device in kiln's block-wise 8-bit format ----
// (runtime/kiln/src/train/optim8.rs, one f32 scale per 256 values): a block of 256 threads per
// 256-value block dequantizes m and v, floors v at m²/64, runs the AdamW update, finds the
// block's new maxima and requantizes — the host path's arithmetic, value for value.
// Mirrored by `Adam8Params` in runtime/kiln-cuda/src/kernels.rs.
struct Adam8Params {
  const float* g;
  float* p;
  unsigned char* mc;  // first moment: signed codes
  float* ms;
  unsigned char* vc;  // second moment: codes of √v
  float* vs;
  i64 n;
  AdamCoeffs c;
};

KILN_KERNEL_LB(adamw8_f32, Adam8Params, 256) {
  __shared__ float red[32];
  const i64 blk = blockIdx.x, i = blk * 256 + threadIdx.x;
  const bool in = i < p.n;
  float mm = 0.f, vv = 0.f;
  if (in) {
    const float am = p.ms[blk], av = p.vs[blk];
    const float qm = float((signed char)p.mc[i]) / 127.0f;
    const float m0 = (qm < 0.f ? -1.f : 1.f) * qm * qm * am;
    const float qv = float(p.vc[i]) / 255.0f;
    const float s0 = qv * qv * av;
    const float v0 = fmaxf(s0 * s0, m0 * m0 / 64.0f);
    mm = m0;
    vv = v0;
    p.p[i] = adamw_value(p.p[i], p.g[i], mm, vv, p.c);
  }
  const float sv = sqrtf(fmaxf(vv, 0.f));
  const float am = block_max(in ? fabsf(mm) : 0.f, red);
  const float av = block_max(in ? sv : 0.f, red);
  if (in) {
    const float im = am > 0.f ? 1.0f / am : 0.f, iv = av > 0.f ? 1.0f / av : 0.f;
    const float cm = fminf(roundf(sqrtf(fabsf(mm) * im) * 127.0f), 127.0f);
    const int q = int(cm);
    p.mc[i] = (unsigned char)(signed char)(mm < 0.f ? -q : q);
    p.vc[i] = (unsigned char)int(fminf(roundf(sqrtf(sv * iv) * 255.0f), 255.0f));
  }
  if (threadIdx.x == 0) {
    p.ms[blk] = am;
    p.vs[blk] = av;
  }
}
