// The 4-bit dot path in plain scalar C++: the oracle the vector dot kernels are tested
// against (dot4.h). Same integer sums, same fused multiply-adds per block, same epilogue
// rule as the LUT reference, so the vector kernels agree with it to float rounding.
#include <cmath>

#include "kernels/dot4.h"

namespace edgepet {
namespace {

void round_block(const float* a, int n, float inv, int8_t* x) {
  for (int i = 0; i < n; ++i) x[i] = static_cast<int8_t>(std::nearbyint(a[i] * inv));
}

void tile_dot_one(const Dot4Job& job, const Dot4Activations& act, float* out) {
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  for (int row = 0; row < kTileRows; ++row) {
    float y = 0.0f;
    for (int64_t g = 0; g < plan.groups; ++g) {
      float group_acc = 0.0f;
      for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
        const int64_t first = plan.first_quad(b) * kQuad;
        const int64_t end = first + plan.quads_in(b) * kQuad;
        int32_t dot = 0;
        for (int64_t i = first; i < end; ++i) {
          const Dot4Address at = dot4_address(row, i);
          dot += ((job.codes[at.byte] >> at.shift) & 0xF) * act.x[i];
        }
        group_acc = std::fma(static_cast<float>(dot), 2.0f * act.steps[b], group_acc);
      }
      group_acc += act.base_acc[g];  // the -15 sum(x) part of the plane sum (dot4.h)
      const int64_t at = g * kTileRows + row;
      const float s = half_to_float(job.scales[at]);
      const float z = job.zero_points ? half_to_float(job.zero_points[at]) : 0.0f;
      const GroupAffine aff = group_affine(f, s, z);
      const float sum = act.group_sums[g];
      if (has_base_code(f) && group_acc == act.base_acc[g]) {
        y += s * (static_cast<float>(base_code(f)) - z) * sum;  // exact (kernel.h, base_code)
      } else {
        y += aff.sc * group_acc + aff.off * sum;
      }
    }
    out[row] = y;
  }
}

void tile_dot(const Dot4Job& job) {
  for (int m = 0; m < job.rows; ++m) tile_dot_one(job, job.acts[m], job.out[m]);
}

}  // namespace

const Dot4Kernel& reference_dot4_kernel() {
  static const Dot4Kernel kernel{"reference", round_block, tile_dot};
  return kernel;
}

}  // namespace edgepet
