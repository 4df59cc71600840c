// Hopper's (sm_90a) asynchronous instructions for kiln's kernels: wgmma, TMA loads and
// mbarriers, as inline PTX on the GPU and as the PTX ISA defines them on the CPU emulation
// (kernels/emu/rt.cpp holds the mbarrier and TMA state). Included by common.cuh, after the
// types, cp.async and the per-thread emulation state it uses; never on its own.
#pragma once
// ---- wgmma (sm_90a): warpgroup MMA with both operands read from shared memory ----
// A warpgroup (4 consecutive warps, 128 threads) computes D[64×N] += A[64×16]·B[16×N]; the
// tensor cores read A and B themselves, through 64-bit descriptors (PTX ISA, "Matrix Descriptor
// Format"): bits 0-13 the shared address >> 4, 16-29 the leading-dimension byte offset (LBO)
// >> 4, 32-45 the stride-dimension byte offset (SBO) >> 4, 62-63 the swizzle (0: none). kiln uses
// the K-major unswizzled layout: operands are 8×8 core matrices of 8 rows × 16 contiguous bytes;
// LBO is the distance between core matrices adjacent along K, SBO between those adjacent along
// M (A) or N (B). Accumulators: warp w of the group holds rows 16w..16w+15, d[i] is row
// 16w + g + 8·((i>>1)&1), column 8·(i>>2) + 2t + (i&1) (g = lane/4, t = lane%4): mma.m16n8's
// layout repeated along N. The instruction is asynchronous: wgmma_fence(d) before the first
// wgmma of a batch, wgmma_commit() after it, wgmma_wait<N>(d) before d is read or the operands'
// shared memory is written again; stores to shared memory reach the tensor cores (the async
// proxy) only after fence_proxy_async().
#if KILN_GPU && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KILN_WGMMA 1
#else
#define KILN_WGMMA 0
#endif
enum { WGMMA_N = 128 };  // the one shape wrapped: m64n128k16, 64 accumulators a thread

// True (after a trap) in a GPU build without sm_90a's features: a wgmma kernel starts with
// `if (wgmma_unavailable()) return;`, so on other targets it compiles to nothing (the backend
// selects wgmma kernels only from sm_90a modules).
__device__ __forceinline__ bool wgmma_unavailable() {
#if KILN_GPU && !KILN_WGMMA
  __trap();
  return true;
#else
  return false;
#endif
}

// The byte offset of a shared-memory pointer in the block's shared window.
__device__ __forceinline__ u32 smem_offset(const void* p) {
#if KILN_GPU
  return u32(__cvta_generic_to_shared(p));
#else
  // The emulation's descriptors address the launch's dynamic shared memory.
  const uintptr_t base = reinterpret_cast<uintptr_t>(::kemu::g_launch.dyn_smem), a = reinterpret_cast<uintptr_t>(p);
  if (a < base || a >= base + ::kemu::g_launch.dyn_smem_bytes)
    ::kemu::trap("a shared address outside the block's dynamic shared memory (wgmma, TMA and mbarriers use it)");
  return u32(a - base) + ::kemu::kDynSmemBase;
#endif
}

// The descriptor of a K-major operand in the 128-byte swizzle that TMA writes (rows of 64
// 16-bit values, 128 bytes, in 8-row atoms of 1024 bytes whose 16-byte chunk j of row r sits at
// chunk j ^ r; the atoms 1024 bytes apart, SBO): `smem` is the atom's row 0 plus 32 bytes per 16
// of K. The swizzle follows the shared address's bits, so atoms must be 1024-byte aligned.
__device__ __forceinline__ u64 wgmma_desc_sw128(const void* smem) {
  const u32 a = smem_offset(smem);
#if !KILN_GPU
  if (a % 16 != 0) ::kemu::trap("wgmma: descriptor address not 16-byte aligned");
#endif
  return u64((a & 0x3ffffu) >> 4) | (u64(1) << 16) | (u64(1024 >> 4) << 32) | (u64(1) << 62);
}

// The descriptor of a K-major, unswizzled operand whose first core matrix is at `smem`.
__device__ __forceinline__ u64 wgmma_desc(const void* smem, u32 lbo, u32 sbo) {
  const u32 a = smem_offset(smem);
#if !KILN_GPU
  // The hardware drops the low 4 bits silently; here a misplaced operand stops the kernel.
  if (a % 16 != 0 || lbo % 16 != 0 || sbo % 16 != 0) ::kemu::trap("wgmma: descriptor address or offset not 16-byte aligned");
#endif
  return u64((a & 0x3ffffu) >> 4) | (u64((lbo >> 4) & 0x3fffu) << 16) | (u64((sbo >> 4) & 0x3fffu) << 32);
}

