// RoPE, f32 (Op::Rope): HF's "rotate half" by position·inverse frequency, backwards (the
// gradient) with sign −1. A thread per rotated pair; reads and writes the activation once.
#include "common.cuh"

// Mirrored by `RopeParams` in runtime/kiln-cuda/src/kernels.rs.
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
