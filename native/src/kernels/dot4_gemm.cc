// The 3- and 4-bit product driver (dot4.h): int8 activations for every row, then tiles
// in parallel. The LUT driver (gemm.cc, lut_gemm) hands the formats of uses_dot4 here, and
// 2-bit and ternary prefill (uses_dot_prefill), whose tiles are unpacked to nibbles first.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels/dot4.h"
#include "kernels/gemm.h"

namespace edgepet {
namespace {

// Per-call working memory (see grown in gemm.h).
struct Dot4Scratch {
  std::vector<int8_t> x;          // [m][dot_padded_k]
  std::vector<float> steps;       // [m][blocks]
  std::vector<int32_t> x_sums;    // [m][blocks]
  std::vector<float> block_sums;  // [m][blocks]
  std::vector<float> group_sums;  // [m][groups]
  std::vector<float> base_acc;    // [m][groups]
  std::vector<float> ternary_ones;  // [m][groups], ternary only
};

// A 64-byte aligned buffer of `bytes` in `buffer` (grown): the kernels load 64 bytes at a
// time, as ONNX Runtime aligns the codes of the other widths.
uint8_t* aligned64(std::vector<uint8_t>& buffer, int64_t bytes) {
  uint8_t* p = grown(buffer, bytes + 64);
  return p + (64 - reinterpret_cast<uintptr_t>(p) % 64) % 64;
}

// Where the int8 activations of m rows and their sums live: the call's, or one thread's
// own (M = 1 with uses_private_prep).
struct Dot4Rows {
  Dot4Rows() = default;
  Dot4Rows(Dot4Scratch& s, const BlockPlan& plan, int64_t width, int64_t m, bool ternary)
      : x(grown(s.x, m * width)),
        steps(grown(s.steps, m * plan.blocks)),
        x_sums(grown(s.x_sums, m * plan.blocks)),
        block_sums(grown(s.block_sums, m * plan.blocks)),
        group_sums(grown(s.group_sums, m * plan.groups)),
        base_acc(grown(s.base_acc, m * plan.groups)),
        ternary_ones(ternary ? grown(s.ternary_ones, m * plan.groups) : nullptr) {}

  int8_t* x = nullptr;
  float* steps = nullptr;
  int32_t* x_sums = nullptr;
  float* block_sums = nullptr;
  float* group_sums = nullptr;
  float* base_acc = nullptr;
  float* ternary_ones = nullptr;  // null unless ternary
};

struct Dot4Call {
  Dot4Call(const Dot4Kernel& k, const GemmArgs& a, Dot4Scratch& s)
      : kernel(&k),
        args(&a),
        plan(a.format),
        width(dot_padded_k(a.format)),
        rows(s, plan, width, a.m, a.format.ternary),
        row0(plan.groups, a.format.group_size) {}

  Dot4Activations row(const Dot4Rows& r, int64_t m) const {
    const int64_t g = m * plan.groups;
    return {r.x + m * width, r.steps + m * plan.blocks, r.group_sums + g, r.base_acc + g,
            r.ternary_ones ? r.ternary_ones + g : nullptr};
  }

  const Dot4Kernel* kernel;
  const GemmArgs* args;
  BlockPlan plan;
  int64_t width;  // K padded as the codes are (dot_padded_k)
  Dot4Rows rows;
  bool unpack_all = false;  // 2-bit codes split by rows: each thread unpacks every tile
  uint64_t id = 0;          // this call (for unpack_all and threads' own activations)
  ChunkedPrep row0;  // row 0's activations at M = 1, quantized in the tile region
};

// Activations of groups [g0, g1) of row m quantized, with their blocks' steps and sums
// and the groups' sums and base accumulators. Blocks nest in groups, so a range of whole
// groups writes the same bytes as the whole row does.
void quantize_groups(const Dot4Call& call, const Dot4Rows& rows, int64_t m, int64_t g0,
                     int64_t g1) {
  const WeightFormat& f = call.args->format;
  const BlockPlan& plan = call.plan;
  const float* a = call.args->a + m * f.k;
  int8_t* x = rows.x + m * call.width;
  float* sums = rows.block_sums + m * plan.blocks;
  int32_t* x_sums = rows.x_sums + m * plan.blocks;
  float* steps = rows.steps + m * plan.blocks;
  const int block = table_block(f);
  const int top = (1 << f.bits) - 1;  // the plane sum's offset per code (dot4.h)
  for (int64_t b = plan.first_block(g0); b < plan.end_block(g1 - 1); ++b) {
    const int64_t first = b * block;
    const int n = static_cast<int>(std::min<int64_t>(f.k - first, block));
    // The last block's zeros run to the end of the padded row.
    const int64_t padded = b + 1 == plan.blocks ? call.width - first : block;
    dot4::quantize_block(*call.kernel, a + first, n, x + first, steps + b, sums + b, x_sums + b);
    std::fill(x + first + n, x + first + padded, int8_t{0});
  }
  for (int64_t g = g0; g < g1; ++g) {
    float s = 0.0f, acc = 0.0f;
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      s += sums[b];
      acc = std::fma(static_cast<float>(-top * x_sums[b]), steps[b], acc);
    }
    rows.group_sums[m * plan.groups + g] = s;
    rows.base_acc[m * plan.groups + g] = acc;
    if (!f.ternary) continue;
    // A row of ternary zeros (code 1) dots to sum(x) per block, accumulated as the kernels
    // do (dot4::tile_dot, whose step_factor is 1 for ternary).
    float ones = 0.0f;
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      ones = std::fma(static_cast<float>(x_sums[b]), steps[b], ones);
    }
    rows.ternary_ones[m * plan.groups + g] = ones;
  }
}