#if !KILN_GPU
namespace kiln_emu_impl {
// The 16-bit element (row, k) of the operand a descriptor describes.
inline unsigned short wgmma_elem(u64 desc, u32 row, u32 k) {
  const u32 swz = u32(desc >> 62);
  if (swz > 1) ::kemu::trap("wgmma: the 64- and 32-byte swizzles are not emulated");
  if ((desc >> 49) & 7u) ::kemu::trap("wgmma: a matrix base offset is not emulated");
  const size_t start = size_t(desc & 0x3fffu) << 4, lbo = size_t((desc >> 16) & 0x3fffu) << 4,
               sbo = size_t((desc >> 32) & 0x3fffu) << 4;
  size_t off;
  if (swz == 1) {
    // 128-byte rows; the 16-byte chunk index (address bits 4-6) XOR the row in the atom (7-9).
    off = start + (row / 8) * sbo + (row % 8) * 128 + k * 2;
    off ^= ((off >> 7) & 7u) << 4;
  } else {
    off = start + (row / 8) * sbo + (k / 8) * lbo + (row % 8) * 16 + (k % 8) * 2;
  }
  if (off < ::kemu::kDynSmemBase || off + 2 > ::kemu::g_launch.dyn_smem_bytes + ::kemu::kDynSmemBase)
    ::kemu::trap("wgmma: an operand element lies outside the block's dynamic shared memory");
  const unsigned char* at = static_cast<const unsigned char*>(::kemu::g_launch.dyn_smem) + (off - ::kemu::kDynSmemBase);
  ::kemu::async_read(at, 2);
  unsigned short v;
  std::memcpy(&v, at, 2);
  return v;
}
inline bool is_f16(__half) { return true; }
inline bool is_f16(__nv_bfloat16) { return false; }
// This thread's 64 outputs of A·B (no accumulator), from shared memory as it is now.
template <class T>
inline void wgmma_product(float* out, u64 da, u64 db, u32 n) {
  const u32 lt = ::kemu::g_thread->linear % 128, w = lt / 32, g = (lt % 32) / 4, t = lt % 4;
  for (u32 i = 0; i < n / 2; ++i) {
    const u32 row = 16 * w + g + 8 * ((i >> 1) & 1u), col = 8 * (i >> 2) + 2 * t + (i & 1u);
    float acc = 0.f;
    for (u32 k = 0; k < 16; ++k)
      acc = fmaf(to_f32<T>(of_bits16<T>(wgmma_elem(da, row, k))), to_f32<T>(of_bits16<T>(wgmma_elem(db, col, k))),
                 acc);
    out[i] = acc;
  }
}
// An issued wgmma: the product is taken at issue and again when its group is waited for; the
// two must agree (its shared memory must not change while it is in flight), and only then is it
// added into the accumulators (which the kernel must not read before).
struct WgmmaOp {
  float* d;
  u64 da, db;
  bool f16;
  int group;
  u32 n;  // 16, 128 or 256
  float prod[128];
};
struct WgmmaThread {
  unsigned long long serial;
  int n, group;  // ops in flight; the open (uncommitted) group's number
  WgmmaOp ops[16];  // v7 with LoRA fused: two groups of 4 + 4 in flight
};
inline WgmmaThread& wgmma_thread() { return thread_state<WgmmaThread>(); }
inline void wgmma_exit_check() {
  const ::kemu::Quiet quiet;
  if (wgmma_thread().n) ::kemu::trap("wgmma: the thread exited with a wgmma it never waited for (wgmma.wait_group)");
}
inline const ::kemu::ExitCheck wgmma_exit_check_reg(wgmma_exit_check);
// Where a descriptor's operand (`rows` rows) lies: [lo, hi) in shared addresses.
// (A k16 slice: rows/8 groups SBO apart; unswizzled, two core matrices LBO apart in each.)
inline void wgmma_span(u64 desc, u32 rows) {
  const u32 start = u32(desc & 0x3fffu) << 4, lbo = u32((desc >> 16) & 0x3fffu) << 4,
            sbo = u32((desc >> 32) & 0x3fffu) << 4;
  if (desc >> 62 == 1) ::kemu::swizzle_check(start & ~1023u, start + rows / 8 * sbo, 1);
  else ::kemu::swizzle_check(start, start + (rows / 8 - 1) * sbo + lbo + 128, 0);
}
template <class T>
inline void wgmma_issue(float* d, u64 da, u64 db, u32 n = 128) {
  const ::kemu::Quiet quiet;
  ::kemu::prof_wgmma(n);
  wgmma_span(da, 64);
  wgmma_span(db, n);
  const dim3 bd = ::kemu::g_launch.block_dim;
  if ((bd.x * bd.y * bd.z) % 128 != 0) ::kemu::trap("wgmma: the block is not a whole number of warpgroups");
  // .sync.aligned: every lane of the warp issues it, with the same descriptors.
  struct Descs {
    u64 a, b;
  } mine{da, db};
  const unsigned char* s = ::kemu::warp_exchange(0xffffffffu, &mine, sizeof mine);
  for (unsigned l = 0; l < 32; ++l) {
    const Descs o = ::kemu::read_slot<Descs>(s, l);
    if (o.a != da || o.b != db) ::kemu::trap("wgmma: lanes of a warp issued different descriptors");
  }
  WgmmaThread& w = wgmma_thread();
  if (w.n == 16) ::kemu::trap("wgmma: more than 16 wgmma in flight in one thread (emulation limit)");
  WgmmaOp& op = w.ops[w.n++];
  op.d = d;
  op.da = da;
  op.db = db;
  op.f16 = is_f16(T());
  op.group = w.group;
  op.n = n;
  wgmma_product<T>(op.prod, da, db, n);
}
inline void wgmma_commit_emu() {
  const ::kemu::Quiet quiet;
  wgmma_thread().group++;
}
// Completes every committed group but the newest `keep`.
inline void wgmma_wait_emu(int keep) {
  const ::kemu::Quiet quiet;
  WgmmaThread& w = wgmma_thread();
  int kept = 0;
  for (int i = 0; i < w.n; ++i) {
    WgmmaOp& op = w.ops[i];
    if (op.group >= w.group - keep) {
      w.ops[kept++] = op;
      continue;
    }
    float again[128];
    if (op.f16)
      wgmma_product<__half>(again, op.da, op.db, op.n);
    else
      wgmma_product<__nv_bfloat16>(again, op.da, op.db, op.n);
    if (std::memcmp(again, op.prod, op.n / 2 * sizeof(float)) != 0)
      ::kemu::trap("wgmma: its shared-memory operands changed while it was in flight (written before wgmma.wait_group)");
    for (u32 j = 0; j < op.n / 2; ++j) op.d[j] += op.prod[j];
  }
  w.n = kept;
}
}  // namespace kiln_emu_impl
#endif

