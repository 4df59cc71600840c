// The one header every kernels/*.cu includes. It maps to the CUDA headers when NVRTC compiles
// for the GPU and to kiln's emulation (emu/kiln_emu.h) when the host C++ compiler builds the
// same sources for the CPU. Kernels reach tensor-core and async-copy instructions only through
// the wrappers at the end of this file: inline PTX on the GPU, and on the CPU an implementation
// of the PTX ISA's fragment layouts, so a wrong fragment index fails on the CPU as on the GPU.
//
// Rules for kernel sources (README, "Writing a kernel"): include only this header; no #if in a
// kernel body; declare kernels with KILN_KERNEL(name, Params) (one #[repr(C)] Params struct per
// kernel, mirrored in Rust); use the helpers below instead of inline PTX.
#pragma once

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define KILN_GPU 1
#define KILN_KERNEL(name, PT) extern "C" __global__ void name(const PT p)
#define KILN_KERNEL_LB(name, PT, threads) extern "C" __global__ void __launch_bounds__(threads) name(const PT p)
// Also at least `blocks` resident blocks per SM (caps registers: bandwidth-bound kernels want
// many warps in flight more than registers).
#define KILN_KERNEL_OCC(name, PT, threads, blocks) \
  extern "C" __global__ void __launch_bounds__(threads, blocks) name(const PT p)
// Parameters the kernel takes the address of (a TMA tensor map): __grid_constant__ keeps them
// in the parameter space instead of a local copy. One block per SM.
#define KILN_KERNEL_GC(name, PT, threads) \
  extern "C" __global__ void __launch_bounds__(threads, 1) name(const __grid_constant__ PT p)
#else
#include "emu/kiln_emu.h"
#define KILN_GPU 0
#ifndef KILN_EMU_VARIANT
#define KILN_EMU_VARIANT 0
#endif
#define KILN_KERNEL_LB(name, PT, threads)                                                               \
  static void name##_body(const PT p);                                                                 \
  static ::kemu::Registrar name##_reg(#name, KILN_EMU_VARIANT, sizeof(PT), threads,                    \
                                      [](const void* q) { name##_body(*static_cast<const PT*>(q)); }); \
  static void name##_body(const PT p)
#define KILN_KERNEL(name, PT) KILN_KERNEL_LB(name, PT, 0)
#define KILN_KERNEL_OCC(name, PT, threads, blocks) KILN_KERNEL_LB(name, PT, threads)
#define KILN_KERNEL_GC(name, PT, threads) KILN_KERNEL_LB(name, PT, threads)
#endif

// Loop unrolling hint for both compilers (GCC ignores `#pragma unroll` with a warning).
#if KILN_GPU
#define KILN_UNROLL _Pragma("unroll")
#define KILN_UNROLL4 _Pragma("unroll 4")
#else
#define KILN_UNROLL _Pragma("GCC unroll 16")
#define KILN_UNROLL4 _Pragma("GCC unroll 4")
#endif

typedef __half f16;
typedef __nv_bfloat16 bf16;

// ---- indices ----
__device__ __forceinline__ u32 tid_linear() {
  return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
}
__device__ __forceinline__ u32 lane_id() { return tid_linear() & 31u; }
__device__ __forceinline__ u32 warp_id() { return tid_linear() >> 5; }
__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }
__device__ __forceinline__ i64 lmin(i64 a, i64 b) { return a < b ? a : b; }

