// RoPE (Op::Rope) on activations of type T (f32, or bf16/f16 on the mixed-precision path;
// rotated in f32): HF's "rotate half" by position·inverse frequency, backwards (the
// gradient) with sign −1, the rotated dims times `mscale`, over the first r = 2·rh dims of each head (partial rotary when
// r < D: Phi-4-mini, GPT-NeoX); dims from r on are copied. A thread per rotated pair or
// copied dim; reads and writes the activation once.
#include "common.cuh"

// Mirrored by `RopeParams` in runtime/kiln-cuda/src/kernels.rs.
struct RopeParams {
  const void* x;          // [B·T, H, D]
  const int* pos;         // [B·T]
  const float* inv_freq;  // [rh]
  void* y;
  i64 bt;
  int h;
  int d;
  float sign;  // −1 rotates backwards (the gradient)
  int rh;      // rotated pairs per head: r/2 ≤ D/2
  float mscale;  // the rotated dims' factor (YaRN/LongRoPE attention scaling), else 1
  int pad;
};

// HF "rotate half" on the rotary slice: dims i and i + rh rotate by pos·inv_freq[i]. A row
// (token, head) has D − rh items: rh pairs, then the D − 2·rh dims that pass through.
template <class T>
__device__ __forceinline__ void rope_body(const RopeParams& p) {
  const int per = p.d - p.rh;
  const i64 n = p.bt * p.h * per;
  for (i64 e = i64(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += i64(gridDim.x) * blockDim.x) {
    const int i = int(e % per);
    const i64 row = e / per;  // (t, head)
    const T* xr = static_cast<const T*>(p.x) + row * p.d;
    T* yr = static_cast<T*>(p.y) + row * p.d;
    if (i >= p.rh) {
      yr[i + p.rh] = xr[i + p.rh];
      continue;
    }
    const i64 t = row / p.h;
    const float ang = p.inv_freq[i] * float(p.pos[t]);
    // cos and sin each times the scale, as transformers forms them.
    const float c = cosf(ang) * p.mscale, s = p.sign * (sinf(ang) * p.mscale);
    const float a = to_f32<T>(xr[i]), b = to_f32<T>(xr[i + p.rh]);
    yr[i] = from_f32<T>(a * c - b * s);
    yr[i + p.rh] = from_f32<T>(b * c + a * s);
  }
}
KILN_KERNEL(rope_f32, RopeParams) { rope_body<float>(p); }
KILN_KERNEL(rope_bf16, RopeParams) { rope_body<bf16>(p); }
KILN_KERNEL(rope_f16, RopeParams) { rope_body<f16>(p); }
