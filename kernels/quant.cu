// Block-quantized tensors (GGUF Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K; QLoRA's NF4, NF4_DQ)
// to f32 (bit-exact with kiln's CPU reference), bf16 or f16 (that value rounded to nearest even),
// in one pass: a CTA takes a tile of whole blocks whose bytes are a multiple of 16, stages it in
// shared memory with 16-byte loads (thread t copies bytes 16t..16t+15: coalesced), then decodes
// it from shared memory, a thread per value, consecutive threads writing consecutive values.
// The linear layers decode inside the GEMM instead (matmul.cu's `_q` kernels); this serves casts
// and reading weights back.
#include "common.cuh"

// Mirrored by `DequantParams` in runtime/kiln-cuda/src/kernels.rs.
struct DequantParams {
  const unsigned char* w;
  float* out;
  i64 n;
  int ty;
  int block;
  int bytes;
  int tile;  // blocks per tile (host-chosen: tile·bytes is a multiple of 16, about 4 KB)
};

// `out` holds T values (f32, or the 16-bit types the tensor cores take).
template <class T>
__device__ __forceinline__ void dequant(const DequantParams& p) {
  T* out = reinterpret_cast<T*>(p.out);
  unsigned char* tile = dyn_smem();
  const i64 nblocks = p.n / p.block;
  const i64 tiles = (nblocks + p.tile - 1) / p.tile;
  // A weight that does not start on 16 bytes (a view) is staged a byte at a time instead.
  const bool aligned = (reinterpret_cast<unsigned long long>(p.w) & 15) == 0;
  for (i64 t = blockIdx.x; t < tiles; t += gridDim.x) {
    const i64 b0 = t * p.tile;
    const int nb = int(nblocks - b0 < p.tile ? nblocks - b0 : p.tile);
    const int nbytes = nb * p.bytes;
    const unsigned char* src = p.w + b0 * p.bytes;
    const int n16 = aligned ? nbytes / 16 : 0;
    for (int c = threadIdx.x; c < n16; c += blockDim.x)
      reinterpret_cast<uint4*>(tile)[c] = reinterpret_cast<const uint4*>(src)[c];
    for (int c = n16 * 16 + threadIdx.x; c < nbytes; c += blockDim.x) tile[c] = src[c];
    __syncthreads();
    const int nv = nb * p.block;
    T* dst = out + b0 * p.block;
    for (int v = threadIdx.x; v < nv; v += blockDim.x) dst[v] = from_f32<T>(kiln_decode(tile, v, p.ty, p.block, p.bytes));
    __syncthreads();
  }
}
KILN_KERNEL(dequant_f32, DequantParams) { dequant<float>(p); }
KILN_KERNEL(dequant_bf16, DequantParams) { dequant<bf16>(p); }
KILN_KERNEL(dequant_f16, DequantParams) { dequant<f16>(p); }