// ---- element types: f32 storage, f16/bf16 storage widened to f32 ----
template <class T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_f32<f16>(f16 v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_f32<bf16>(bf16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ f16 from_f32<f16>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float v) { return __float2bfloat16_rn(v); }
__device__ __forceinline__ unsigned short bits16(f16 v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned short bits16(bf16 v) { return __bfloat16_as_ushort(v); }
template <class T>
__device__ __forceinline__ T of_bits16(unsigned short u);
template <>
__device__ __forceinline__ f16 of_bits16<f16>(unsigned short u) { return __ushort_as_half(u); }
template <>
__device__ __forceinline__ bf16 of_bits16<bf16>(unsigned short u) { return __ushort_as_bfloat16(u); }
// Two 16-bit values in one register, `lo` in the low half (the mma operand packing).
template <class T>
__device__ __forceinline__ u32 pack2(T lo, T hi) {
  return u32(bits16(lo)) | (u32(bits16(hi)) << 16);
}
template <class T>
__device__ __forceinline__ float half_lo(u32 r) { return to_f32<T>(of_bits16<T>((unsigned short)(r & 0xffffu))); }
template <class T>
__device__ __forceinline__ float half_hi(u32 r) { return to_f32<T>(of_bits16<T>((unsigned short)(r >> 16))); }

// An 8-byte store of two floats: one STG.64 on the GPU, one 8-byte access in the emulation (whose
// profiler sees the widths the host compiler emits, and a float pair may go out as two).
__device__ __forceinline__ void store_f32x2(float* p, float a, float b) {
#if KILN_GPU
  *reinterpret_cast<float2*>(p) = make_float2(a, b);
#else
  *reinterpret_cast<u64*>(p) = u64(__float_as_uint(a)) | (u64(__float_as_uint(b)) << 32);
#endif
}

// A 16-byte load (one LDG.128; one 16-byte access in the emulation, where reading the fields of
// a uint4 may become four 4-byte loads).
__device__ __forceinline__ uint4 load_u32x4(const void* p) {
#if KILN_GPU
  return *reinterpret_cast<const uint4*>(p);
#else
  uint4 q;
  std::memcpy(&q, p, 16);
  return q;
#endif
}

__device__ __forceinline__ void store_u32x4(void* p, uint4 v) {
#if KILN_GPU
  *reinterpret_cast<uint4*>(p) = v;
#else
  std::memcpy(p, &v, 16);
#endif
}

// 2^x by the special-function unit, subnormal results flushed to zero (ex2.approx.ftz: one
// MUFU.EX2; exp2f without ftz adds a compare and two multiplies to keep subnormals). For
// softmax weights, where a weight below 2^-126 next to the row's maximum of 1 is nothing.
__device__ __forceinline__ float exp2_ftz(float x) {
#if KILN_GPU
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  const float y = exp2f(x);
  return std::fabs(y) < 1.17549435e-38f ? 0.f : y;
#endif
}

// ---- reductions ----
// The butterfly all-reduce over a warp: every lane ends with the same bits. On the CPU the same
// tree is computed from one warp-wide exchange (five shuffles cost five fiber rounds there).
#if KILN_GPU
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
#else
namespace kiln_emu_impl {
template <bool MAX>
inline float butterfly(float v) {
  const unsigned char* s = ::kemu::warp_exchange(0xffffffffu, &v, sizeof v);
  float x[32], y[32];
  for (u32 l = 0; l < 32; ++l) x[l] = ::kemu::read_slot<float>(s, l);
  for (u32 o = 16; o > 0; o >>= 1) {
    for (u32 l = 0; l < 32; ++l) y[l] = MAX ? fmaxf(x[l], x[l ^ o]) : x[l] + x[l ^ o];
    for (u32 l = 0; l < 32; ++l) x[l] = y[l];
  }
  return x[::kemu::lane_of()];
}
}  // namespace kiln_emu_impl
__device__ __forceinline__ float warp_sum(float v) { return kiln_emu_impl::butterfly<false>(v); }
__device__ __forceinline__ float warp_max(float v) { return kiln_emu_impl::butterfly<true>(v); }
#endif

// Block-wide sum / max (blockDim a multiple of 32, at most 1024); `red` is 32 floats of shared
// memory. Every thread gets the result; the leading barrier lets calls reuse `red`.
__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  const u32 nw = (blockDim.x * blockDim.y * blockDim.z + 31) / 32;
  __syncthreads();
  if (lane_id() == 0) red[warp_id()] = v;
  __syncthreads();
  float t = 0.f;
  for (u32 w = 0; w < nw; ++w) t += red[w];
  return t;
}
__device__ __forceinline__ float block_max(float v, float* red) {
  v = warp_max(v);
  const u32 nw = (blockDim.x * blockDim.y * blockDim.z + 31) / 32;
  __syncthreads();
  if (lane_id() == 0) red[warp_id()] = v;
  __syncthreads();
  float t = -3.0e38f;
  for (u32 w = 0; w < nw; ++w) t = fmaxf(t, red[w]);
  return t;
}

// ---- dynamic shared memory ----
__device__ __forceinline__ unsigned char* dyn_smem() {
#if KILN_GPU
  extern __shared__ __align__(16) unsigned char kiln_dyn_smem[];
  return kiln_dyn_smem;
#else
  return static_cast<unsigned char*>(::kemu::g_launch.dyn_smem);
#endif
}

// ---- tensor cores: mma.sync m16n8k16, f32 accumulators ----
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16"), g = lane/4, t = lane%4:
//   A 16×16 row-major, 4 registers of 2 halves: a0 (row g, k 2t..2t+1), a1 (row g+8, same k),
//     a2 (row g, k 2t+8..), a3 (row g+8, k 2t+8..);
//   B 16×8 "col" (k-major per column), 2 registers: b0 (k 2t..2t+1, col g), b1 (k 2t+8.., col g);
//   C/D 16×8 f32: c0,c1 (row g, cols 2t, 2t+1), c2,c3 (row g+8, same cols).

// The same contract computed with warp shuffles: the bf16 path on sm_75 (no bf16 tensor cores)
// and a CPU cross-check of the fragment bookkeeping.
template <class T>
__device__ __forceinline__ void mma_16816_shfl(float d[4], const u32 a[4], const u32 b[2]) {
  const u32 lane = lane_id(), g = lane >> 2, t = lane & 3u;
  for (int k = 0; k < 16; ++k) {
    const int src_a = int(g * 4 + (u32(k) & 7u) / 2);
    const int hi_k = k >= 8;
    const u32 a_top = __shfl_sync(0xffffffffu, a[2 * hi_k], src_a);
    const u32 a_bot = __shfl_sync(0xffffffffu, a[1 + 2 * hi_k], src_a);
    const float av0 = (k & 1) ? half_hi<T>(a_top) : half_lo<T>(a_top);
    const float av1 = (k & 1) ? half_hi<T>(a_bot) : half_lo<T>(a_bot);
    for (int c = 0; c < 2; ++c) {
      const int col = int(2 * t) + c;
      const u32 br = __shfl_sync(0xffffffffu, b[hi_k], col * 4 + (k & 7) / 2);
      const float bv = (k & 1) ? half_hi<T>(br) : half_lo<T>(br);
      d[c] = fmaf(av0, bv, d[c]);
      d[2 + c] = fmaf(av1, bv, d[2 + c]);
    }
  }
}

#if KILN_GPU
// sm_75's bf16 path out of line: inlined into a large tile's loop, its shuffles would crowd the
// caller's registers (the pipelined GEMM spilled).
__device__ __noinline__ void mma_16816_shfl_bf16_call(float d[4], const u32 a[4], const u32 b[2]) {
  mma_16816_shfl<bf16>(d, a, b);
}
#endif

#if !KILN_GPU
namespace kiln_emu_impl {
// One warp-wide exchange of every lane's fragments, then each lane computes its own outputs
// from the documented layouts.
template <class T>
inline void mma_16816_emu(float d[4], const u32 a[4], const u32 b[2]) {
  const ::kemu::Quiet quiet;
  ::kemu::prof_count(::kemu::ProfMma);
  struct In {
    u32 a[4], b[2];
  } in{{a[0], a[1], a[2], a[3]}, {b[0], b[1]}};
  const unsigned char* s = ::kemu::warp_exchange(0xffffffffu, &in, sizeof in);
  const u32 lane = ::kemu::lane_of(), g = lane >> 2, t = lane & 3u;
  for (int i = 0; i < 4; ++i) {
    const u32 row = g + 8u * (i >= 2), col = 2 * t + (i & 1);
    float acc = d[i];
    for (u32 k = 0; k < 16; ++k) {
      const In ia = ::kemu::read_slot<In>(s, (row & 7u) * 4 + (k & 7u) / 2);
      const In ib = ::kemu::read_slot<In>(s, col * 4 + (k & 7u) / 2);
      const u32 ra = ia.a[(row >= 8) + 2 * (k >= 8)], rb = ib.b[k >= 8];
      const float av = (k & 1) ? half_hi<T>(ra) : half_lo<T>(ra);
      const float bv = (k & 1) ? half_hi<T>(rb) : half_lo<T>(rb);
      acc = fmaf(av, bv, acc);
    }
    d[i] = acc;
  }
}
}  // namespace kiln_emu_impl
#endif

// d += A·B for one 16×8×16 tile held by the warp.
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], const u32 b[2], bf16) {
#if KILN_GPU && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif KILN_GPU
  mma_16816_shfl_bf16_call(d, a, b);
#else
  kiln_emu_impl::mma_16816_emu<bf16>(d, a, b);
#endif
}
__device__ __forceinline__ void mma_16816(float d[4], const u32 a[4], const u32 b[2], f16) {
#if KILN_GPU && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif KILN_GPU
  // sm_75 has m16n8k8 for f16: the two k halves in turn.
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(b[0]));
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[2]), "r"(a[3]), "r"(b[1]));
#else
  kiln_emu_impl::mma_16816_emu<f16>(d, a, b);
