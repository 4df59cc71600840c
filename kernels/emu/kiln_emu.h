// kiln's CPU emulation of the CUDA device environment: what `kernels/*.cu` use, so the same
// sources compile with the host C++ compiler and run on the CPU (tests without a GPU).
//
// Execution model (kernels/emu/rt.cpp): every thread of a block is a user-level fiber with its
// own stack; a fiber runs until it reaches a barrier (`__syncthreads`, a warp collective) or
// exits, so all threads of a block make progress between barriers and blocks of 1024 threads
// work on 2 cores. Blocks run one after another on the launching OS thread, so `__shared__`
// (a `static` here) is private to the running block and atomics need no locks.
//
// Everything defined in this header has internal linkage: the kernels are compiled twice (plain
// and race-check instrumented) and the two copies must never be merged by the linker.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
// CUDA's 16-byte vector (the kernels' 16-byte global loads).
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

namespace kemu {
// One emulated thread (the fiber's state that kernels can see).
struct ThreadView {
  uint3 tid;
  unsigned linear;  // tid.x + tid.y·bx + tid.z·bx·by
  unsigned quiet;   // > 0 inside an emulated instruction: its own memory traffic is not profiled
};
struct LaunchView {
  uint3 block;
  dim3 block_dim;
  dim3 grid_dim;
  void* dyn_smem;
  size_t dyn_smem_bytes;  // the launch's dynamic shared memory
  unsigned long long serial;  // distinct for every block run (per-thread state left by another shows)
};
// Set by the scheduler (rt.cpp) before it resumes a fiber.
extern ThreadView* g_thread;
extern LaunchView g_launch;

// Implemented in rt.cpp (not instrumented by the race checker).
void syncthreads();
// Each lane of `mask` deposits `n` (≤ 64) bytes; returns the 32 slots (64 bytes apart), valid
// until this lane's next collective.
const unsigned char* warp_exchange(unsigned mask, const void* mine, size_t n);
float atomic_add_f32(float* p, float v);
int atomic_add_i32(int* p, int v);
unsigned atomic_add_u32(unsigned* p, unsigned v);
int atomic_cas_i32(int* p, int cmp, int v);
float atomic_max_f32(float* p, float v);
[[noreturn]] void trap(const char* why);

// fence.proxy.async by the running thread, and a read through the async proxy (wgmma's
// operands), which the race checker requires to follow its writer's fence.
void proxy_fence();
void async_read(const void* p, size_t n);

// sm_90's mbarriers and TMA loads (rt.cpp, uninstrumented: the race checker sees a barrier as
// the ordering it is, not as memory). A barrier is keyed by its shared address; its state
// (expected arrivals, pending arrivals, transaction bytes, completed phases) lives here, reset
// per block. `mbar_wait` blocks the fiber until the phase of `parity` has completed, and traps
// where the hardware would return at once on a phase the thread already passed or on the
// "phase before the first" of a fresh barrier (kiln's kernels never wait on that one).
void mbar_init(void* bar, unsigned count);
void mbar_arrive(void* bar, unsigned expect_tx);
void mbar_wait(void* bar, unsigned parity);
// A 2-D tensor map as the emulation encodes it (what cuTensorMapEncodeTiled's 128 opaque
// bytes hold for the GPU; mirrored by the backend's `TensorMap2d`): 16-bit elements, dim[0]
// contiguous, rows `row_bytes` apart, boxes of box[0] × box[1], swizzle 0 (none) or 3 (128 B,
// CU_TENSOR_MAP_SWIZZLE_128B).
struct TmaMap {
  unsigned long long magic, base, dim[2], row_bytes;
  unsigned box[2], elem, swizzle;
  unsigned long long pad[9];
};
constexpr unsigned long long kTmaMagic = 0x50414d414d544e4cull;  // "LNTMAMAP"
// The box at (c0, c1) into `dst` (shared memory; out-of-bounds elements are zero), completing
// box bytes of `bar`'s transaction count. The destination is poisoned at once and filled only
// when a thread waits on the barrier's phase, so a read before that wait reads NaN bytes (and
// the race checker reports it).
void tma_load_2d(void* dst, const TmaMap* map, int c0, int c1, void* bar);
// Traps where a wgmma reads shared offsets [lo, hi) with a swizzle other than the one a TMA
// load wrote them with (0 none, 1 the 128-byte swizzle, in wgmma's descriptor encoding).
void swizzle_check(unsigned lo, unsigned hi, unsigned swizzle);
// The dynamic shared window starts at this shared address in the emulation (on a GPU, static
// shared memory and reserved bytes may come first), so kernels align it themselves.
constexpr unsigned kDynSmemBase = 16;

// The profiler (profiled launches only): an access an emulated instruction makes as the GPU
// would (ldmatrix's row reads, cp.async's two halves, an atomic), and tensor-core instructions.
enum ProfNote { ProfLdmatrix = 1, ProfCpAsync = 2, ProfAtomic = 3 };
enum ProfCount { ProfMma = 1 };
void prof_note(int kind, const void* p, size_t n, bool write);
void prof_note_at(const void* pc, int kind, const void* p, size_t n, bool write);
void prof_count(int what);
// A wgmma m64nNk16 of the calling warpgroup (counted once, by its first thread).
void prof_wgmma(unsigned n);
// Runs `fn` in every thread as it leaves its kernel (checks of per-thread state, which may trap).
struct ExitCheck {
  explicit ExitCheck(void (*fn)());
};

using KernelFn = void (*)(const void* params);
struct Registrar {
  Registrar(const char* name, int variant, size_t params_size, unsigned max_threads, KernelFn fn);
};

namespace {
inline unsigned lane_of() { return g_thread->linear & 31u; }

// Inside an emulated instruction's own implementation: the helper reads and writes it makes are
// not the instruction's traffic (which it notes with prof_note).
struct Quiet {
  Quiet() { g_thread->quiet++; }
  ~Quiet() { g_thread->quiet--; }
  Quiet(const Quiet&) = delete;
  Quiet& operator=(const Quiet&) = delete;
};

template <class T>
inline T read_slot(const unsigned char* slots, unsigned lane) {
  T r;
  std::memcpy(&r, slots + 64 * lane, sizeof(T));
  return r;
}
}  // namespace
}  // namespace kemu

