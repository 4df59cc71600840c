// The emulation's memory profiler: turns every lane's loads and stores (the instrumented kernel
// build's hooks, and the wrappers' notes for ldmatrix, cp.async and atomics) into the warp-level
// requests a GPU would issue, and counts what the memory system does with them.
//
// Access widths are the host compiler's: a 16-byte vector copied whole is one 16-byte access,
// fields read one by one are separate accesses (ptxas may merge those into one wide load; the
// static SASS mix of `kiln prof static` shows the widths the GPU runs).
//
// Lanes of a warp run one after another here, so a request is rebuilt by matching: the n-th time
// lane l executes the access at program counter pc joins the n-th time every other lane of its
// warp executes it. That is exact for converged code (all lanes take the same path, as in every
// kiln kernel's loads), and pairs divergent paths by occurrence. Requests are complete at each
// block barrier and at the block's end, where they are scored:
// - global: distinct bytes requested and distinct 32-byte sectors (coalescing = bytes / (32 ·
//   sectors); lanes reading the same bytes count them once);
// - shared: wavefronts, the passes of the 32 four-byte banks the request needs: lanes split into
//   phases of 128 bytes (32 lanes for ≤ 4-byte accesses, 16 for 8-byte, 8 for 16-byte; ldmatrix:
//   each 8×8 matrix's 8 row addresses); a phase needs as many wavefronts as the most distinct
//   32-bit words any one bank holds among its addresses (the same word is broadcast);
// - the L2 model: each distinct sector read is fetched from DRAM once per wave of CTAs that run
//   together (SMs × resident CTAs per SM, counted for 1 … KEMU_WAVES CTAs per SM at once, since
//   the occupancy is the card's), writes reach DRAM once per distinct sector of the launch.
#include "prof.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace kemu::prof {
namespace {
struct Lane {
  unsigned lane;
  uintptr_t addr;
  unsigned size;
};
struct Group {
  int space, kind;
  bool write;
  std::vector<Lane> lanes;
};
struct Key {
  uintptr_t pc;
  unsigned warp, n;
  bool operator==(const Key& o) const { return pc == o.pc && warp == o.warp && n == o.n; }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    return std::hash<uint64_t>()(uint64_t(k.pc) * 0x9e3779b97f4a7c15ull ^ (uint64_t(k.warp) << 32 | k.n));
  }
};

KemuProfile* g_out = nullptr;
std::unordered_map<uint64_t, unsigned> g_seen;  // (pc, thread) → executions so far in this block
std::unordered_map<Key, Group, KeyHash> g_groups;
std::unordered_set<uint64_t> g_wave_reads[KEMU_WAVES], g_reads, g_writes;
uint64_t g_wave_id[KEMU_WAVES], g_wave_ctas[KEMU_WAVES];

void sectors_of(const Group& g, std::vector<uint64_t>& out) {
  out.clear();
  for (const Lane& l : g.lanes)
    for (uint64_t s = l.addr >> 5; s <= (l.addr + l.size - 1) >> 5; ++s) out.push_back(s);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
}

// The bytes the lanes asked for, each counted once (lanes reading one address share it).
uint64_t distinct_bytes(const Group& g) {
  static thread_local std::vector<std::pair<uintptr_t, uintptr_t>> spans;
  spans.clear();
  for (const Lane& l : g.lanes) spans.emplace_back(l.addr, l.addr + l.size);
  std::sort(spans.begin(), spans.end());
  uint64_t total = 0;
  uintptr_t end = 0;
  for (auto [lo, hi] : spans) {
    if (hi <= end) continue;
    total += hi - std::max(lo, end);
    end = hi;
  }
  return total;
}

uint64_t wavefronts(const Group& g) {
  unsigned widest = 4;
  for (const Lane& l : g.lanes) widest = std::max(widest, l.size);
  unsigned pow2 = 4;
  while (pow2 < widest) pow2 *= 2;
  // Lanes per 128-byte phase: 32 for ≤ 4-byte accesses, 16 for 8, 8 for 16, 1 for ≥ 128.
  const unsigned per_phase = g.kind == Ldmatrix ? 8 : std::max(1u, 128 / pow2);
  uint64_t total = 0;
  std::vector<uint64_t> words;
  for (unsigned phase = 0; phase < (32 + per_phase - 1) / per_phase; ++phase) {
    words.clear();
    for (const Lane& l : g.lanes)
      if (l.lane / per_phase == phase)
        for (uint64_t w = l.addr >> 2; w <= (l.addr + l.size - 1) >> 2; ++w) words.push_back(w);
    if (words.empty()) continue;
    std::sort(words.begin(), words.end());
    words.erase(std::unique(words.begin(), words.end()), words.end());
    unsigned per_bank[32] = {};
    unsigned worst = 0;
    for (uint64_t w : words) worst = std::max(worst, ++per_bank[w & 31]);
    total += worst;
  }
  return total;
}