#endif
}

// ---- ldmatrix: 8×8 tiles of 16-bit values from shared memory into mma fragments ----
// Lanes 8j..8j+7 give the 16-byte-aligned row addresses of tile j; lane l receives in r[j] row
// l/4, columns 2(l%4), 2(l%4)+1 of tile j (with .trans: column l/4, rows 2(l%4), 2(l%4)+1).
#if !KILN_GPU
namespace kiln_emu_impl {
template <int N, bool TRANS>
inline void ldmatrix_emu(u32* r, const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) ::kemu::trap("ldmatrix: a row address is not 16-byte aligned");
  // Lanes 0..8N-1 each give one 16-byte row; the hardware reads those, not the lanes' pieces.
  if (::kemu::lane_of() < 8u * N) ::kemu::prof_note(::kemu::ProfLdmatrix, row, 16, false);
  const ::kemu::Quiet quiet;
  const unsigned char* s = ::kemu::warp_exchange(0xffffffffu, &row, sizeof row);
  const u32 lane = ::kemu::lane_of();
  for (int j = 0; j < N; ++j) {
    if (!TRANS) {
      const unsigned char* p = ::kemu::read_slot<const unsigned char*>(s, 8 * j + lane / 4);
      const unsigned short* h = reinterpret_cast<const unsigned short*>(p) + 2 * (lane % 4);
      r[j] = u32(h[0]) | (u32(h[1]) << 16);
    } else {
      const unsigned char* p0 = ::kemu::read_slot<const unsigned char*>(s, 8 * j + 2 * (lane % 4));
      const unsigned char* p1 = ::kemu::read_slot<const unsigned char*>(s, 8 * j + 2 * (lane % 4) + 1);
      const unsigned short lo = reinterpret_cast<const unsigned short*>(p0)[lane / 4];
      const unsigned short hi = reinterpret_cast<const unsigned short*>(p1)[lane / 4];
      r[j] = u32(lo) | (u32(hi) << 16);
    }
  }
}
}  // namespace kiln_emu_impl
#endif

