// The CPU emulation runtime: fibers, barriers, warp collectives, kernel registry, launches and
// the race checker. Compiled without instrumentation; the kernels call in here.
#include <sys/mman.h>

// Fibers switch with a few instructions of our own on x86-64 Linux (ucontext's swapcontext makes
// a sigprocmask system call per switch, about 0.5 µs); elsewhere ucontext.
#if defined(__x86_64__) && defined(__linux__)
#define KEMU_FAST_SWITCH 1
#else
#define KEMU_FAST_SWITCH 0
#include <ucontext.h>
#endif

#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln_emu.h"
#include "prof.h"

// The executable image's bounds (GNU ld and lld define them): a kernel's `__shared__` arrays are
// statics in .bss, its `__constant__` tables read-only data before it.
extern "C" char __executable_start[] __attribute__((weak));
extern "C" char __bss_start[] __attribute__((weak));
extern "C" char _end[] __attribute__((weak));

namespace kemu {
ThreadView* g_thread = nullptr;
LaunchView g_launch{};

namespace {
constexpr size_t kStack = 64 * 1024;
constexpr unsigned kMaxThreads = 1024;
// The largest dynamic shared memory any current GPU grants a block (sm_90, opted in).
constexpr size_t kMaxDynSmem = 227 * 1024;

enum State { Ready, WaitBar, WaitWarp, WaitAsync, Done };
#if KEMU_FAST_SWITCH
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer in *save, and resumes the context whose stack pointer is `next`.
extern "C" void kemu_switch(void** save, void* next);
asm(R"(
.text
.globl kemu_switch
.hidden kemu_switch
.type kemu_switch,@function
kemu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size kemu_switch, .-kemu_switch
.section .note.GNU-stack,"",@progbits
.text
)");
struct Ctx {
  void* sp;
};
#else
typedef ucontext_t Ctx;
#endif

struct Fiber {
  ThreadView view;
  Ctx ctx;
  State st;
  unsigned wait_gen;
};
struct Warp {
  unsigned exist, live, arrived, expected, gen;
  alignas(16) unsigned char slots[2][32][64];
};
struct Kernel {
  KernelFn fn;
  size_t params_size;
  unsigned max_threads;  // __launch_bounds__, or 1024
  // Dynamic shared memory a launch may ask for: 48 KiB until granted more
  // (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, kiln_emu_set_max_dyn_smem).
  size_t max_dyn_smem;
};
constexpr size_t kDefaultDynSmem = 48 * 1024;

std::unordered_map<std::string, Kernel>& registry() {
  static std::unordered_map<std::string, Kernel> r;
  return r;
}
std::string key(const char* name, int variant) { return std::string(name) + (variant ? "#rc" : ""); }

// One launch at a time (tests run on several OS threads; the block state below is global).
std::mutex g_mutex;
Ctx g_sched;
Fiber* g_fibers = nullptr;
unsigned char* g_stacks = nullptr;
unsigned char* g_smem = nullptr;
Warp g_warps[kMaxThreads / 32];
unsigned g_nthreads, g_live, g_bar_count, g_bar_gen;
KernelFn g_fn;
const void* g_params;
Fiber* g_cur;
bool g_failed;
std::string g_err;

// ---- race check state ----
bool g_rc_on = false;
struct Access {
  unsigned epoch;  // block barrier generation + 1; 0: no access recorded
  int writer;
  unsigned writer_gen;
  int reader[2];
  unsigned reader_gen[2];
  unsigned writer_proxy;  // the writer's proxy-fence count at the write
};
// Per thread: fence.proxy.async calls so far in this block (race check only).
unsigned g_proxy[kMaxThreads];
std::unordered_map<uintptr_t, Access> g_shadow;
std::vector<std::string> g_races;

// ---- mbarriers and TMA loads (sm_90), per block ----
struct MBar {
  uintptr_t addr;
  unsigned count, pending;  // arrivals a phase expects; still to come in the current phase
  long long tx;             // transaction bytes still to come in the current phase
  long long done;           // completed phases
};
struct TmaOp {
  uintptr_t bar;
  unsigned char* dst;
  std::vector<unsigned char> data;
};
struct Region {
  uintptr_t lo, hi;
  unsigned swizzle;  // wgmma's encoding: 0 none, 1 128 B
};
std::vector<MBar> g_mbars;
std::vector<TmaOp> g_tma;       // loads issued, not yet landed
std::vector<Region> g_regions;  // what TMA loads wrote, with their swizzle
std::unordered_map<uint64_t, long long> g_passed;  // (thread, barrier) → the last phase it waited for
unsigned g_async_gen;  // bumped by every arrival and load: wakes fibers waiting on a barrier
int g_waits_on[kMaxThreads];  // the barrier (index in g_mbars) a fiber waits on, or -1

// ---- profiler state (kernels/emu/prof.cpp scores the accesses) ----
bool g_prof_on = false;
size_t g_params_len = 0;
uint64_t g_prof_barriers = 0;
KemuProfile* g_prof_out = nullptr;

std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

std::string where(unsigned linear) {
  const Fiber& f = g_fibers[linear];
  return fmt("thread (%u,%u,%u) of block (%u,%u,%u)", f.view.tid.x, f.view.tid.y, f.view.tid.z, g_launch.block.x,
             g_launch.block.y, g_launch.block.z);
}

void fail(const std::string& why) {
  if (!g_failed) g_err = why;
  g_failed = true;
}

#if KEMU_FAST_SWITCH
void switch_to(Ctx* save, Ctx* next) { kemu_switch(&save->sp, next->sp); }
#else
void switch_to(Ctx* save, Ctx* next) { swapcontext(save, next); }
#endif

void yield() { switch_to(&g_cur->ctx, &g_sched); }

std::vector<void (*)()>& exit_checks() {
  static std::vector<void (*)()> v;
  return v;
}

void release_bar() {
  g_bar_count = 0;
  g_bar_gen++;
  if (g_prof_on) {
    g_prof_barriers++;
    prof::flush();  // every thread is at the barrier: each request before it is complete
  }
}

void fiber_main() {
  g_fn(g_params);
  for (auto check : exit_checks()) check();  // may trap, as kernel code can
  Fiber* f = g_cur;
  f->st = Done;
  g_live--;
  g_warps[f->view.linear / 32].live &= ~(1u << (f->view.linear & 31));
  if (g_bar_count > 0 && g_bar_count == g_live) release_bar();
#if KEMU_FAST_SWITCH
  // A finished fiber never resumes: its context is dropped.
  Ctx dead;
  switch_to(&dead, &g_sched);
  __builtin_unreachable();
#endif
  // (ucontext: uc_link returns to the scheduler.)
}

// Prepares fiber `i` to start in fiber_main on its own stack.
void init_fiber(Fiber& f, unsigned i) {
  unsigned char* base = g_stacks + kStack * i;
#if KEMU_FAST_SWITCH
  // The frame kemu_switch pops: MXCSR/x87 control word, r15..rbp, then the return address
  // (fiber_main), with the stack 16-byte aligned at fiber_main's entry as after a call.
  uintptr_t top = (reinterpret_cast<uintptr_t>(base) + kStack) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top - 8);
  *sp = nullptr;  // fiber_main's (never used) return address
  *--sp = reinterpret_cast<void*>(&fiber_main);
  for (int r = 0; r < 6; ++r) *--sp = nullptr;
  uint32_t ctl[2];
  asm volatile("stmxcsr %0" : "=m"(ctl[0]));
  asm volatile("fnstcw %0" : "=m"(ctl[1]));
  *--sp = nullptr;
  std::memcpy(sp, ctl, 8);
  f.ctx.sp = sp;
#else
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = base;
  f.ctx.uc_stack.ss_size = kStack;
  f.ctx.uc_link = &g_sched;
  makecontext(&f.ctx, fiber_main, 0);
#endif
}

void rc_access(const void* p, size_t size, bool write) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uintptr_t lo = reinterpret_cast<uintptr_t>(g_stacks);
  if (a >= lo && a < lo + kStack * kMaxThreads) return;  // a thread's own locals never race
  int t = int(g_cur->view.linear);
  for (const TmaOp& op : g_tma)
    if (a < uintptr_t(op.dst) + op.data.size() && uintptr_t(op.dst) < a + size) {
      if (g_races.size() < 8)
        g_races.push_back(fmt("%s %s address %p, which a TMA load is still filling: no wait on its mbarrier's phase "
                              "came first",
                              where(unsigned(t)).c_str(), write ? "writes" : "reads", p));
      return;
    }
  unsigned gen = g_warps[t / 32].gen;
  auto conflict = [&](int u, unsigned ugen) {
    // Two lanes of one warp are ordered when a warp collective lies between their accesses.
    return u >= 0 && u != t && !(u / 32 == t / 32 && ugen != gen);
  };
  // Byte granularity: neighbouring 16-bit elements written by different threads never conflict.
  for (uintptr_t w = a; w < a + size; ++w) {
    Access& e = g_shadow[w];
    if (e.epoch != g_bar_gen + 1) e = Access{g_bar_gen + 1, -1, 0, {-1, -1}, {0, 0}, 0};
    const char* kind = nullptr;
    int other = -1;
    if (conflict(e.writer, e.writer_gen)) {
      kind = write ? "writes where %s wrote" : "reads where %s wrote";
      other = e.writer;
    } else if (write) {
      for (int i = 0; i < 2 && !kind; ++i)
        if (conflict(e.reader[i], e.reader_gen[i])) {
          kind = "writes where %s read";
          other = e.reader[i];
        }
    }
    if (kind && g_races.size() < 8) {
      std::string what = fmt(kind, where(unsigned(other)).c_str());
      g_races.push_back(fmt("race on address %p: %s %s, with no barrier between (barrier interval %u)",
                            reinterpret_cast<void*>(w), where(unsigned(t)).c_str(), what.c_str(), g_bar_gen));
    }
    if (write) {
      e.writer = t;
      e.writer_gen = gen;
      e.writer_proxy = g_proxy[t];
    } else if (e.reader[0] < 0 || e.reader[0] == t) {
      e.reader[0] = t;
      e.reader_gen[0] = gen;
    } else {
      e.reader[1] = t;
      e.reader_gen[1] = gen;
    }
    if (kind) return;  // one report per access
  }
}