// Orders the accumulators' register accesses around the asynchronous instruction (the compiler
// must neither read them early nor move writes past it).
// R: accumulators a thread holds (64 for m64n128, 128 for m64n256).
template <int R = 64>
__device__ __forceinline__ void wgmma_fence_regs(float* d) {
#if KILN_WGMMA
  KILN_UNROLL
  for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
#else
  (void)d;
#endif
}
template <int R = 64>
__device__ __forceinline__ void wgmma_fence(float* d) {
  wgmma_fence_regs<R>(d);
#if KILN_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#if KILN_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#elif !KILN_GPU
  kiln_emu_impl::wgmma_commit_emu();
#endif
}
// Waits until at most N committed groups are in flight.
template <int N, int R = 64>
__device__ __forceinline__ void wgmma_wait(float* d) {
#if KILN_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#elif !KILN_GPU
  kiln_emu_impl::wgmma_wait_emu(N);
#endif
  wgmma_fence_regs<R>(d);
}
// Makes this thread's generic-proxy stores to shared memory visible to the tensor cores.
__device__ __forceinline__ void fence_proxy_async() {
#if KILN_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#elif !KILN_GPU
  ::kemu::proxy_fence();  // the race checker holds wgmma's reads to it
#endif
}

#if KILN_WGMMA
#define KILN_WG_D8(i)                                                                                    \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), \
      "+f"(d[i + 7])
#define KILN_WG_ASM(ty)                                                                                          \
  asm volatile(                                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                               \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." ty "." ty                                                   \
      " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "  \
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, " \
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}," \
      " %64, %65, p, 1, 1, 0, 0;\n}\n"                                                                           \
      : KILN_WG_D8(0), KILN_WG_D8(8), KILN_WG_D8(16), KILN_WG_D8(24), KILN_WG_D8(32), KILN_WG_D8(40),          \
        KILN_WG_D8(48), KILN_WG_D8(56)                                                                           \
      : "l"(da), "l"(db), "r"(1))
#endif

