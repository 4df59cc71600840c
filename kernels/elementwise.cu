// Elementwise ops and small reductions (f32; casts between f32, f16 and bf16).
#include "common.cuh"

// Mirrored by `EwParams` in runtime/kiln-cuda/src/kernels.rs.
struct EwParams {
  const void* a;
  const void* b;
  void* out;
  i64 n;
  float s;
  int pad;
};

// Grid-stride loops: any grid covers any n.
#define KILN_FOR_EACH(i, n) \
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += i64(gridDim.x) * blockDim.x)

KILN_KERNEL(add_f32, EwParams) {
  const float* a = static_cast<const float*>(p.a);
  const float* b = static_cast<const float*>(p.b);
  float* o = static_cast<float*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = a[i] + b[i]; }
}

KILN_KERNEL(mul_f32, EwParams) {
  const float* a = static_cast<const float*>(p.a);
  const float* b = static_cast<const float*>(p.b);
  float* o = static_cast<float*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = a[i] * b[i]; }
}

KILN_KERNEL(scale_f32, EwParams) {
  const float* a = static_cast<const float*>(p.a);
  float* o = static_cast<float*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = a[i] * p.s; }
}

template <class TI, class TO>
__device__ __forceinline__ void cast_body(const EwParams& p) {
  const TI* a = static_cast<const TI*>(p.a);
  TO* o = static_cast<TO*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = from_f32<TO>(to_f32<TI>(a[i])); }
}
#define KILN_CAST(A, B) \
  KILN_KERNEL(cast_##A##_##B, EwParams) { cast_body<A, B>(p); }
KILN_CAST(float, float)
KILN_CAST(float, bf16)
KILN_CAST(float, f16)
KILN_CAST(bf16, float)
KILN_CAST(bf16, bf16)
KILN_CAST(bf16, f16)
KILN_CAST(f16, float)
KILN_CAST(f16, bf16)
KILN_CAST(f16, f16)

// Σ a² per block into `out` (f64 per block; the host adds the blocks). Blocks of 256 threads.
KILN_KERNEL_LB(sum_squares_f32, EwParams, 256) {
  const float* a = static_cast<const float*>(p.a);
  float acc = 0.f;
  KILN_FOR_EACH(i, p.n) { acc = fmaf(a[i], a[i], acc); }
  acc = warp_sum(acc);
  __shared__ float part[8];
  if (lane_id() == 0) part[warp_id()] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (u32 w = 0; w < blockDim.x / 32; ++w) s += double(part[w]);
    static_cast<double*>(p.out)[blockIdx.x] = s;
  }
}

// Mirrored by `ReduceParams`.
struct ReduceParams {
  const float* a;
  float* out;
  i64 rows;
  i64 cols;
};

// out[j] = Σ_i a[i, j] (a bias gradient): one thread per column, rows in order (deterministic).
KILN_KERNEL(col_sum_f32, ReduceParams) {
  KILN_FOR_EACH(j, p.cols) {
    float s = 0.f;
    for (i64 i = 0; i < p.rows; ++i) s += p.a[i * p.cols + j];
    p.out[j] = s;
  }
}

// Soft-capping (Op::Softcap, Gemma 2's logits): y = cap·tanh(x/cap), cap = p.s > 0.
KILN_KERNEL(softcap_fwd_f32, EwParams) {
  const float* a = static_cast<const float*>(p.a);
  float* o = static_cast<float*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = p.s * tanhf(a[i] / p.s); }
}

// Its gradient dy·(1 − tanh²(x/cap)), written 4e/(1 + e)² with e = exp(−2|x/cap|): 1 − t²
// would cancel to t's rounding where |x| ≫ cap, this has no cancellation anywhere. (|x/cap| is
// clamped at 40, where the factor is below 1e-34 and e stays a normal f32.)
KILN_KERNEL(softcap_bwd_f32, EwParams) {
  const float* a = static_cast<const float*>(p.a);
  const float* dy = static_cast<const float*>(p.b);
  float* o = static_cast<float*>(p.out);
  KILN_FOR_EACH(i, p.n) {
    const float e = expf(-2.0f * fminf(fabsf(a[i] / p.s), 40.0f));
    const float q = 1.0f + e;
    o[i] = dy[i] * (4.0f * e / (q * q));
  }
}