void quantize_row(void* ctx, int64_t m) {
  const Dot4Call& call = *static_cast<Dot4Call*>(ctx);
  quantize_groups(call, call.rows, m, 0, call.plan.groups);
}

// A tile's 2-bit planes as nibble codes (dot_tile_bytes of them) at `out`, and for ternary
// codes its ZeroRows at `zero_rows` ([groups]; null for 2-bit codes).
void unpack_tile(const Dot4Call& call, int64_t tile, uint8_t* out, uint32_t* zero_rows) {
  const WeightFormat& f = call.args->format;
  const int64_t quads = call.plan.quads;
  ZeroRows zero;
  if (f.ternary) {
    zero.rows = zero_rows;
    zero.k = f.k;
    zero.group_quads = call.plan.per_group * call.plan.block_quads;
  }
  call.kernel->unpack2(call.args->codes + tile * quads / 2 * pair_stride(2), quads, out, zero);
}

// Where job's codes (and for ternary, its ZeroRows) come from: in place, or for 2-bit
// planes unpacked by this thread (unpack2) into its own buffer: every tile once per call
// where each row block reads every tile (unpack_all; unpacked once for all threads, half
// of what a core read had been written by the other core, and M = 32 on SmolLM2-135M's
// projections at two threads gained nothing over the LUT path, against 0.77-0.98x its time
// this way), else this tile alone.
void set_codes(const Dot4Call& call, int64_t tile, Dot4Job& job) {
  const WeightFormat& f = call.args->format;
  const int64_t tile_bytes = dot_tile_bytes(f), groups = call.plan.groups;
  job.zero_rows = nullptr;
  if (!unpacks_planes(f)) {
    job.codes = call.args->codes + tile * tile_bytes;
    return;
  }
  if (call.unpack_all) {
    struct All {
      std::vector<uint8_t> codes;
      std::vector<uint32_t> zero_rows;
    };
    struct Unpacked {
      uint8_t* codes = nullptr;
      uint32_t* zero_rows = nullptr;  // null unless ternary
    };
    thread_local OwnPrep<All, Unpacked> own;
    const int64_t tiles = num_tiles(f.n);
    const Unpacked& all = own.for_call(
        call.id,
        [&](All& s) {
          return Unpacked{aligned64(s.codes, tiles * tile_bytes),
                          f.ternary ? grown(s.zero_rows, tiles * groups) : nullptr};
        },
        [&](const Unpacked& u) {
          for (int64_t t = 0; t < tiles; ++t) {
            uint32_t* rows = u.zero_rows ? u.zero_rows + t * groups : nullptr;
            unpack_tile(call, t, u.codes + t * tile_bytes, rows);
          }
        });
    job.codes = all.codes + tile * tile_bytes;
    if (f.ternary) job.zero_rows = all.zero_rows + tile * groups;
    return;
  }
  thread_local std::vector<uint8_t> one;
  thread_local std::vector<uint32_t> one_zero_rows;
  uint8_t* unpacked = aligned64(one, tile_bytes);
  uint32_t* zero_rows = f.ternary ? grown(one_zero_rows, groups) : nullptr;
  unpack_tile(call, tile, unpacked, zero_rows);
  job.codes = unpacked;
  if (f.ternary) job.zero_rows = zero_rows;
}

// Whether the kernels ask for the codes ahead (Dot4Job::prefetch): everywhere but
// symmetric 4-bit codes of groups of 64 or more in huge pages, which the hardware
// prefetchers stream faster alone. Zen 4, one thread, weights streaming from memory in
// huge pages, time with the requests over time without: symmetric 4-bit group 64 1.07
// (SmolLM2-135M shapes) and 1.12 (Llama-3.2-1B shapes); symmetric group 32 0.94,
// asymmetric group 64 0.97, asymmetric group 32 0.76, 3-bit 0.83 (docs/operator.md,
// "Huge pages").
bool ask_ahead(const GemmArgs& args) {
  const WeightFormat& f = args.format;
  return !(args.codes_in_huge_pages && f.bits == 4 && f.symmetric && f.group_size >= 64);
}