template <class T>
bool inside(uintptr_t a, const T* base, size_t bytes) {
  const uintptr_t b = reinterpret_cast<uintptr_t>(base);
  return b && a >= b && a < b + bytes;
}

// The memory space of an address a kernel touched, or -1 for what a GPU keeps in registers or
// special registers (the thread's own stack, the emulation's own state, the kernel parameters).
int space_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (inside(a, g_stacks, kStack * kMaxThreads) || inside(a, g_fibers, sizeof(Fiber) * kMaxThreads) ||
      inside(a, g_warps, sizeof g_warps) || inside(a, &g_thread, sizeof g_thread) ||
      inside(a, &g_launch, sizeof g_launch) || inside(a, static_cast<const char*>(g_params), g_params_len))
    return -1;
  if (inside(a, g_smem, kMaxDynSmem + 128)) return prof::Shared;
  if (__bss_start && _end && a >= uintptr_t(__bss_start) && a < uintptr_t(_end)) return prof::Shared;
  if (__executable_start && __bss_start && a >= uintptr_t(__executable_start) && a < uintptr_t(__bss_start))
    return prof::Const;
  return prof::Global;
}

void prof_hook(const void* p, size_t n, bool write, const void* pc) {
  if (g_cur->view.quiet) return;
  const int space = space_of(p);
  if (space >= 0) prof::access(g_cur->view.linear, space, prof::Plain, write, reinterpret_cast<uintptr_t>(pc), p, n);
}

