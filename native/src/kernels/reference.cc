// The reference kernel: plain scalar C++, the oracle the other kernels are tested
// against. It performs the same table rounding as the vector kernels, so they agree
// to float rounding; its distance from the exact product is the documented LUT error.
#include <algorithm>
#include <cmath>

#include "kernels/kernel.h"
#include "kernels/pack.h"
#include "kernels/tables.h"

namespace edgepet {
namespace {

// Tables (tables.h) in plain scalar code: entry idx of a quad is the signed sum
// (bit l of idx ? +a_l : -a_l), added in the order (((a0 a1) a2) a3) that the vector
// kernels reproduce exactly.
struct ScalarOps {
  struct Half {
    float v[8];
  };

  Half half_table(const float* a4) const {
    Half h;
    for (int idx = 0; idx < 8; ++idx) {
      float t = (idx & 1) ? a4[0] : -a4[0];
      t += (idx & 2) ? a4[1] : -a4[1];
      t += (idx & 4) ? a4[2] : -a4[2];
      h.v[idx] = t - a4[3];
    }
    return h;
  }
  float entry0(const Half& h) const { return h.v[0]; }
  float largest(const Half* h, int n) const {
    float top = 0.0f;
    for (int i = 0; i < n; ++i)
      for (float v : h[i].v) top = std::max(top, std::fabs(v));
    return top;
  }
  void store(const Half& h, float inv, int8_t* out) const {
    for (int idx = 0; idx < 8; ++idx) {
      out[idx] = static_cast<int8_t>(std::nearbyint(h.v[idx] * inv));
      out[15 - idx] = static_cast<int8_t>(-out[idx]);
    }
  }
};

void build_tables(const float* a, int64_t k, int block, int8_t* entries, float* block_scales,
                  float* block_sums) {
  tables::build_tables(ScalarOps(), a, k, block, entries, block_scales, block_sums);
}

void tile_dot_one(const TileJob& job, const Tables& tables, float* out) {
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  const int64_t stride = pair_stride(f.bits);
  for (int row = 0; row < kTileRows; ++row) {
    float y = 0.0f;
    for (int64_t g = 0; g < plan.groups; ++g) {
      float group_acc = 0.0f;
      for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
        int32_t plane_sum = 0;
        const int64_t q_end = plan.first_quad(b) + plan.quads_in(b);
        for (int64_t q = plan.first_quad(b); q < q_end; ++q) {
          const int8_t* table = tables.entries + q * kTableSize;
          for (int plane = 0; plane < f.bits; ++plane) {
            const int idx = packed_index(job.codes + q / 2 * stride, f.bits, row, plane,
                                         static_cast<int>(q % 2));
            plane_sum += table[idx] * (1 << plane);
          }
        }
        // Fused, as in the vector kernels, so that base_acc (gemm.cc) matches exactly.
        group_acc = std::fma(static_cast<float>(plane_sum), tables.block_scales[b], group_acc);
      }
      const int64_t at = g * kTileRows + row;
      const float s = half_to_float(job.scales[at]);
      const float z = f.ternary       ? 1.0f
                      : job.zero_points ? half_to_float(job.zero_points[at])
                                        : 0.0f;
      const GroupAffine aff = group_affine(f, s, z);
      const float sum = tables.group_sums[g];
      if (has_base_code(f) && group_acc == tables.base_acc[g]) {
        y += s * (static_cast<float>(base_code(f)) - z) * sum;  // exact (kernel.h, base_code)
      } else {
        y += aff.sc * group_acc + aff.off * sum;
      }
    }
    out[row] = y;
  }
}

void tile_dot(const TileJob& job) {
  for (int m = 0; m < job.rows; ++m) tile_dot_one(job, job.tables[m], job.out[m]);
}

}  // namespace

const Kernel& reference_kernel() {
  static const Kernel kernel{"reference", build_tables, tile_dot};
  return kernel;
}

}  // namespace edgepet
