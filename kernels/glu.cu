// Gated linear units (Op::SwiGlu, Op::GeGlu) on activations of type T (f32, or bf16/f16 on the
// mixed-precision path; computed in f32): y = act(g)·u with SiLU (SwiGLU) or tanh-approximate
// GELU (GeGLU, PyTorch's gelu(approximate="tanh"), Gemma's gelu_pytorch_tanh), and the gradients
// of both inputs. A thread per element (grid-stride); each reads its inputs and writes its
// outputs once.
#include "common.cuh"

// Mirrored by `GluParams` in runtime/kiln-cuda/src/kernels.rs.
struct GluParams {
  const void* g;
  const void* u;
  const void* dy;
  void* out0;  // forward: act(g)·u; backward: dg
  void* out1;  // backward: du
  i64 n;
};

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// The operands of element i, widened.
template <class T>
struct GluAt {
  float g, u, dy;
  __device__ __forceinline__ GluAt(const GluParams& p, i64 i, bool bwd) {
    g = to_f32<T>(static_cast<const T*>(p.g)[i]);
    u = to_f32<T>(static_cast<const T*>(p.u)[i]);
    dy = bwd ? to_f32<T>(static_cast<const T*>(p.dy)[i]) : 0.f;
  }
};
template <class T>
__device__ __forceinline__ void glu_put(void* out, i64 i, float v) {
  static_cast<T*>(out)[i] = from_f32<T>(v);
}
#define KILN_GLU_FOR(i) for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += i64(gridDim.x) * blockDim.x)

template <class T>
__device__ __forceinline__ void swiglu_fwd_body(const GluParams& p) {
  KILN_GLU_FOR(i) {
    const GluAt<T> e(p, i, false);
    glu_put<T>(p.out0, i, e.g * sigmoidf(e.g) * e.u);
  }
}

// d silu/dg = s + g·s·(1 − s).
template <class T>
__device__ __forceinline__ void swiglu_bwd_body(const GluParams& p) {
  KILN_GLU_FOR(i) {
    const GluAt<T> e(p, i, true);
    const float s = sigmoidf(e.g);
    glu_put<T>(p.out0, i, e.dy * e.u * (s + e.g * s * (1.0f - s)));
    glu_put<T>(p.out1, i, e.dy * e.g * s);
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

template <class T>
__device__ __forceinline__ void geglu_fwd_body(const GluParams& p) {
  KILN_GLU_FOR(i) {
    const GluAt<T> e(p, i, false);
    float d;
    glu_put<T>(p.out0, i, gelu_tanh(e.g, &d) * e.u);
  }
}

template <class T>
__device__ __forceinline__ void geglu_bwd_body(const GluParams& p) {
  KILN_GLU_FOR(i) {
    const GluAt<T> e(p, i, true);
    float d;
    const float a = gelu_tanh(e.g, &d);
    glu_put<T>(p.out0, i, e.dy * e.u * d);
    glu_put<T>(p.out1, i, e.dy * a);
  }
}

#define KILN_GLU3(name)                                            \
  KILN_KERNEL(name##_f32, GluParams) { name##_body<float>(p); }   \
  KILN_KERNEL(name##_bf16, GluParams) { name##_body<bf16>(p); }   \
  KILN_KERNEL(name##_f16, GluParams) { name##_body<f16>(p); }
KILN_GLU3(swiglu_fwd)
KILN_GLU3(swiglu_bwd)
KILN_GLU3(geglu_fwd)
KILN_GLU3(geglu_bwd)
