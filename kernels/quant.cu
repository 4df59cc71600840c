// Block-quantized tensors (GGUF Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K; QLoRA's NF4, NF4_DQ)
// to f32 (bit-exact with kiln's CPU reference), bf16 or f16 (that value rounded to nearest even). A thread per value, each decoding its block's
// header itself (the redundant reads hit the cache). The linear layers decode inside the GEMM
// instead (gemm.cu's `_q` kernels); this serves casts and reading weights back.
#include "common.cuh"

// Mirrored by `DequantParams` in runtime/kiln-cuda/src/kernels.rs.
struct DequantParams {
  const unsigned char* w;
  float* out;
  i64 n;
  int ty;
  int block;
  int bytes;
  int pad;
};

// `out` holds T values (f32, or the 16-bit types the tensor cores take).
template <class T>
__device__ __forceinline__ void dequant(const DequantParams& p) {
  T* out = reinterpret_cast<T*>(p.out);
  for (i64 i = i64(blockIdx.x) * blockDim.x + threadIdx.x; i < p.n; i += i64(gridDim.x) * blockDim.x)
    out[i] = from_f32<T>(kiln_decode(p.w, i, p.ty, p.block, p.bytes));
}
KILN_KERNEL(dequant_f32, DequantParams) { dequant<float>(p); }
KILN_KERNEL(dequant_bf16, DequantParams) { dequant<bf16>(p); }
KILN_KERNEL(dequant_f16, DequantParams) { dequant<f16>(p); }