void score(const Group& g) {
  KemuProfile& o = *g_out;
  if (g.space == Const) {
    o.const_req++;
    return;
  }
  if (g.space == Shared) {
    const uint64_t wf = wavefronts(g);
    if (g.kind == Ldmatrix) {
      o.ldsm_req++;
      o.ldsm_wavefronts += wf;
    } else if (g.write) {
      o.sts_req++;
      o.sts_wavefronts += wf;
    } else {
      o.lds_req++;
      o.lds_wavefronts += wf;
    }
    return;
  }
  static thread_local std::vector<uint64_t> secs;
  sectors_of(g, secs);
  unsigned widest = 0;
  for (const Lane& l : g.lanes) widest = std::max(widest, l.size);
  const uint64_t bytes = distinct_bytes(g);
  const bool reads = g.kind == Atomic || !g.write, writes = g.kind == Atomic || g.write;
  if (g.kind == Atomic) {
    o.gatom_req++;
    o.gatom_sectors += secs.size();
  } else if (g.write) {
    o.gst_req++;
    o.gst_bytes += bytes;
    o.gst_sectors += secs.size();
  } else if (g.kind == CpAsync) {
    o.cpasync_req++;
    o.cpasync_bytes += bytes;
    o.cpasync_sectors += secs.size();
  } else {
    o.gld_req++;
    o.gld_bytes += bytes;
    o.gld_sectors += secs.size();
    const unsigned idx = widest >= 16 ? 4 : widest >= 8 ? 3 : widest >= 4 ? 2 : widest >= 2 ? 1 : 0;
    o.gld_width[idx]++;
  }
  for (uint64_t s : secs) {
    if (reads) {
      for (auto& w : g_wave_reads) w.insert(s);
      g_reads.insert(s);
    }
    if (writes) g_writes.insert(s);
  }
}

// Closes wave i: counted when whole (or when the launch ran to its end: every wave is real),
// else only if no wave has been counted (the sample is smaller than one wave), flagged.
void close_wave(int i, bool launch_end) {
  KemuProfile& o = *g_out;
  const uint64_t full = o.wave * uint64_t(i + 1);
  const bool all_run = o.ctas_run == o.ctas_total;
  if (g_wave_ctas[i] > 0 && (all_run || g_wave_ctas[i] == full || full == 0)) {
    o.dram_read_sectors[i] += g_wave_reads[i].size();
    o.dram_wave_ctas[i] += g_wave_ctas[i];
  } else if (g_wave_ctas[i] > 0 && launch_end && o.dram_wave_ctas[i] == 0) {
    o.dram_read_sectors[i] += g_wave_reads[i].size();
    o.dram_wave_ctas[i] += g_wave_ctas[i];
    o.dram_partial |= 1ull << i;
  }
  g_wave_reads[i].clear();
  g_wave_ctas[i] = 0;
}
}  // namespace

void begin_launch(KemuProfile* out, unsigned threads_per_cta) {
  g_out = out;
  // The inputs stay; every count starts at zero.
  const uint64_t max_ctas = out->max_ctas, wave = out->wave, total = out->ctas_total;
  *out = KemuProfile{};
  out->max_ctas = max_ctas;
  out->wave = wave;
  out->ctas_total = total;
  g_out->threads_per_cta = threads_per_cta;
  g_groups.clear();
  for (int i = 0; i < KEMU_WAVES; ++i) {
    g_wave_reads[i].clear();
    g_wave_id[i] = 0;
    g_wave_ctas[i] = 0;
  }
  g_reads.clear();
  g_writes.clear();
}

void begin_block(uint64_t linear_cta) {
  g_seen.clear();
  g_groups.clear();
  for (int i = 0; i < KEMU_WAVES; ++i) {
    const uint64_t wave = g_out->wave ? linear_cta / (g_out->wave * (i + 1)) : 0;
    if (wave != g_wave_id[i]) {
      close_wave(i, false);
      g_wave_id[i] = wave;
    }
    g_wave_ctas[i]++;
  }
  g_out->ctas_run++;
}

void access(unsigned thread, int space, int kind, bool write, uintptr_t pc, const void* p, size_t n) {
  if (!g_out || n == 0) return;
  unsigned& seen = g_seen[uint64_t(pc) << 10 | thread];
  Group& g = g_groups[Key{pc, thread / 32, seen++}];
  if (g.lanes.empty()) {
    g.space = space;
    g.kind = kind;
    g.write = write;
  }
  g.lanes.push_back(Lane{thread & 31u, reinterpret_cast<uintptr_t>(p), unsigned(n)});
}

void flush() {
  if (!g_out) return;
  for (auto& [_, g] : g_groups) score(g);
  g_groups.clear();
}

void end_launch() {
  if (!g_out) return;
  flush();
  for (int i = 0; i < KEMU_WAVES; ++i) close_wave(i, true);
  g_out->unique_read_sectors = g_reads.size();
  g_out->unique_write_sectors = g_writes.size();
  g_reads.clear();
  g_writes.clear();
  g_out = nullptr;
}
}  // namespace kemu::prof