__device__ __forceinline__ void ldmatrix_x4(u32 r[4], const void* smem_row) {
#if KILN_GPU
  const u32 a = u32(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  kiln_emu_impl::ldmatrix_emu<4, false>(r, smem_row);
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(u32 r[4], const void* smem_row) {
#if KILN_GPU
  const u32 a = u32(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  kiln_emu_impl::ldmatrix_emu<4, true>(r, smem_row);
#endif
}
__device__ __forceinline__ void ldmatrix_x2(u32 r[2], const void* smem_row) {
#if KILN_GPU
  const u32 a = u32(__cvta_generic_to_shared(smem_row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#else
  kiln_emu_impl::ldmatrix_emu<2, false>(r, smem_row);
#endif
}

// Fragments of 16-bit tiles held K-contiguous in shared memory (M[row][k], rows padded to LD):
// the A fragment of rows r0..r0+15 at k0..k0+15 (lanes 0-15 address the rows at k0, lanes 16-31
// the same rows at k0 + 8), and the B fragments of two adjacent n-tiles, rows n0..n0+7 (b0) and
// n0+8..n0+15 (b1), at k0..k0+15 (one x4 load: (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, ...)).
template <int LD>
__device__ __forceinline__ void ldmatrix_a(u32 a[4], const unsigned short (*M)[LD], int r0, int k0) {
  const u32 lane = lane_id();
  ldmatrix_x4(a, &M[r0 + int(lane % 16)][k0 + int(lane / 16) * 8]);
}
template <int LD>
__device__ __forceinline__ void ldmatrix_b2(u32 b0[2], u32 b1[2], const unsigned short (*M)[LD], int n0, int k0) {
  const u32 lane = lane_id();
  u32 r[4];
  ldmatrix_x4(r, &M[n0 + int(lane / 16) * 8 + int(lane % 8)][k0 + int((lane / 8) % 2) * 8]);
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// ---- cp.async: global → shared copies of 16 bytes (sm_80+; a plain copy before) ----
// The copy is asynchronous: its bytes are in shared memory only after a cp_async_wait<N> that
// covers its group (cp_async_commit closes a group). The emulation holds it to that: at issue
// the destination is filled with 0xff bytes (NaN in f32, bf16 and f16), the data lands when the
// group is waited for, and a thread that exits with copies never waited for traps, so a
// pipeline that reads a stage before its wait computes NaN on the CPU, as it reads stale data
// on a GPU.
#if !KILN_GPU
namespace kiln_emu_impl {
// The running thread's slot of an asynchronous unit's per-thread state `S` (fields `serial`,
// `n`, `group`), emptied when it holds an earlier block's state (a block that trapped).
template <class S>
inline S& thread_state() {
  static S all[1024];
  S& w = all[::kemu::g_thread->linear];
  if (w.serial != ::kemu::g_launch.serial) {
    w.serial = ::kemu::g_launch.serial;
    w.n = w.group = 0;
  }
  return w;
}
struct CpAsyncOp {
  unsigned char* dst;
  unsigned char data[16];
  int group;
};
struct CpAsyncThread {
  unsigned long long serial;
  int n, group;  // copies in flight; the open (uncommitted) group's number
  CpAsyncOp ops[64];
};
inline CpAsyncThread& cp_async_thread() { return thread_state<CpAsyncThread>(); }
inline void cp_async_exit_check() {
  const ::kemu::Quiet quiet;
  if (cp_async_thread().n) ::kemu::trap("cp.async: the thread exited with copies it never waited for (cp.async.wait_group)");
}
inline const ::kemu::ExitCheck cp_async_exit_check_reg(cp_async_exit_check);
// `valid` bytes from `gmem` (0 or 16), zeros after them.
inline void cp_async_issue(void* smem, const void* gmem, int valid) {
  // Quiet throughout: the emulation's own state lies in .bss, where static __shared__ does
  // (the profiler counted the copy's two halves above). The race checker still sees it all.
  const ::kemu::Quiet quiet;
  if (reinterpret_cast<uintptr_t>(smem) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(gmem) % 16 != 0))
    ::kemu::trap("cp.async: a 16-byte copy from or to an address that is not 16-byte aligned");
  CpAsyncThread& w = cp_async_thread();
  if (w.n == 64) ::kemu::trap("cp.async: more than 64 copies in flight in one thread (emulation limit)");
  CpAsyncOp& op = w.ops[w.n++];
  op.dst = static_cast<unsigned char*>(smem);
  op.group = w.group;
  std::memset(op.data, 0, 16);
  if (valid) std::memcpy(op.data, gmem, 16);
  // The poison is this thread's write: the race checker sees it.
  u32* d = static_cast<u32*>(smem);
  for (int i = 0; i < 4; ++i) d[i] = 0xffffffffu;
}
inline void cp_async_commit_emu() {
  const ::kemu::Quiet quiet;
  cp_async_thread().group++;
}
// Lands every committed group but the newest `keep` (copies not yet committed stay in flight).
inline void cp_async_wait_emu(int keep) {
  const ::kemu::Quiet quiet;  // the profiler counted each copy at issue
  CpAsyncThread& w = cp_async_thread();
  int kept = 0;
  for (int i = 0; i < w.n; ++i) {
    CpAsyncOp& op = w.ops[i];
    if (op.group >= w.group - keep) {
      w.ops[kept++] = op;
      continue;
    }
    u32 v[4];
    std::memcpy(v, op.data, 16);
    u32* d = reinterpret_cast<u32*>(op.dst);
    for (int j = 0; j < 4; ++j) d[j] = v[j];
  }
  w.n = kept;
}
}  // namespace kiln_emu_impl
#endif

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem) {
#if KILN_GPU && __CUDA_ARCH__ >= 800
  const u32 a = u32(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(gmem));
#elif KILN_GPU
  const u32* s = static_cast<const u32*>(gmem);
  u32* d = static_cast<u32*>(smem);
  for (int i = 0; i < 4; ++i) d[i] = s[i];
#else
  ::kemu::prof_note(::kemu::ProfCpAsync, gmem, 16, false);
  ::kemu::prof_note(::kemu::ProfCpAsync, smem, 16, true);
  kiln_emu_impl::cp_async_issue(smem, gmem, 16);
#endif
}
// The predicated form: 16 bytes from `gmem` when `valid`, else 16 zero bytes and no read (the
// tail of a tile past the matrix's edge; `gmem` must still be a mapped address).
__device__ __forceinline__ void cp_async_16_zfill(void* smem, const void* gmem, bool valid) {
#if KILN_GPU && __CUDA_ARCH__ >= 800
  const u32 a = u32(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(gmem), "r"(valid ? 16 : 0));
#elif KILN_GPU
  const u32* s = static_cast<const u32*>(gmem);
  u32* d = static_cast<u32*>(smem);
  if (valid) {
    for (int i = 0; i < 4; ++i) d[i] = s[i];
  } else {
    for (int i = 0; i < 4; ++i) d[i] = 0u;
  }
#else
  if (valid) ::kemu::prof_note(::kemu::ProfCpAsync, gmem, 16, false);
  ::kemu::prof_note(::kemu::ProfCpAsync, smem, 16, true);
  kiln_emu_impl::cp_async_issue(smem, gmem, valid ? 16 : 0);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if KILN_GPU && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#elif !KILN_GPU
  kiln_emu_impl::cp_async_commit_emu();
#endif
}
// Waits until at most N committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if KILN_GPU && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#elif !KILN_GPU
  kiln_emu_impl::cp_async_wait_emu(N);
#endif
}

#include "sm90.cuh"

// ---- block-quantized weights: one value at a time ----
// Bit-exact with kiln_core::quant (itself byte-exact with ggml); layouts in
// runtime/kiln-core/src/quant/mod.rs. `ty` is the id the backend passes (ggml's type number;
// 1000 NF4, 1001 NF4_DQ; 1 f16, 30 bf16); a block holds `block` values in `bytes` bytes.
__constant__ float kiln_nf4[16] = {-1.0f,       -0.6961928f, -0.52507305f, -0.3949175f, -0.28444138f, -0.18477343f,
                                   -0.091050036f, 0.0f,       0.0795803f,   0.1609302f,  0.2461123f,   0.33791524f,
                                   0.44070983f,  0.562617f,   0.72295684f,  1.0f};
__constant__ float kiln_semitones[12] = {1.0f,       1.0594631f, 1.122462f,  1.1892071f, 1.259921f,  1.3348399f,
                                         1.4142135f, 1.4983071f, 1.587401f, 1.6817928f, 1.7817974f, 1.8877486f};

__device__ __forceinline__ float q_f16(const unsigned char* b) {
  return __half2float(__ushort_as_half((unsigned short)(b[0] | (b[1] << 8))));
}
__device__ __forceinline__ u32 q_u32(const unsigned char* b) {
  return u32(b[0]) | (u32(b[1]) << 8) | (u32(b[2]) << 16) | (u32(b[3]) << 24);
}
// The 6-bit scale (which = 0) or min (which = 1) of sub-block s of a Q4_K/Q5_K super-block
// (ggml's get_scale_min_k4); `sc` points at the 12 scale bytes.
__device__ __forceinline__ float q_kscale(const unsigned char* sc, u32 s, u32 which) {
  if (s < 4) return float(sc[s + 4 * which] & 0x3f);
  const u32 lo = sc[s + 4], hi = u32(sc[s - 4 + 4 * which]) >> 6;
  return which == 0 ? float((lo & 0x0f) | (hi << 4)) : float((lo >> 4) | (hi << 4));
}

__device__ __forceinline__ float kiln_decode(const unsigned char* w, i64 k, int ty, int block, int bytes) {
  const unsigned char* b = w + (k / block) * bytes;
  const u32 j = u32(k % block);
  switch (ty) {
    case 8:  // Q8_0
      return q_f16(b) * float((signed char)b[2 + j]);
    case 2:  // Q4_0: values j and j + 16 share byte j % 16 (low, high nibble)
    case 3: {  // Q4_1
      const u32 v = b[(ty == 3 ? 4 : 2) + j % 16];
      const float nib = float(j >= 16 ? v >> 4 : v & 0x0f);
      return ty == 3 ? q_f16(b) * nib + q_f16(b + 2) : q_f16(b) * (nib - 8.0f);
    }
    case 6: {  // Q5_0: the fifth bit of value j is bit j of the u32 after the scale
      const u32 v = b[6 + j % 16];
      const u32 lo = j >= 16 ? v >> 4 : v & 0x0f, hi = (q_u32(b + 2) >> j) & 1u;
      return q_f16(b) * (float(lo | (hi << 4)) - 16.0f);
    }
    case 12:    // Q4_K
    case 13: {  // Q5_K: 8 sub-blocks of 32; sub-block s uses nibble s % 2 of bytes 32·(s/2)…
      const u32 s = j / 32, l = j % 32;
      const bool q5 = ty == 13;
      u32 v = (u32(b[(q5 ? 48 : 16) + (s / 2) * 32 + l]) >> (4 * (s % 2))) & 0x0f;
      if (q5) v |= ((u32(b[16 + l]) >> s) & 1u) << 4;
      return q_f16(b) * q_kscale(b + 4, s, 0) * float(v) - q_f16(b + 2) * q_kscale(b + 4, s, 1);
    }
    case 14: {  // Q6_K: halves of 128; quarter r of 32 takes nibbles of ql and bit pairs 2r of qh
      const u32 h = j / 128, wi = j % 128, r = wi / 32, l = wi % 32;
      const u32 qh = b[128 + 32 * h + l];
      const u32 lob = b[64 * h + l + 32 * (r % 2)];
      const u32 lo = r >= 2 ? lob >> 4 : lob & 0x0f, hi = (qh >> (2 * r)) & 3u;
      const float sc = float((signed char)b[192 + 8 * h + l / 16 + 2 * r]);
      return q_f16(b + 208) * sc * (float(lo | (hi << 4)) - 32.0f);
    }
    case 1000: {  // NF4: f32 absmax, then two values per byte, the first in the high nibble
      const u32 v = b[4 + j / 2];
      return kiln_nf4[(j & 1) ? v & 0x0f : v >> 4] * __uint_as_float(q_u32(b));
    }
    case 1001: {  // NF4_DQ: a one-byte scale code c, 2^((c − 192)/12) (0: an all-zero block)
      const int c = b[0];
      float a = 0.f;
      if (c != 0) {
        const int e = c - 192, oct = e < 0 ? (e - 11) / 12 : e / 12;
        a = ldexpf(kiln_semitones[e - oct * 12], oct);
      }
      const u32 v = b[1 + j / 2];
      return kiln_nf4[(j & 1) ? v & 0x0f : v >> 4] * a;
    }
    case 1:  // f16
      return q_f16(b);
    case 30:  // bf16
      return __uint_as_float(u32(b[0] | (b[1] << 8)) << 16);
    default:
      return 0.f;
  }
}