bool runnable(const Fiber& f) {
  switch (f.st) {
    case Ready:
      return true;
    case WaitBar:
      return f.wait_gen != g_bar_gen;
    case WaitWarp:
      return f.wait_gen != g_warps[f.view.linear / 32].gen;
    case WaitAsync:
      return f.wait_gen != g_async_gen;
    case Done:
      return false;
  }
  return false;
}

std::string deadlock() {
  unsigned bar = 0, warp = 0, mbar = 0;
  std::string warps;
  const MBar* first = nullptr;
  for (unsigned i = 0; i < g_nthreads; ++i) {
    if (g_fibers[i].st == WaitBar) bar++;
    if (g_fibers[i].st == WaitWarp) warp++;
    if (g_fibers[i].st == WaitAsync && !mbar++ && g_waits_on[i] >= 0) first = &g_mbars[size_t(g_waits_on[i])];
  }
  if (first)
    warps += fmt(" %u wait on mbarriers (the first on shared %p: %lld phases completed, %u of %u arrivals and %lld "
                 "transaction bytes still to come);",
                 mbar, reinterpret_cast<void*>(first->addr), first->done, first->pending, first->count, first->tx);
  for (unsigned w = 0; w < (g_nthreads + 31) / 32; ++w)
    if (g_warps[w].arrived)
      warps += fmt(" warp %u: lanes %08x arrived of %08x (live %08x);", w, g_warps[w].arrived, g_warps[w].expected,
                   g_warps[w].live);
  return fmt("deadlock in block (%u,%u,%u): %u threads wait at __syncthreads, %u at warp collectives, %u exited;",
             g_launch.block.x, g_launch.block.y, g_launch.block.z, bar, warp, g_nthreads - g_live) +
         warps;
}

