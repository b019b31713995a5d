// The LUT product driver: tables for every activation row, then tiles in parallel.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "kernels/kernel.h"

namespace edgepet {

// A parallel-for supplied by the caller: ONNX Runtime's intra-op pool inside the
// op, edgepet's own pool in the Python module. Runs fn(ctx, i) for i in [0, total).
class Parallel {
 public:
  virtual ~Parallel() = default;
  virtual void run(int64_t total, void (*fn)(void* ctx, int64_t i), void* ctx) const = 0;
  // Whether run always runs on the calling thread alone.
  virtual bool serial() const { return false; }
};

// Runs everything on the calling thread.
class Serial final : public Parallel {
 public:
  void run(int64_t total, void (*fn)(void*, int64_t), void* ctx) const override {
    for (int64_t i = 0; i < total; ++i) fn(ctx, i);
  }
  bool serial() const override { return true; }
};

struct GemmArgs {
  WeightFormat format;
  const float* a = nullptr;            // [m][k]
  int64_t m = 0;
  const uint8_t* codes = nullptr;      // packed_bytes(format)
  const Half* scales = nullptr;        // fp16, [tiles][groups][32] (scale_count)
  const Half* zero_points = nullptr;   // fp16, same layout, or null
  const float* bias = nullptr;         // [n] or null
  float* y = nullptr;                  // [m][n]
  // Whether the codes lie in huge pages (place_in_huge_pages): the dot kernels then ask
  // for symmetric 4-bit codes of groups of 64 or more no longer ahead (Dot4Job::prefetch).
  bool codes_in_huge_pages = false;
};

// Empty when the format is valid, else what is wrong (for error messages): bits, N, K
// and group_size, including sizes that would not fit the size arithmetic.
std::string check_format(const WeightFormat& f);

// The shape of one operand as a caller received it; present = false for an absent one.
struct OperandShape {
  bool present = false;
  std::vector<int64_t> dims;
};

// The weight operands of a product, as the ONNX Runtime op and the Python module receive
// them: W (packed codes, [packed_bytes]), scales and zero points ([tiles, groups, 32]),
// bias ([N]).
struct Operands {
  OperandShape codes, scales, zero_points, bias;
};

// Empty when the format is valid (check_format) and the operands fit it, else what is
// wrong, naming the operand: the one check both callers use.
std::string check_operands(const WeightFormat& f, const Operands& operands);

// Single-thread nanoseconds a product of this format and row count is expected to take:
// per 1000 weights and activation row, as measured on one Zen 4 core at M = 1 (tables or
// activation quantization included; docs/operator.md "Per-call cost and threads").
double estimated_ns(const WeightFormat& f, int64_t m);

// Below this estimate a product runs on the calling thread whatever Parallel it is given:
// waking a pool worker and waiting for it at the end costs ~0.7 us through ONNX Runtime's
// pool, as much as the second core saves on this much work (docs/operator.md).
constexpr double kParallelMinNs = 2500.0;

// Activation rows per work item of a product that splits its rows among the threads
// (uses_row_blocks): an item builds its rows' tables (or int8 activations) and runs every
// tile for them, so those stay in the cache of the core that built them. A multiple of
// both drivers' rows per kernel call, so rows pair up the same way either way.
constexpr int64_t kRowBlock = 4;
// Whether a product splits its rows among the threads instead of its tiles: from 4 blocks
// of rows, for weights of at most 1 MB (L2-sized; every item reads all of them). Split by
// tiles, each tile read every row's tables, half of them built on the other core: M = 32
// on SmolLM2-135M's projections, two threads, split by rows took 0.79-0.98x the time
// (576 -> 192 2-bit 0.0301 -> 0.0239 ms; alternating A B B A runs, quiet machine), one
// thread 1.00x; 4096 x 4096 (4 MB at 2 bits) split by rows took 0.97-1.10x, so large
// weights stay split by tiles. M = 12 (3 blocks on two threads) ran
// 1.11x slower than split by tiles in one run, inside this VM's +-10 % noise; fewer blocks
// than threads would leave some idle (docs/operator.md).
inline bool uses_row_blocks(const WeightFormat& f, int64_t m) {
  return m >= 4 * kRowBlock && packed_bytes(f) <= (int64_t{1} << 20);
}

// Block `block` of a product split by rows, for both drivers: prepare(row) builds a row's
// tables (or int8 activations), then tile(t, r0, r1) runs every tile t for rows [r0, r1).
template <class Prepare, class Tile>
void run_rows(int64_t m, int64_t tiles, int64_t block, const Prepare& prepare, const Tile& tile) {
  const int64_t r0 = block * kRowBlock, r1 = std::min(m, r0 + kRowBlock);
  for (int64_t row = r0; row < r1; ++row) prepare(row);
  for (int64_t t = 0; t < tiles; ++t) tile(t, r0, r1);
}

// Y = A . dequant(W)^T (+ bias); 3- and 4-bit non-ternary formats, and 2-bit and ternary
// prefill where uses_dot_prefill says so, go to dot4_gemm. The output does not depend on
// the Parallel given or on how many threads it runs.
void lut_gemm(const Kernel& kernel, const GemmArgs& args, const Parallel& parallel);

// One step of a wait that polls: the CPU's spin-wait hint (pause, yield), which frees the
// core's shared resources for its sibling and costs 26 ns on the Zen 4 VM measured.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Whether a product at M = 1 has each thread of its tile region prepare the activations
// (the LUT tables, the dot path's int8 activations) itself, into its own memory, once per
// call, instead of building them together (ChunkedPrep). Together, a thread waits for the
// chunks the others build and reads them from the other core's cache; alone, it repeats
// work that is short for a short K (576 inputs: ~0.4 us). Through ORT at two threads,
// alone took 0.91-0.98x the time on SmolLM2-135M's shapes at 2, 3 and 4 bits and ternary
// (quiet Zen 4 VM; 0.73-0.90x when the second core was slow to answer), one thread 1.00x;
// SmolLM2 2-bit decode at two threads 201 -> 220 tok/s. At K = 2048 products alone in L3
// gained too (0.94-0.98x) but the Llama-3.2-1B stack streaming from memory (K = 2048 and
// 8192) lost 3-4 % at two threads, and the repeated work grows with K and with the thread
// count (only two threads measured here): beyond 1536 they are built together
// (docs/operator.md).
constexpr int64_t kPrivatePrepMaxK = 1536;
inline bool uses_private_prep(const WeightFormat& f) { return f.k <= kPrivatePrepMaxK; }

// A number unlike any earlier one: marks per-thread state that belongs to one call.
uint64_t next_call_id();

// One thread's own copy of what a call prepares (M = 1 with uses_private_prep; 2-bit tiles
// unpacked for every row block, dot4_gemm.cc), kept in a thread_local between calls: made
// in its scratch and built once per call id.
template <class Scratch, class Prepared>
struct OwnPrep {
  Scratch scratch;
  Prepared prepared;  // in scratch
  uint64_t call = 0;  // the call it was built for

