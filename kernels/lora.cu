// The LoRA rank-r pre-pass: out[i, j] = alpha·Σ_p X(i,p)·Y(j,p) for a small j (the rank).
// Forward: U = x·Aᵀ, then gemm.cu's epilogue adds s·U·Bᵀ while computing x·Wᵀ. Backward:
// G = dy·B, then the dX GEMM (dy·W) adds s·G·A in its epilogue. dA and dB are plain GEMMs.
#include "common.cuh"

// Mirrored by `RowDotParams` in runtime/kiln-cuda/src/kernels.rs.
struct RowDotParams {
  const float* x;  // X(i, p) = x[i·sxm + p·sxk]
  const float* y;  // Y(j, p) = y[j·syj + p·syk]
  float* out;      // [m, nj]
  i64 sxm, sxk, syj, syk;
  int m, k, nj;
  float alpha;
};

// A block of 128 threads per row i (grid-stride); each warp takes every fourth j.
KILN_KERNEL_LB(lora_rowdot_f32, RowDotParams, 128) {
  const int lane = lane_id(), warp = warp_id();
  for (i64 i = blockIdx.x; i < p.m; i += gridDim.x) {
    for (int j = warp; j < p.nj; j += 4) {
      float acc = 0.f;
      for (int q = lane; q < p.k; q += 32) acc = fmaf(p.x[i * p.sxm + q * p.sxk], p.y[j * p.syj + q * p.syk], acc);
      acc = warp_sum(acc);
      if (lane == 0) p.out[i * p.nj + j] = p.alpha * acc;
    }
  }
}
