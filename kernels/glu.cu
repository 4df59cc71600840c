// Gated linear units, f32 (Op::SwiGlu, Op::GeGlu): y = act(g)·u with SiLU (SwiGLU) or
// tanh-approximate GELU (GeGLU, PyTorch's gelu(approximate="tanh"), Gemma's gelu_pytorch_tanh),
// and the gradients of both inputs. A thread per element (grid-stride); each reads its inputs
// and writes its outputs once.
#include "common.cuh"

// Mirrored by `GluParams` in runtime/kiln-cuda/src/kernels.rs.
struct GluParams {
  const float* g;
  const float* u;
  const float* dy;
  float* out0;  // forward: act(g)·u; backward: dg
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

// gelu_tanh(g) = g/2·(1 + t), t = tanh(k·(g + c·g³)), k = √(2/π), c = 0.044715, and into `*d`
// its derivative (1 + t)/2 + g/2·(1 − t²)·k·(1 + 3c·g²): the CPU's reference in f32.
__device__ __forceinline__ float gelu_tanh(float g, float* d) {
  const float k = 0.7978845608028654f, c = 0.044715f;
  const float t = tanhf(k * fmaf(c * g * g, g, g));
  *d = 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * k * fmaf(3.0f * c * g, g, 1.0f);
  return 0.5f * g * (1.0f + t);
}

KILN_KERNEL(geglu_fwd_f32, GluParams) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += i64(gridDim.x) * blockDim.x) {
    float d;
    p.out0[i] = gelu_tanh(p.g[i], &d) * p.u[i];
  }
}

KILN_KERNEL(geglu_bwd_f32, GluParams) {
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += i64(gridDim.x) * blockDim.x) {
    float d;
    const float a = gelu_tanh(p.g[i], &d);
    p.out0[i] = p.dy[i] * p.u[i] * d;
    p.out1[i] = p.dy[i] * a;
  }
}
