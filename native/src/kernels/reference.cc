// The reference kernel: plain scalar C++, the oracle the other kernels are tested
// against. It performs the same table rounding as the vector kernels, so they agree
// to float rounding; its distance from the exact product is the documented LUT error.
#include <algorithm>
#include <cmath>

#include "kernels/kernel.h"
#include "kernels/pack.h"

namespace edgepet {
namespace {

// The signed sum of one quad for table index idx, added in a fixed order
// (((a0 a1) a2) a3) that the vector kernels reproduce exactly.
float signed_sum(const float* a4, int idx) {
  float t = (idx & 1) ? a4[0] : -a4[0];
  t += (idx & 2) ? a4[1] : -a4[1];
  t += (idx & 4) ? a4[2] : -a4[2];
  t += (idx & 8) ? a4[3] : -a4[3];
  return t;
}

void build_tables(const float* a, int64_t k, int block, int8_t* entries, float* block_scales,
                  float* block_sums) {
  const int64_t quads = num_quads(k);
  const int64_t block_quads = block / kQuad;
  for (int64_t b = 0; b < num_blocks(k, block); ++b) {
    const int64_t q0 = b * block_quads;
    const int64_t q1 = std::min(quads, q0 + block_quads);
    float a4[kQuad];
    float largest = 0.0f;
    float sum = 0.0f;
    for (int64_t q = q0; q < q1; ++q) {
      for (int l = 0; l < kQuad; ++l) a4[l] = q * kQuad + l < k ? a[q * kQuad + l] : 0.0f;
      // The largest |entry|: all signs agreeing with the activations' signs.
      const float magnitude = ((std::fabs(a4[0]) + std::fabs(a4[1])) + std::fabs(a4[2])) +
                              std::fabs(a4[3]);
      largest = std::max(largest, magnitude);
      sum += signed_sum(a4, 15);
    }
    const float inv = largest > 0.0f ? 127.0f / largest : 0.0f;
    block_scales[b] = largest / 127.0f;
    block_sums[b] = sum;
    for (int64_t q = q0; q < q1; ++q) {
      for (int l = 0; l < kQuad; ++l) a4[l] = q * kQuad + l < k ? a[q * kQuad + l] : 0.0f;
      for (int idx = 0; idx < kTableSize; ++idx) {
        entries[q * kTableSize + idx] =
            static_cast<int8_t>(std::nearbyint(signed_sum(a4, idx) * inv));
      }
    }
  }
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
        group_acc += static_cast<float>(plane_sum) * tables.block_scales[b];
      }
      const int64_t at = g * kTileRows + row;
      const float z = job.zero_points ? half_to_float(job.zero_points[at]) : 0.0f;
      const GroupAffine aff = group_affine(f, half_to_float(job.scales[at]), z);
      y += aff.sc * group_acc + aff.off * tables.group_sums[g];
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