// Runs one block to completion; false on failure (g_err says why).
bool run_block() {
  g_live = g_nthreads;
  g_bar_count = 0;
  g_bar_gen = 0;
  for (unsigned w = 0; w < (g_nthreads + 31) / 32; ++w) {
    unsigned n = g_nthreads - w * 32 >= 32 ? 32 : g_nthreads - w * 32;
    Warp& wp = g_warps[w];
    wp.exist = wp.live = n == 32 ? 0xffffffffu : (1u << n) - 1;
    wp.arrived = wp.expected = wp.gen = 0;
  }
  const dim3 bd = g_launch.block_dim;
  for (unsigned i = 0; i < g_nthreads; ++i) {
    Fiber& f = g_fibers[i];
    f.view.linear = i;
    f.view.quiet = 0;
    f.view.tid = uint3{i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y)};
    f.st = Ready;
    init_fiber(f, i);
  }
  g_shadow.clear();
  std::memset(g_proxy, 0, sizeof g_proxy);
  g_mbars.clear();
  g_tma.clear();
  g_regions.clear();
  g_passed.clear();
  unsigned done = 0;
  while (done < g_nthreads) {
    bool progressed = false;
    done = 0;
    for (unsigned i = 0; i < g_nthreads; ++i) {
      Fiber& f = g_fibers[i];
      if (f.st == Done) {
        done++;
        continue;
      }
      if (!runnable(f)) continue;
      f.st = Ready;
      g_cur = &f;
      g_thread = &f.view;
      switch_to(&g_sched, &f.ctx);
      g_thread = nullptr;
      progressed = true;
      if (g_failed) return false;
    }
    if (!progressed && done < g_nthreads) {
      fail(deadlock());
      return false;
    }
  }
  if (!g_tma.empty()) {
    fail(fmt("a TMA load into shared %p was never waited for (no thread waited on its mbarrier's phase)",
             static_cast<void*>(g_tma[0].dst)));
    return false;
  }
  return true;
}

}  // namespace

ExitCheck::ExitCheck(void (*fn)()) { exit_checks().push_back(fn); }

// `pc` names the instruction: the call site in the kernel.
void prof_note_at(const void* pc, int kind, const void* p, size_t n, bool write) {
  if (!g_prof_on) return;
  const int space = space_of(p);
  if (space >= 0) prof::access(g_cur->view.linear, space, kind, write, reinterpret_cast<uintptr_t>(pc), p, n);
}

void prof_note(int kind, const void* p, size_t n, bool write) {
  prof_note_at(__builtin_return_address(0), kind, p, n, write);
}

void prof_count(int what) {
  if (!g_prof_on) return;
  KemuProfile* o = g_prof_out;
  if (what == ProfMma && (g_cur->view.linear & 31u) == 0) o->mma_warp++;
}

// Counted in m64n8k16 units (N/8 a wgmma: m64n128k16 is 16), with the operand bytes it reads.
void prof_wgmma(unsigned n) {
  if (!g_prof_on || g_cur->view.linear % 128 != 0) return;
  g_prof_out->wgmma_group += n / 8;
  g_prof_out->wgmma_smem_bytes += (64 + n) * 16 * 2;
}

// mbarriers and TMA loads (sm_90): rt_sm90.inc, part of this unit (it uses the block state).
#include "rt_sm90.inc"

void proxy_fence() {
  if (g_rc_on) g_proxy[g_cur->view.linear]++;
}

