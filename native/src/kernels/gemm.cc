#include "kernels/gemm.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels/dot4.h"

namespace edgepet {

std::string check_format(const WeightFormat& f) {
  if (f.bits < 1 || f.bits > 4) {
    return "bits=" + std::to_string(f.bits) +
           " is not supported (1, 2, 3, 4; ternary is bits=2 with ternary=1)";
  }
  if (f.ternary && f.bits != 2) return "ternary weights are stored with bits=2";
  if (f.zero_level && (f.ternary || !f.symmetric || f.bits < 2)) {
    return "zero_level=1 is for symmetric 2-, 3- and 4-bit codes (symmetric=1, ternary=0, "
           "no zero_points); bits=" + std::to_string(f.bits) +
           (f.ternary ? ", ternary=1" : "") + (f.symmetric ? "" : ", symmetric=0");
  }
  if (f.n <= 0 || f.k <= 0) {
    return "N=" + std::to_string(f.n) + " and K=" + std::to_string(f.k) + " must be positive";
  }
  if (f.n > kMaxDimension || f.k > kMaxDimension) {
    return "N=" + std::to_string(f.n) + ", K=" + std::to_string(f.k) + ": at most " +
           std::to_string(kMaxDimension) + " each";
  }
  if (f.group_size <= 0) return "group_size=" + std::to_string(f.group_size) + " must be positive";
  if (f.group_size < f.k && f.group_size % kMinBlockK != 0) {
    return "group_size=" + std::to_string(f.group_size) + " must be a multiple of " +
           std::to_string(kMinBlockK) + " or at least K=" + std::to_string(f.k);
  }
  return {};
}

namespace {

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string out = "[";
  for (size_t i = 0; i < dims.size(); ++i) out += (i ? ", " : "") + std::to_string(dims[i]);
  return out + "]";
}

std::string check_dims(const char* name, const OperandShape& got,
                       const std::vector<int64_t>& want, const std::string& why) {
  return std::string(name) + " has shape " + dims_str(got.dims) + ", expected " +
         dims_str(want) + " (" + why + ")";
}

}  // namespace

std::string check_operands(const WeightFormat& f, const Operands& o) {
  const std::string bad = check_format(f);
  if (!bad.empty()) return bad;
  // Messages are built only on failure: the op checks per call where weights are inputs.
  const auto sizes = [&f] {
    return "K=" + std::to_string(f.k) + ", N=" + std::to_string(f.n) +
           ", group_size=" + std::to_string(f.group_size);
  };
  const std::vector<int64_t> tiled = {num_tiles(f.n), num_groups(f), kTileRows};
  if (!o.codes.present) return "W (the packed codes) is missing";
  if (!o.scales.present) return "scales are missing";
  if (o.codes.dims != std::vector<int64_t>{packed_bytes(f)}) {
    return check_dims("W", o.codes, {packed_bytes(f)},
                      "layout tile32, bits=" + std::to_string(f.bits) + ", " + sizes());
  }
  if (o.scales.dims != tiled) return check_dims("scales", o.scales, tiled, sizes());
  if (!f.symmetric && !o.zero_points.present) {
    return "zero_points are required for asymmetric codes (symmetric=0)";
  }
  if (f.symmetric && o.zero_points.present) {
    return "zero_points given, but the codes are symmetric (symmetric=1 or ternary=1)";
  }
  if (o.zero_points.present && o.zero_points.dims != tiled) {
    return check_dims("zero_points", o.zero_points, tiled, sizes());
  }
  if (o.bias.present && o.bias.dims != std::vector<int64_t>{f.n}) {
    return check_dims("bias", o.bias, {f.n}, "N=" + std::to_string(f.n));
  }
  return {};
}

namespace {

// Per-call working memory (see grown in gemm.h).
struct Scratch {
  std::vector<int8_t> entries;        // [m][quads][16]
  std::vector<float> block_scales;    // [m][blocks]
  std::vector<float> block_sums;      // [m][blocks]
  std::vector<float> group_sums;      // [m][groups]
  std::vector<float> base_acc;        // [m][groups]
};

// Where the tables of m activation rows live: the call's, or one thread's own (M = 1
// with uses_private_prep).
struct RowTables {
  RowTables() = default;
  RowTables(Scratch& s, const BlockPlan& plan, int64_t m)
      : entries(grown(s.entries, m * plan.quads * kTableSize)),
        block_scales(grown(s.block_scales, m * plan.blocks)),
        block_sums(grown(s.block_sums, m * plan.blocks)),
        group_sums(grown(s.group_sums, m * plan.groups)),
        base_acc(grown(s.base_acc, m * plan.groups)) {}

