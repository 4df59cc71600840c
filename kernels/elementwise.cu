// Elementwise ops and small reductions on activations of type T (f32, or bf16/f16 on the
// mixed-precision path: read and written in T, computed in f32); casts between f32, f16 and bf16.
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

// One body per op over T; kernels `<op>_<f32|bf16|f16>`.
template <class T>
__device__ __forceinline__ void add_body(const EwParams& p) {
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* o = static_cast<T*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = from_f32<T>(to_f32<T>(a[i]) + to_f32<T>(b[i])); }
}
template <class T>
__device__ __forceinline__ void mul_body(const EwParams& p) {
  const T* a = static_cast<const T*>(p.a);
  const T* b = static_cast<const T*>(p.b);
  T* o = static_cast<T*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = from_f32<T>(to_f32<T>(a[i]) * to_f32<T>(b[i])); }
}
template <class T>
__device__ __forceinline__ void scale_body(const EwParams& p) {
  const T* a = static_cast<const T*>(p.a);
  T* o = static_cast<T*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = from_f32<T>(to_f32<T>(a[i]) * p.s); }
}
#define KILN_EW3(name, body)                                  \
  KILN_KERNEL(name##_f32, EwParams) { body<float>(p); }       \
  KILN_KERNEL(name##_bf16, EwParams) { body<bf16>(p); }       \
  KILN_KERNEL(name##_f16, EwParams) { body<f16>(p); }
KILN_EW3(add, add_body)
KILN_EW3(mul, mul_body)
KILN_EW3(scale, scale_body)

// out = a · b[0] with b one f32 on the device (a backward seed the host never reads).
KILN_KERNEL(scale_by_f32, EwParams) {
  const float* a = static_cast<const float*>(p.a);
  const float s = *static_cast<const float*>(p.b);
  float* o = static_cast<float*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = a[i] * s; }
}

// n bytes from a to out (Backend::concat0 joining parts into one buffer): 16 bytes a thread
// where both addresses and n allow, else one byte.
KILN_KERNEL(copy_bytes, EwParams) {
  const unsigned char* a = static_cast<const unsigned char*>(p.a);
  unsigned char* o = static_cast<unsigned char*>(p.out);
  if (((reinterpret_cast<u64>(a) | reinterpret_cast<u64>(o) | u64(p.n)) & 15) == 0) {
    KILN_FOR_EACH(i, p.n / 16) { store_u32x4(o + 16 * i, load_u32x4(a + 16 * i)); }
  } else {
    KILN_FOR_EACH(i, p.n) { o[i] = a[i]; }
  }
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
template <class T>
__device__ __forceinline__ void sum_squares_body(const EwParams& p) {
  const T* a = static_cast<const T*>(p.a);
  float acc = 0.f;
  KILN_FOR_EACH(i, p.n) {
    const float v = to_f32<T>(a[i]);
    acc = fmaf(v, v, acc);
  }
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
KILN_KERNEL_LB(sum_squares_f32, EwParams, 256) { sum_squares_body<float>(p); }
KILN_KERNEL_LB(sum_squares_bf16, EwParams, 256) { sum_squares_body<bf16>(p); }
KILN_KERNEL_LB(sum_squares_f16, EwParams, 256) { sum_squares_body<f16>(p); }

// Mirrored by `ReduceParams`.
struct ReduceParams {
  const void* a;
  float* out;
  i64 rows;
  i64 cols;
};

// out[j] = Σ_i a[i, j] (a bias gradient): one thread per column, rows in order (deterministic).
template <class T>
__device__ __forceinline__ void col_sum_body(const ReduceParams& p) {
  const T* a = static_cast<const T*>(p.a);
  KILN_FOR_EACH(j, p.cols) {
    float s = 0.f;
    for (i64 i = 0; i < p.rows; ++i) s += to_f32<T>(a[i * p.cols + j]);
    p.out[j] = s;
  }
}
KILN_KERNEL(col_sum_f32, ReduceParams) { col_sum_body<float>(p); }
KILN_KERNEL(col_sum_bf16, ReduceParams) { col_sum_body<bf16>(p); }
KILN_KERNEL(col_sum_f16, ReduceParams) { col_sum_body<f16>(p); }

// Soft-capping (Op::Softcap, Gemma 2's logits): y = cap·tanh(x/cap), cap = p.s > 0.
template <class T>
__device__ __forceinline__ void softcap_fwd_body(const EwParams& p) {
  const T* a = static_cast<const T*>(p.a);
  T* o = static_cast<T*>(p.out);
  KILN_FOR_EACH(i, p.n) { o[i] = from_f32<T>(p.s * tanhf(to_f32<T>(a[i]) / p.s)); }
}

// Its gradient dy·(1 − tanh²(x/cap)), written 4e/(1 + e)² with e = exp(−2|x/cap|): 1 − t²
// would cancel to t's rounding where |x| ≫ cap, this has no cancellation anywhere. (|x/cap| is
// clamped at 40, where the factor is below 1e-34 and e stays a normal f32.)
template <class T>
__device__ __forceinline__ void softcap_bwd_body(const EwParams& p) {
  const T* a = static_cast<const T*>(p.a);
  const T* dy = static_cast<const T*>(p.b);
  T* o = static_cast<T*>(p.out);
  KILN_FOR_EACH(i, p.n) {
    const float e = expf(-2.0f * fminf(fabsf(to_f32<T>(a[i]) / p.s), 40.0f));
    const float q = 1.0f + e;
    o[i] = from_f32<T>(to_f32<T>(dy[i]) * (4.0f * e / (q * q)));
  }
}
KILN_EW3(softcap_fwd, softcap_fwd_body)
KILN_EW3(softcap_bwd, softcap_bwd_body)