// A read through the async proxy (wgmma's operands): every byte's last generic-proxy write must
// have been followed by a fence.proxy.async of its writer. Looks before the read's own check,
// which may start a new barrier interval's record for the byte.
void async_read(const void* p, size_t n) {
  if (!g_rc_on) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (uintptr_t w = a; w < a + n; ++w) {
    auto it = g_shadow.find(w);
    if (it == g_shadow.end()) continue;
    const Access& e = it->second;
    if (e.writer >= 0 && e.writer_proxy == g_proxy[e.writer]) {
      if (g_races.size() < 8)
        g_races.push_back(fmt("async-proxy read (wgmma) of address %p by %s: %s wrote it with no fence.proxy.async "
                              "after the write",
                              reinterpret_cast<void*>(w), where(g_cur->view.linear).c_str(),
                              where(unsigned(e.writer)).c_str()));
      return;
    }
  }
}

Registrar::Registrar(const char* name, int variant, size_t params_size, unsigned max_threads, KernelFn fn) {
  registry()[key(name, variant)] = Kernel{fn, params_size, max_threads ? max_threads : kMaxThreads, kDefaultDynSmem};
}

void syncthreads() {
  if (++g_bar_count == g_live) {
    release_bar();
    return;
  }
  g_cur->st = WaitBar;
  g_cur->wait_gen = g_bar_gen;
  yield();
}

[[noreturn]] void trap(const char* why) {
  fail(where(g_cur->view.linear) + ": " + why);
  g_cur->st = Done;
  Ctx dead;
  switch_to(&dead, &g_sched);
  __builtin_unreachable();
}

const unsigned char* warp_exchange(unsigned mask, const void* mine, size_t n) {
  Fiber* f = g_cur;
  unsigned lane = f->view.linear & 31;
  Warp& w = g_warps[f->view.linear / 32];
  char msg[200];
  if (!(mask >> lane & 1u)) {
    snprintf(msg, sizeof msg, "warp collective with mask %08x called by lane %u, which the mask leaves out", mask, lane);
    trap(msg);
  }
  unsigned expected = mask & w.exist;
  if (expected & ~w.live) {
    snprintf(msg, sizeof msg, "warp collective with mask %08x names lanes that have exited (%08x)", mask,
             expected & ~w.live);
    trap(msg);
  }
  if (w.arrived == 0) {
    w.expected = expected;
  } else if (w.expected != expected) {
    snprintf(msg, sizeof msg,
             "lanes of one warp wait at collectives with different masks (%08x, %08x): not emulated", w.expected,
             expected);
    trap(msg);
  }
  // Two slot sets by generation parity: a lane can be at most one collective ahead of the rest.
  unsigned par = w.gen & 1u;
  if (n) std::memcpy(w.slots[par][lane], mine, n);
  w.arrived |= 1u << lane;
  if (w.arrived == w.expected) {
    w.arrived = 0;
    w.gen++;
  } else {
    f->st = WaitWarp;
    f->wait_gen = w.gen;
    yield();
  }
  return &w.slots[par][0][0];
}

// Blocks run one at a time on one OS thread: plain read-modify-writes are atomic.
float atomic_add_f32(float* p, float v) {
  prof_note_at(__builtin_return_address(0), ProfAtomic, p, sizeof *p, true);
  float o = *p;
  *p = o + v;
  return o;
}
int atomic_add_i32(int* p, int v) {
  prof_note_at(__builtin_return_address(0), ProfAtomic, p, sizeof *p, true);
  int o = *p;
  *p = o + v;
  return o;
}
unsigned atomic_add_u32(unsigned* p, unsigned v) {
  prof_note_at(__builtin_return_address(0), ProfAtomic, p, sizeof *p, true);
  unsigned o = *p;
  *p = o + v;
  return o;
}
int atomic_cas_i32(int* p, int cmp, int v) {
  prof_note_at(__builtin_return_address(0), ProfAtomic, p, sizeof *p, true);
  int o = *p;
  if (o == cmp) *p = v;
  return o;
}
float atomic_max_f32(float* p, float v) {
  prof_note_at(__builtin_return_address(0), ProfAtomic, p, sizeof *p, true);
  float o = *p;
  if (v > o) *p = v;
  return o;
}
}  // namespace kemu

using namespace kemu;