// d[64] += A[64×16]·B[16×128] for the calling warpgroup (descriptors from wgmma_desc).
__device__ __forceinline__ void wgmma_m64n128k16(float* d, u64 da, u64 db, bf16) {
#if KILN_WGMMA
  KILN_WG_ASM("bf16");
#elif KILN_GPU
  (void)d, (void)da, (void)db;
  __trap();  // never selected: the backend picks wgmma kernels only for sm_90a modules
#else
  kiln_emu_impl::wgmma_issue<bf16>(d, da, db);
#endif
}
__device__ __forceinline__ void wgmma_m64n128k16(float* d, u64 da, u64 db, f16) {
#if KILN_WGMMA
  KILN_WG_ASM("f16");
#elif KILN_GPU
  (void)d, (void)da, (void)db;
  __trap();
#else
  kiln_emu_impl::wgmma_issue<f16>(d, da, db);
#endif
}

#if KILN_WGMMA
#define KILN_WG256_ASM(ty)                                                                                       \
  asm volatile(                                                                                                  \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                                                              \
      "wgmma.mma_async.sync.aligned.m64n256k16.f32." ty "." ty                                                  \
      " {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, "  \
      "%22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, " \
      "%43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, " \
      "%85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, " \
      "%105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, "    \
      "%122, %123, %124, %125, %126, %127},"                                                                     \
      " %128, %129, p, 1, 1, 0, 0;\n}\n"                                                                          \
      : KILN_WG_D8(0), KILN_WG_D8(8), KILN_WG_D8(16), KILN_WG_D8(24), KILN_WG_D8(32), KILN_WG_D8(40),          \
        KILN_WG_D8(48), KILN_WG_D8(56), KILN_WG_D8(64), KILN_WG_D8(72), KILN_WG_D8(80), KILN_WG_D8(88),        \
        KILN_WG_D8(96), KILN_WG_D8(104), KILN_WG_D8(112), KILN_WG_D8(120)                                       \
      : "l"(da), "l"(db), "r"(1))
#endif

// d[128] += A[64×16]·B[16×256] for the calling warpgroup: d[i] is row 16w + g + 8·((i>>1)&1),
// column 8·(i>>2) + 2t + (i&1), as for m64n128 with twice the columns.
__device__ __forceinline__ void wgmma_m64n256k16(float* d, u64 da, u64 db, bf16) {
#if KILN_WGMMA
  KILN_WG256_ASM("bf16");
#elif KILN_GPU
  (void)d, (void)da, (void)db;
  __trap();
#else
  kiln_emu_impl::wgmma_issue<bf16>(d, da, db, 256);
#endif
}
__device__ __forceinline__ void wgmma_m64n256k16(float* d, u64 da, u64 db, f16) {
#if KILN_WGMMA
  KILN_WG256_ASM("f16");
#elif KILN_GPU
  (void)d, (void)da, (void)db;
  __trap();
#else
  kiln_emu_impl::wgmma_issue<f16>(d, da, db, 256);
#endif
}