  int8_t* entries = nullptr;
  float* block_scales = nullptr;
  float* block_sums = nullptr;
  float* group_sums = nullptr;
  float* base_acc = nullptr;
};

struct Job {
  Job(const Kernel& k, const GemmArgs& a, Scratch& s)
      : kernel(&k),
        args(&a),
        plan(a.format),
        tables(s, plan, a.m),
        row0(plan.groups, a.format.group_size) {}

  const Kernel* kernel;
  const GemmArgs* args;
  BlockPlan plan;
  RowTables tables;
  ChunkedPrep row0;  // row 0's tables at M = 1, built in the tile region
  uint64_t id = 0;   // this call, for threads' own tables (M = 1, uses_private_prep)
};

// Tables of groups [g0, g1) of one activation row: the entries, block scales and sums
// of their blocks, then each group's sum and base accumulator. Blocks nest in groups,
// so a range of whole groups builds the same bytes as the whole row does.
void build_groups(const Job& job, const RowTables& tables, int64_t row, int64_t g0, int64_t g1) {
  const WeightFormat& f = job.args->format;
  const BlockPlan& plan = job.plan;
  const int block = table_block(f);
  const int64_t b0 = plan.first_block(g0);
  const int64_t k0 = b0 * block;
  const int64_t k1 = std::min(f.k, plan.end_block(g1 - 1) * block);
  float* sums = tables.block_sums + row * plan.blocks;
  const float* steps = tables.block_scales + row * plan.blocks;
  const int8_t* entries = tables.entries + row * plan.quads * kTableSize;
  job.kernel->build_tables(job.args->a + row * f.k + k0, k1 - k0, block,
                           tables.entries + (row * plan.quads + plan.first_quad(b0)) * kTableSize,
                           tables.block_scales + row * plan.blocks + b0, sums + b0);
  const bool base = has_base_code(f);
  for (int64_t g = g0; g < g1; ++g) {
    float s = 0.0f;
    float acc = 0.0f;
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      s += sums[b];
      if (!base) continue;
      // What a kernel accumulates for a row of base codes: its plane sum is
      // base_plane_factor times the block's int8 quad sums (entry 15), and the kernels
      // accumulate plane sum x step with one fused multiply-add per block.
      int32_t quad_sums = 0;
      const int64_t q_end = plan.first_quad(b) + plan.quads_in(b);
      for (int64_t q = plan.first_quad(b); q < q_end; ++q) {
        quad_sums += entries[q * kTableSize + 15];
      }
      acc = std::fma(static_cast<float>(base_plane_factor(f) * quad_sums), steps[b], acc);
    }
    tables.group_sums[row * plan.groups + g] = s;
    tables.base_acc[row * plan.groups + g] = acc;
  }
}

void build_row(void* ctx, int64_t row) {
  const Job& job = *static_cast<const Job*>(ctx);
  build_groups(job, job.tables, row, 0, job.plan.groups);
}

// Tile `tile` of activation rows [r0, r1) (r0 a multiple of kMaxRowsPerCall, so that rows
// pair up the same way whatever the split).
void tile_rows(const Job& job, const RowTables& tables, int64_t tile, int64_t r0, int64_t r1) {
  const GemmArgs& args = *job.args;
  const WeightFormat& f = args.format;
  const int64_t n0 = tile * kTileRows;
  const int rows = static_cast<int>(std::min<int64_t>(kTileRows, f.n - n0));
  TileJob t;
  t.format = f;
  t.codes = args.codes + tile * job.plan.quads / 2 * pair_stride(f.bits);
  const int64_t tile_scales = tile * job.plan.groups * kTileRows;
  t.scales = args.scales + tile_scales;
  t.zero_points = args.zero_points ? args.zero_points + tile_scales : nullptr;
  // A full tile writes its 32 outputs in place; the last, short one goes through a copy.
  alignas(32) float out[kMaxRowsPerCall][kTileRows];
  for (int64_t m0 = r0; m0 < r1; m0 += kMaxRowsPerCall) {
    t.rows = static_cast<int>(std::min<int64_t>(kMaxRowsPerCall, r1 - m0));
    for (int i = 0; i < t.rows; ++i) {
      const int64_t m = m0 + i;
      t.tables[i].entries = tables.entries + m * job.plan.quads * kTableSize;
      t.tables[i].block_scales = tables.block_scales + m * job.plan.blocks;
      t.tables[i].group_sums = tables.group_sums + m * job.plan.groups;
      t.tables[i].base_acc = tables.base_acc + m * job.plan.groups;
      t.out[i] = rows == kTileRows ? args.y + m * f.n + n0 : out[i];
    }
    job.kernel->tile_dot(t);
    for (int i = 0; i < t.rows; ++i) {
      float* y = args.y + (m0 + i) * f.n + n0;
      if (rows < kTileRows) std::copy(out[i], out[i] + rows, y);
      if (args.bias) {
        for (int r = 0; r < rows; ++r) y[r] += args.bias[n0 + r];
      }
    }
  }
}

