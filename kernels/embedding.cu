// Token embedding: row gather (f32, f16 or bf16 table → f32) and its scatter-add backward.
#include "common.cuh"

// Mirrored by `EmbParams` in runtime/kiln-cuda/src/kernels.rs.
struct EmbParams {
  const void* src;  // forward: the table [vocab, h]; backward: dy [rows, h]
  const int* ids;   // [rows]
  float* out;       // forward: [rows, h]; backward: the table's gradient [vocab, h], zeroed
  int* err;         // set to 1 + the first row whose id is out of range
  i64 rows;
  int h;
  int vocab;
  int qtype, qblock, qbytes;  // embedding_fwd_q: the table's block type (kiln_decode's ids)
  int pad;
};

// A block per row (grid-stride over rows).
template <class T>
__device__ __forceinline__ void embedding_fwd_body(const EmbParams& p) {
  for (i64 row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int id = p.ids[row];
    if (id < 0 || id >= p.vocab) {
      if (threadIdx.x == 0) atomicCAS(p.err, 0, int(row) + 1);
      continue;
    }
    const T* w = static_cast<const T*>(p.src) + i64(id) * p.h;
    for (int c = threadIdx.x; c < p.h; c += blockDim.x) p.out[row * p.h + c] = to_f32<T>(w[c]);
  }
}
KILN_KERNEL(embedding_fwd_f32, EmbParams) { embedding_fwd_body<float>(p); }
KILN_KERNEL(embedding_fwd_bf16, EmbParams) { embedding_fwd_body<bf16>(p); }
KILN_KERNEL(embedding_fwd_f16, EmbParams) { embedding_fwd_body<f16>(p); }

// A block-quantized table (a GGUF's token_embd, often Q8_0 or Q4_K): each looked-up value is
// decoded where it is read, so the table stays in its blocks on the device.
KILN_KERNEL(embedding_fwd_q, EmbParams) {
  const unsigned char* w = static_cast<const unsigned char*>(p.src);
  for (i64 row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int id = p.ids[row];
    if (id < 0 || id >= p.vocab) {
      if (threadIdx.x == 0) atomicCAS(p.err, 0, int(row) + 1);
      continue;
    }
    for (int c = threadIdx.x; c < p.h; c += blockDim.x)
      p.out[row * p.h + c] = kiln_decode(w, i64(id) * p.h + c, p.qtype, p.qblock, p.qbytes);
  }
}

// A block per row of dy; rows that share an id meet in atomicAdd.
KILN_KERNEL(embedding_bwd_f32, EmbParams) {
  for (i64 row = blockIdx.x; row < p.rows; row += gridDim.x) {
    const int id = p.ids[row];
    if (id < 0 || id >= p.vocab) {
      if (threadIdx.x == 0) atomicCAS(p.err, 0, int(row) + 1);
      continue;
    }
    const float* dy = static_cast<const float*>(p.src) + row * p.h;
    for (int c = threadIdx.x; c < p.h; c += blockDim.x) atomicAdd(&p.out[i64(id) * p.h + c], dy[c]);
  }
}