#if KILN_WGMMA
#define KILN_WG16_ASM(ty)                                                                \
  asm volatile(                                                                          \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %10, 0;\n"                                       \
      "wgmma.mma_async.sync.aligned.m64n16k16.f32." ty "." ty                           \
      " {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, p, 1, 1, 0, 0;\n}\n"                 \
      : KILN_WG_D8(0)                                                                    \
      : "l"(da), "l"(db), "r"(1))
#endif

// d[8] += A[64×16]·B[16×16] for the calling warpgroup (v7's fused LoRA pre-product, U = x·Aᵀ
// with the rank as N): d[i] is row 16w + g + 8·((i>>1)&1), column 8·(i>>2) + 2t + (i&1).
__device__ __forceinline__ void wgmma_m64n16k16(float* d, u64 da, u64 db, bf16) {
#if KILN_WGMMA
  KILN_WG16_ASM("bf16");
#elif KILN_GPU
  (void)d, (void)da, (void)db;
  __trap();
#else
  kiln_emu_impl::wgmma_issue<bf16>(d, da, db, 16);
#endif
}
__device__ __forceinline__ void wgmma_m64n16k16(float* d, u64 da, u64 db, f16) {
#if KILN_WGMMA
  KILN_WG16_ASM("f16");
#elif KILN_GPU
  (void)d, (void)da, (void)db;
  __trap();
#else
  kiln_emu_impl::wgmma_issue<f16>(d, da, db, 16);
#endif
}

// ---- TMA and mbarriers (sm_90a) ----
// A tensor map: cuTensorMapEncodeTiled's 128 opaque bytes on a GPU, kemu::TmaMap in the
// emulation (the backend's `Exec::tensor_map_2d` writes whichever its device reads). Kernels
// take it in a __grid_constant__ parameter struct so its address is the parameter's own.
struct __align__(64) TensorMap {
  u64 opaque[16];
};
// The 8-byte barrier in shared memory: `count` arrivals complete a phase, together with the
// transaction bytes announced by arrive_expect_tx and delivered by TMA loads.
__device__ __forceinline__ void mbar_init(u64* bar, u32 count) {
#if KILN_WGMMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(u32(__cvta_generic_to_shared(bar))), "r"(count)
               : "memory");
#elif KILN_GPU
  (void)bar, (void)count;
  __trap();
#else
  ::kemu::mbar_init(bar, count);
#endif
}
// After the initializing thread's inits, before the barrier that publishes them: the async
// proxy (TMA's completions) must see initialized barriers.
__device__ __forceinline__ void mbar_fence_init() {
#if KILN_WGMMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
// One arrival that also announces `bytes` of transactions the phase waits for.
__device__ __forceinline__ void mbar_arrive_expect_tx(u64* bar, u32 bytes) {
#if KILN_WGMMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(u32(__cvta_generic_to_shared(bar))),
               "r"(bytes)
               : "memory");
#elif KILN_GPU
  (void)bar, (void)bytes;
  __trap();
#else
  ::kemu::mbar_arrive(bar, bytes);
#endif
}
__device__ __forceinline__ void mbar_arrive(u64* bar) {
#if KILN_WGMMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(u32(__cvta_generic_to_shared(bar))) : "memory");
#elif KILN_GPU
  (void)bar;
  __trap();
#else
  ::kemu::mbar_arrive(bar, 0);
#endif
}
// Blocks until the phase of parity `parity` (0 for a fresh barrier's first) has completed.
__device__ __forceinline__ void mbar_wait(u64* bar, u32 parity) {
#if KILN_WGMMA
  // The retry loop inside one asm block (as CUTLASS's ClusterBarrier::wait): the warp leaves it
  // converged, ready for the .sync.aligned wgmma instructions that follow.
  asm volatile(
      "{\n.reg .pred p;\nKILN_MBAR_WAIT:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      "@p bra KILN_MBAR_DONE;\nbra KILN_MBAR_WAIT;\nKILN_MBAR_DONE:\n}\n" ::"r"(u32(__cvta_generic_to_shared(bar))),
      "r"(parity)
      : "memory");
#elif KILN_GPU
  (void)bar, (void)parity;
  __trap();
#else
  ::kemu::mbar_wait(bar, parity);
#endif
}
// The box at coordinates (c0 along the contiguous dimension, c1) of `map` into `dst` (shared,
// 128-byte aligned; 1024 for the 128-byte swizzle), its bytes counted against `bar`'s phase.
// Elements outside the tensor arrive as zeros (and still count).
__device__ __forceinline__ void tma_load_2d(void* dst, const TensorMap* map, int c0, int c1, u64* bar) {
#if KILN_WGMMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          u32(__cvta_generic_to_shared(dst))),
      "l"(map), "r"(c0), "r"(c1), "r"(u32(__cvta_generic_to_shared(bar)))
      : "memory");
#elif KILN_GPU
  (void)dst, (void)map, (void)c0, (void)c1, (void)bar;
  __trap();
#else
  const ::kemu::TmaMap* m = reinterpret_cast<const ::kemu::TmaMap*>(map);
  // The profile sees what the copy engine moves: each box row a 128-byte-or-less request.
  if (m->magic == ::kemu::kTmaMagic) {
    const u32 row = m->box[0] * m->elem;
    for (u32 r = 0; r < m->box[1]; ++r) {
      const long long y = (long long)c1 + r;
      if (y >= 0 && (unsigned long long)y < m->dim[1] && c0 >= 0 && (unsigned long long)c0 < m->dim[0]) {
        const unsigned long long left = (m->dim[0] - u64(c0)) * m->elem;
        ::kemu::prof_note(::kemu::ProfCpAsync,
                          reinterpret_cast<const unsigned char*>(m->base) + y * m->row_bytes + u64(c0) * m->elem,
                          left < row ? size_t(left) : size_t(row), false);
      }
      ::kemu::prof_note(::kemu::ProfCpAsync, static_cast<unsigned char*>(dst) + r * row, row, true);
    }
  }
  ::kemu::tma_load_2d(dst, m, c0, c1, bar);
#endif
}