void run_tile(void* ctx, int64_t tile) {
  const Job& job = *static_cast<const Job*>(ctx);
  tile_rows(job, job.tables, tile, 0, job.args->m);
}

static_assert(kRowBlock % kMaxRowsPerCall == 0, "row blocks must pair rows as the whole does");

// Rows [kRowBlock * block, ...): their tables, then every tile for them.
void run_row_block(void* ctx, int64_t block) {
  const Job& job = *static_cast<const Job*>(ctx);
  run_rows(job.args->m, num_tiles(job.args->format.n), block,
           [&job](int64_t row) { build_groups(job, job.tables, row, 0, job.plan.groups); },
           [&job](int64_t t, int64_t r0, int64_t r1) { tile_rows(job, job.tables, t, r0, r1); });
}

// A tile of row 0 once its tables are built (M = 1), by the threads together.
void run_tile_one_row(void* ctx, int64_t tile) {
  Job& job = *static_cast<Job*>(ctx);
  if (!job.row0.done()) {
    job.row0.help([&job](int64_t g0, int64_t g1) { build_groups(job, job.tables, 0, g0, g1); });
  }
  run_tile(ctx, tile);
}

// A tile of row 0 on tables this thread built itself, once per call (uses_private_prep).
void run_tile_own_tables(void* ctx, int64_t tile) {
  const Job& job = *static_cast<const Job*>(ctx);
  thread_local OwnPrep<Scratch, RowTables> own;
  const RowTables& tables = own.for_call(
      job.id, [&job](Scratch& s) { return RowTables(s, job.plan, 1); },
      [&job](const RowTables& t) { build_groups(job, t, 0, 0, job.plan.groups); });
  tile_rows(job, tables, tile, 0, 1);
}

}  // namespace

uint64_t next_call_id() {
  static std::atomic<uint64_t> calls{0};
  return ++calls;
}

double estimated_ns(const WeightFormat& f, int64_t m) {
  // bench_kernels 1 576 1536 64 (avx512+avx2) on a 2-core AMD EPYC Zen 4: 6.1, 7.7, 8.5
  // and 8.8 us for 1, 2, 4 bits and ternary (885 k weights), rounded up; 3 bits on the dot
  // path (tile32-dot3) 9.3-9.8 us.
  double per_k_weights = 7.0;
  if (f.ternary) {
    per_k_weights = 10.0;
  } else if (f.bits == 2) {
    per_k_weights = 9.0;
  } else if (f.bits == 3) {
    per_k_weights = 11.0;
  } else if (f.bits == 4) {
    per_k_weights = 10.0;
  }
  // In floating point: M * N * K may exceed int64 for a large batch.
  return per_k_weights * 1e-3 * static_cast<double>(m) * static_cast<double>(f.n) *
         static_cast<double>(f.k);
}

void lut_gemm(const Kernel& kernel, const GemmArgs& args, const Parallel& pool) {
  const WeightFormat& f = args.format;
  static const Serial serial;
  const Parallel& parallel = estimated_ns(f, args.m) < kParallelMinNs ? serial : pool;
  if (uses_dot4(f)) return dot4_gemm(dot4_kernel_for(kernel), args, parallel);
  if (f.bits == 2 && args.m >= kDotPrefillRows) {  // decode (M = 1) skips the lookup below
    const Dot4Kernel& dot = dot4_kernel_for(kernel);
    if (uses_dot_prefill(f, args.m, dot)) return dot4_gemm(dot, args, parallel);
  }
  if (args.m == 0) return;
  thread_local Scratch scratch;
  Job job(kernel, args, scratch);
  if (args.m == 1) {
    // One region: its threads build the tables, then take tiles.
    if (uses_private_prep(f) && !parallel.serial()) {
      job.id = next_call_id();
      parallel.run(num_tiles(f.n), run_tile_own_tables, &job);
    } else {
      parallel.run(num_tiles(f.n), run_tile_one_row, &job);
    }
    return;
  }
  if (uses_row_blocks(f, args.m)) {
    parallel.run(ceil_div(args.m, kRowBlock), run_row_block, &job);
    return;
  }
  parallel.run(args.m, build_row, &job);
  parallel.run(num_tiles(f.n), run_tile, &job);
}

}  // namespace edgepet