extern "C" {
// Defined by the generated kernel sources (build.rs): referencing them makes the linker keep the
// objects whose static registrars list the kernels.
extern int kiln_emu_anchor_0;
extern int kiln_emu_anchor_1;

// Launches `name` over the grid; returns 0, or 1 with a message in `err`. `mode`: 0 the plain
// build, 1 the instrumented build with the race checker, 2 the instrumented build with the
// profiler, which fills `prof` (its `max_ctas` and `wave` say what to run and model).
int kiln_emu_launch(const char* name, int mode, const unsigned* grid, const unsigned* block, size_t dyn_smem,
                    const void* params, size_t params_len, KemuProfile* prof, char* err, size_t err_len) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (kiln_emu_anchor_0 + kiln_emu_anchor_1 != 2) return 1;
  std::string e;
  const int racecheck = mode == 1;
  if (mode == 2 && !prof) e = "profile launch without a profile to fill";
  auto it = registry().find(key(name, mode != 0));
  unsigned threads = block[0] * block[1] * block[2];
  if (!e.empty()) {
  } else if (it == registry().end()) {
    e = fmt("CUDA_ERROR_NOT_FOUND: no kernel named %s%s in the emulation build", name, racecheck ? " (race check)" : "");
  } else if (it->second.params_size != params_len) {
    e = fmt("kernel %s takes %zu bytes of parameters, the launch passed %zu", name, it->second.params_size, params_len);
  } else if (threads == 0 || threads > kMaxThreads || block[0] > 1024 || block[1] > 1024 || block[2] > 64) {
    e = fmt("CUDA_ERROR_INVALID_VALUE: block (%u,%u,%u) (at most 1024 threads; x, y ≤ 1024, z ≤ 64)", block[0],
            block[1], block[2]);
  } else if (threads > it->second.max_threads) {
    e = fmt("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: block of %u threads for a kernel declared __launch_bounds__(%u)",
            threads, it->second.max_threads);
  } else if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535) {
    e = fmt("CUDA_ERROR_INVALID_VALUE: grid (%u,%u,%u)", grid[0], grid[1], grid[2]);
  } else if (dyn_smem > it->second.max_dyn_smem) {
    e = fmt("CUDA_ERROR_INVALID_VALUE: %zu bytes of dynamic shared memory, more than the %zu granted to the kernel "
            "(above 48 KiB a launch needs CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES first)",
            dyn_smem, it->second.max_dyn_smem);
  }
  if (!e.empty()) {
    snprintf(err, err_len, "%s", e.c_str());
    return 1;
  }
  if (!g_fibers) {
    g_fibers = new Fiber[kMaxThreads];
    void* s = mmap(nullptr, kStack * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (s == MAP_FAILED) {
      snprintf(err, err_len, "emulation: cannot map fiber stacks");
      return 1;
    }
    g_stacks = static_cast<unsigned char*>(s);
    g_smem = static_cast<unsigned char*>(aligned_alloc(128, kMaxDynSmem + 128));
  }
  g_fn = it->second.fn;
  // Parameter structs may be over-aligned (a TMA tensor map is 64-byte aligned): the kernel
  // reads them from an aligned copy, as from a GPU's parameter space.
  alignas(64) static unsigned char aligned_params[4096];
  if (params_len > sizeof aligned_params) {
    snprintf(err, err_len, "CUDA_ERROR_INVALID_VALUE: %zu bytes of kernel parameters (at most 4096)", params_len);
    return 1;
  }
  std::memcpy(aligned_params, params, params_len);
  g_params = aligned_params;
  g_nthreads = threads;
  g_failed = false;
  g_err.clear();
  g_races.clear();
  g_launch.block_dim = dim3(block[0], block[1], block[2]);
  g_launch.grid_dim = dim3(grid[0], grid[1], grid[2]);
  // A GPU guarantees dynamic shared memory 16-byte alignment and no more: the base here is 16
  // past a 128-byte boundary, so a kernel that needs more (a swizzled TMA or wgmma tile wants
  // 128 or 1024 bytes) fails here first instead of only on a GPU.
  g_launch.dyn_smem = g_smem + 16;
  g_launch.dyn_smem_bytes = dyn_smem;
  g_params_len = params_len;
  const uint64_t ctas = uint64_t(grid[0]) * grid[1] * grid[2];
  uint64_t limit = ctas;
  if (mode == 2) {
    g_prof_out = prof;
    g_prof_barriers = 0;
    prof->ctas_total = ctas;
    if (prof->max_ctas && prof->max_ctas < ctas) limit = prof->max_ctas;
    prof::begin_launch(prof, threads);
  }
  bool ok = true;
  uint64_t linear = 0;
  for (unsigned z = 0; z < grid[2] && ok && linear < limit; ++z)
    for (unsigned y = 0; y < grid[1] && ok && linear < limit; ++y)
      for (unsigned x = 0; x < grid[0] && ok && linear < limit; ++x, ++linear) {
        g_launch.block = uint3{x, y, z};
        g_launch.serial++;
        // Poisoned (NaN bytes), so a read of dynamic shared memory nobody wrote shows.
        std::memset(g_launch.dyn_smem, 0xff, dyn_smem);
        g_rc_on = racecheck != 0;
        g_prof_on = mode == 2;
        if (g_prof_on) prof::begin_block(linear);
        ok = run_block();
        if (g_prof_on) prof::flush();
        g_rc_on = false;
        g_prof_on = false;
        if (ok && !g_races.empty()) {
          std::string r = fmt("race check: %zu race(s) in kernel %s:", g_races.size(), name);
          for (auto& s : g_races) r += "\n  " + s;
          fail(r);
          ok = false;
        }
      }
  if (mode == 2) {
    prof::end_launch();
    prof->barriers = g_prof_barriers;
    g_prof_out = nullptr;
  }
  g_params_len = 0;
  if (!ok) {
    snprintf(err, err_len, "%s: %s", name, g_err.c_str());
    return 1;
  }
  return 0;
}

// cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES): grants `bytes` of dynamic shared memory to
// both builds of `name`; returns 0, or 1 with a message in `err`.
int kiln_emu_set_max_dyn_smem(const char* name, size_t bytes, char* err, size_t err_len) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = registry().find(key(name, 0));
  if (it == registry().end()) {
    snprintf(err, err_len, "CUDA_ERROR_NOT_FOUND: no kernel named %s in the emulation build", name);
    return 1;
  }
  if (bytes > kMaxDynSmem) {
    snprintf(err, err_len, "CUDA_ERROR_INVALID_VALUE: %zu bytes of dynamic shared memory, more than the %zu any GPU grants",
             bytes, kMaxDynSmem);
    return 1;
  }
  // Grants only grow here (launches on other threads may rely on an earlier, larger grant).
  it->second.max_dyn_smem = std::max(it->second.max_dyn_smem, bytes);
  auto rc = registry().find(key(name, 1));
  if (rc != registry().end()) rc->second.max_dyn_smem = std::max(rc->second.max_dyn_smem, bytes);
  return 0;
}

// Newline-separated names of the kernels in the build (plain variant).
size_t kiln_emu_kernels(char* buf, size_t len) {
  std::string all;
  for (auto& [k, _] : registry())
    if (k.find('#') == std::string::npos) all += k + "\n";
  snprintf(buf, len, "%s", all.c_str());
  return all.size();
}

// The race checker's view of memory: GCC's -fsanitize=thread instrumentation calls these on
// every load and store of the race-check build; only accesses inside a running block count.
#define KEMU_ON(p, sz, w)         \
  if (g_rc_on)                    \
    rc_access(p, sz, w);          \
  else if (g_prof_on)             \
    prof_hook(p, sz, w, __builtin_return_address(0));
#define KEMU_HOOK(sz)                                                                  \
  void __tsan_read##sz(void* p) { KEMU_ON(p, sz, false) }                              \
  void __tsan_write##sz(void* p) { KEMU_ON(p, sz, true) }                              \
  void __tsan_unaligned_read##sz(void* p) { KEMU_ON(p, sz, false) }                    \
  void __tsan_unaligned_write##sz(void* p) { KEMU_ON(p, sz, true) }
KEMU_HOOK(1)
KEMU_HOOK(2)
KEMU_HOOK(4)
KEMU_HOOK(8)
KEMU_HOOK(16)
void __tsan_read_range(void* p, size_t n) { KEMU_ON(p, n, false) }
void __tsan_write_range(void* p, size_t n) { KEMU_ON(p, n, true) }
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void*, void*) {}
void __tsan_vptr_read(void*) {}
}