// ---- the CUDA built-in variables and qualifiers ----
#define threadIdx (::kemu::g_thread->tid)
#define blockIdx (::kemu::g_launch.block)
#define blockDim (::kemu::g_launch.block_dim)
#define gridDim (::kemu::g_launch.grid_dim)
#define warpSize 32
#define __device__
#define __host__
#define __global__
// Inlined as on the GPU: every call site of a wrapper is an instruction of its own (the
// profiler keys requests by the call site).
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A block's shared memory: one static per declaration, private to the running block because
// blocks run one at a time.
#define __shared__ static
// Read-only tables (initialized, never written from the host here).
#define __constant__ static const

namespace {
inline void __syncthreads() { ::kemu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::kemu::warp_exchange(mask, nullptr, 0); }
inline void __trap() { ::kemu::trap("__trap() called"); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const unsigned char* s = ::kemu::warp_exchange(mask, &v, sizeof(T));
  unsigned lane = ::kemu::lane_of();
  unsigned base = lane & ~unsigned(width - 1);
  return ::kemu::read_slot<T>(s, base + (unsigned(src) & unsigned(width - 1)));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const unsigned char* s = ::kemu::warp_exchange(mask, &v, sizeof(T));
  unsigned lane = ::kemu::lane_of();
  unsigned src = lane ^ unsigned(lane_mask);
  // Outside the caller's segment of `width` lanes the value is the caller's own.
  if ((src & ~unsigned(width - 1)) != (lane & ~unsigned(width - 1))) src = lane;
  return ::kemu::read_slot<T>(s, src);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const unsigned char* s = ::kemu::warp_exchange(mask, &v, sizeof(T));
  unsigned lane = ::kemu::lane_of();
  unsigned seg = lane & unsigned(width - 1);
  unsigned src = seg + delta < unsigned(width) ? lane + delta : lane;
  return ::kemu::read_slot<T>(s, src);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const unsigned char* s = ::kemu::warp_exchange(mask, &v, sizeof(T));
  unsigned lane = ::kemu::lane_of();
  unsigned seg = lane & unsigned(width - 1);
  unsigned src = seg >= delta ? lane - delta : lane;
  return ::kemu::read_slot<T>(s, src);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  int p = pred != 0;
  const unsigned char* s = ::kemu::warp_exchange(mask, &p, sizeof(int));
  unsigned r = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1u) && ::kemu::read_slot<int>(s, l)) r |= 1u << l;
  return r;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == __ballot_sync(mask, 1); }

inline float atomicAdd(float* p, float v) { return ::kemu::atomic_add_f32(p, v); }
inline int atomicAdd(int* p, int v) { return ::kemu::atomic_add_i32(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return ::kemu::atomic_add_u32(p, v); }
inline int atomicCAS(int* p, int cmp, int v) { return ::kemu::atomic_cas_i32(p, cmp, v); }

// ---- math ----
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
}  // namespace

// ---- 16-bit floats, rounding as the GPU does (round to nearest even) ----
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
namespace {
// Software conversions (F. Giesen's round-to-nearest-even scheme): no dependence on the host
// compiler's _Float16 support or libgcc helpers.
inline float __half2float(__half h) {
  const unsigned shifted_exp = 0x7c00u << 13;
  unsigned o = unsigned(h.bits & 0x7fffu) << 13;
  const unsigned exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;  // Inf, NaN
  } else if (exp == 0) {
    o += 1u << 23;  // subnormal: renormalize through float arithmetic
    o = __float_as_uint(__uint_as_float(o) - __uint_as_float(113u << 23));
  }
  return __uint_as_float(o | (unsigned(h.bits & 0x8000u) << 16));
}
inline __half __float2half(float f) {
  unsigned x = __float_as_uint(f);
  const unsigned sign = x & 0x80000000u;
  x ^= sign;
  unsigned o;
  if (x >= (127u + 16u) << 23) {
    o = x > (255u << 23) ? 0x7e00u : 0x7c00u;  // NaN, or too large: Inf
  } else if (x < (113u << 23)) {
    // Subnormal result: the FPU's own rounding at the right scale.
    const unsigned magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    o = __float_as_uint(__uint_as_float(x) + __uint_as_float(magic)) - magic;
  } else {
    const unsigned odd = (x >> 13) & 1u;
    x += ((15u - 127u) << 23) + 0xfffu + odd;
    o = x >> 13;
  }
  return __half{uint16_t(o | (sign >> 16))};
}
inline __half __float2half_rn(float f) { return __float2half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return __uint_as_float(unsigned(h.bits) << 16); }
inline __nv_bfloat16 __float2bfloat16(float f) {
  unsigned u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{uint16_t(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __float2bfloat16(f); }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
}  // namespace
