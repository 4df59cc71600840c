// The emulation's memory profiler (kernels/emu/prof.cpp): the counters of one profiled launch,
// shared with the Rust side (kiln_cuda::emu::RawProfile mirrors this struct field by field).
#pragma once
#include <cstddef>
#include <cstdint>

// Resident CTAs per SM the L2 model tracks at once (1 … KEMU_WAVES).
#define KEMU_WAVES 8

extern "C" {
struct KemuProfile {
  // In: run at most this many CTAs (the first in launch order; 0: all), and the modeled GPU's SM
  // count (the L2 model's wave is `wave` × resident CTAs per SM; 0: the launch is one wave).
  uint64_t max_ctas, wave;
  // Out.
  uint64_t ctas_total, ctas_run, threads_per_cta;
  // Global loads / stores / atomics, per warp-level request: the distinct bytes the lanes asked
  // for, and the 32-byte sectors those bytes lie in (what the memory system moves).
  uint64_t gld_req, gld_bytes, gld_sectors;
  uint64_t gst_req, gst_bytes, gst_sectors;
  uint64_t gatom_req, gatom_sectors;
  // Global loads by the widest lane access: 1, 2, 4, 8, 16 bytes.
  uint64_t gld_width[5];
  // cp.async's global side (its shared side is counted with the shared stores).
  uint64_t cpasync_req, cpasync_bytes, cpasync_sectors;
  // Shared memory: requests and wavefronts (one wavefront: one pass of the 32 banks).
  uint64_t lds_req, lds_wavefronts, sts_req, sts_wavefronts, ldsm_req, ldsm_wavefronts;
  // Constant-memory reads (the image's read-only tables, kernel parameters excluded).
  uint64_t const_req;
  // Tensor-core instructions: mma.sync m16n8k16 per warp, wgmma per warpgroup in m64n8k16 units
  // (m64n128k16 is 16), and the shared-memory bytes wgmma reads as operands.
  uint64_t mma_warp, wgmma_group, wgmma_smem_bytes;
  // __syncthreads executed (per CTA, summed).
  uint64_t barriers;
  // The L2 model: distinct sectors read summed over waves of `wave` × (i + 1) CTAs (i + 1
  // resident CTAs per SM; each distinct sector once per wave), distinct sectors read over the
  // whole launch, distinct sectors written.
  uint64_t dram_read_sectors[KEMU_WAVES], unique_read_sectors, unique_write_sectors;
  // The CTAs those waves held: whole waves only when the sample stopped inside one (a launch run
  // to its end counts every wave), else the partial first wave, flagged in `dram_partial` (bit i:
  // the sample is smaller than one wave of i + 1 CTAs per SM, an upper bound on DRAM reads).
  uint64_t dram_wave_ctas[KEMU_WAVES], dram_partial;
};
}

namespace kemu::prof {
enum Space { Global = 0, Shared = 1, Const = 2 };
enum Kind { Plain = 0, Ldmatrix = 1, CpAsync = 2, Atomic = 3 };
void begin_launch(KemuProfile* out, unsigned threads_per_cta);
void begin_block(uint64_t linear_cta);
// One lane's access (`thread`: the block-linear thread index).
void access(unsigned thread, int space, int kind, bool write, uintptr_t pc, const void* p, size_t n);
// Every warp-level request recorded so far is complete (a block barrier, the block's end).
void flush();
void end_launch();
}  // namespace kemu::prof