  // make(scratch) places a Prepared in the scratch, build(prepared) fills it.
  template <class Make, class Build>
  const Prepared& for_call(uint64_t id, const Make& make, const Build& build) {
    if (call != id) {
      prepared = make(scratch);
      build(prepared);
      call = id;
    }
    return prepared;
  }
};

// What a product at M = 1 prepares before any tile can run (the LUT path's tables, the
// dot path's int8 activations), in chunks of whole groups that the threads of the tile
// region build before their first tile: a worker that wakes while the caller is still
// preparing takes chunks too, instead of waiting for the caller to finish alone. A
// chunk's bytes do not depend on which thread builds it. A thread waits only for
// chunks another thread has claimed and is building, so some thread always progresses.
class ChunkedPrep {
 public:
  // Chunks of about kInputs activations (whole groups) over `groups` groups of
  // `group_size` inputs.
  static constexpr int64_t kInputs = 256;
  ChunkedPrep(int64_t groups, int64_t group_size)
      : groups_(groups),
        chunk_groups_(std::max<int64_t>(1, kInputs / group_size)),
        chunks_(ceil_div(groups, chunk_groups_)) {}

  bool done() const { return built_.load(std::memory_order_acquire) >= chunks_; }

  // Builds unclaimed chunks, build(g0, g1) for groups [g0, g1), then waits for the rest.
  template <class Build>
  void help(const Build& build) {
    for (int64_t c = next_.fetch_add(1, std::memory_order_relaxed); c < chunks_;
         c = next_.fetch_add(1, std::memory_order_relaxed)) {
      build(c * chunk_groups_, std::min(groups_, (c + 1) * chunk_groups_));
      built_.fetch_add(1, std::memory_order_release);
    }
    for (int spins = 0; !done(); ++spins) {
      // A chunk takes well under a microsecond; a builder that lost its core does not,
      // so after 4096 pauses (0.1-0.7 ms: a pause measured 26 ns on one Zen 4 VM host and
      // ~165 ns on another) this yields.
      if (spins < 4096) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  int64_t groups_, chunk_groups_, chunks_;
  std::atomic<int64_t> next_{0};   // the next chunk to claim
  std::atomic<int64_t> built_{0};  // chunks built
};

// Per-call working memory of the product drivers (lut_gemm, dot4_gemm): kept per calling
// thread and grown, never shrunk, so a call of the same shape as the last allocates nothing.
template <typename T>
T* grown(std::vector<T>& buffer, int64_t count) {
  if (buffer.size() < static_cast<size_t>(count)) buffer.resize(static_cast<size_t>(count));
  return buffer.data();
}

// The kernels this CPU and build can run, best first; the reference is last.
std::vector<const Kernel*> available_kernels();

// The best kernel for this CPU ("auto"), or the one named ("avx512", "avx2", "neon",
// "reference"); null if unknown or unsupported here. EDGEPET_KERNEL in the
// environment overrides "auto".
const Kernel* select_kernel(const std::string& name = "auto");

}  // namespace edgepet