// Tile `tile` of activation rows [r0, r1) (r0 a multiple of kDot4MaxRows, so that rows
// pass together the same way whatever the split).
void tile_rows(const Dot4Call& call, const Dot4Rows& acts, int64_t tile, int64_t r0,
               int64_t r1) {
  const GemmArgs& args = *call.args;
  const WeightFormat& f = args.format;
  const int64_t n0 = tile * kTileRows;
  const int rows = static_cast<int>(std::min<int64_t>(kTileRows, f.n - n0));
  Dot4Job job;
  job.format = f;
  set_codes(call, tile, job);
  const int64_t tile_scales = tile * call.plan.groups * kTileRows;
  job.scales = args.scales + tile_scales;
  job.prefetch = ask_ahead(args);
  job.zero_points = args.zero_points ? args.zero_points + tile_scales : nullptr;
  alignas(64) float out[kDot4MaxRows][kTileRows];
  for (int64_t m0 = r0; m0 < r1; m0 += kDot4MaxRows) {
    job.rows = static_cast<int>(std::min<int64_t>(kDot4MaxRows, r1 - m0));
    for (int i = 0; i < job.rows; ++i) {
      job.acts[i] = call.row(acts, m0 + i);
      job.out[i] = out[i];
    }
    (f.bits == 3 ? call.kernel->tile_dot3 : call.kernel->tile_dot)(job);
    for (int i = 0; i < job.rows; ++i) {
      float* y = args.y + (m0 + i) * f.n + n0;
      for (int r = 0; r < rows; ++r) y[r] = out[i][r] + (args.bias ? args.bias[n0 + r] : 0.0f);
    }
  }
}

void run_tile(void* ctx, int64_t tile) {
  const Dot4Call& call = *static_cast<const Dot4Call*>(ctx);
  tile_rows(call, call.rows, tile, 0, call.args->m);
}

static_assert(kRowBlock % kDot4MaxRows == 0, "row blocks must pass rows as the whole does");

// Rows [kRowBlock * block, ...): their activations quantized, then every tile for them.
void run_row_block(void* ctx, int64_t block) {
  const Dot4Call& call = *static_cast<const Dot4Call*>(ctx);
  run_rows(call.args->m, num_tiles(call.args->format.n), block,
           [&call](int64_t m) { quantize_groups(call, call.rows, m, 0, call.plan.groups); },
           [&call](int64_t t, int64_t r0, int64_t r1) { tile_rows(call, call.rows, t, r0, r1); });
}

// A tile of row 0 once its activations are quantized (M = 1), by the threads together.
void run_tile_one_row(void* ctx, int64_t tile) {
  Dot4Call& call = *static_cast<Dot4Call*>(ctx);
  if (!call.row0.done()) {
    call.row0.help(
        [&call](int64_t g0, int64_t g1) { quantize_groups(call, call.rows, 0, g0, g1); });
  }
  run_tile(ctx, tile);
}

// A tile of row 0 on activations this thread quantized itself, once per call
// (uses_private_prep).
void run_tile_own_rows(void* ctx, int64_t tile) {
  const Dot4Call& call = *static_cast<const Dot4Call*>(ctx);
  thread_local OwnPrep<Dot4Scratch, Dot4Rows> own;
  const Dot4Rows& rows = own.for_call(
      call.id,
      [&call](Dot4Scratch& s) {
        return Dot4Rows(s, call.plan, call.width, 1, call.args->format.ternary);
      },
      [&call](const Dot4Rows& r) { quantize_groups(call, r, 0, 0, call.plan.groups); });
  tile_rows(call, rows, tile, 0, 1);
}

}  // namespace

void dot4_gemm(const Dot4Kernel& kernel, const GemmArgs& args, const Parallel& parallel) {
  if (args.m == 0) return;
  thread_local Dot4Scratch scratch;
  Dot4Call call(kernel, args, scratch);
  if (args.m == 1) {
    // One region: its threads quantize the activations, then take tiles.
    if (uses_private_prep(args.format) && !parallel.serial()) {
      call.id = next_call_id();
      parallel.run(num_tiles(args.format.n), run_tile_own_rows, &call);
    } else {
      parallel.run(num_tiles(args.format.n), run_tile_one_row, &call);
    }
    return;
  }
  if (uses_row_blocks(args.format, args.m)) {
    if (unpacks_planes(args.format)) {
      call.unpack_all = true;
      call.id = next_call_id();
    }
    parallel.run(ceil_div(args.m, kRowBlock), run_row_block, &call);
    return;
  }
  parallel.run(args.m, quantize_row, &call);
  parallel.run(num_tiles(args.format.n), run_tile, &call);
}

}  // namespace edgepet
