// The x86 driver of the 4-bit dot kernels (dot4.h), shared by AVX2 and AVX-512 VNNI:
// everything after a block's int32 sums (the step, group scales, zero points, base
// rows) is the same for both; only the integer dot products differ. Include from files
// compiled with AVX2, FMA and F16C.
#pragma once

#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "kernels/dot4.h"

namespace edgepet {
namespace x86_dot4 {

// Eight fp16 scales or zero points as floats (F16C).
inline __m256 load_halves(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// 4 input codes of one row times 4 int8 activations, as the 32-bit lane every row gets.
inline int32_t four_activations(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}

// Sums::block<Rows>(codes, x, quads, dots) fills dots[m][i], the int32 sums
// sum_k q_k x_k of one block for rows 8i..8i+7 against activation row m.
// Sums::kRows: activation rows it takes per pass over the codes.
template <class Sums, int Rows>
void tile_dot(const Dot4Job& job) {
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 mid = _mm256_set1_ps(7.5f);
  __m256 y[Rows][4];
  for (int m = 0; m < Rows; ++m)
    for (int i = 0; i < 4; ++i) y[m][i] = _mm256_setzero_ps();
  for (int64_t g = 0; g < plan.groups; ++g) {
    __m256 acc[Rows][4];
    for (int m = 0; m < Rows; ++m)
      for (int i = 0; i < 4; ++i) acc[m][i] = _mm256_setzero_ps();
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      const int64_t q0 = plan.first_quad(b);
      const int n = plan.quads_in(b);
      const uint8_t* codes = job.codes + q0 * kDot4QuadBytes;
      const int8_t* x[Rows];
      for (int m = 0; m < Rows; ++m) x[m] = job.acts[m].x + q0 * kQuad;
      __m256i dots[Rows][4];
      if (n == kMaxBlockQuads) {  // a constant count for the common case
        Sums::template block<Rows>(codes, x, kMaxBlockQuads, dots);
      } else {
        Sums::template block<Rows>(codes, x, n, dots);
      }
      for (int m = 0; m < Rows; ++m) {
        const __m256 two_steps = _mm256_set1_ps(2.0f * job.acts[m].steps[b]);
        for (int i = 0; i < 4; ++i) {
          acc[m][i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots[m][i]), two_steps, acc[m][i]);
        }
      }
    }
    // The group's plane sum: the dots plus -15 sum(x) step per block (dot4.h).
    for (int m = 0; m < Rows; ++m)
      for (int i = 0; i < 4; ++i)
        acc[m][i] = _mm256_add_ps(acc[m][i], _mm256_set1_ps(job.acts[m].base_acc[g]));
    const Half* s = job.scales + g * kTileRows;
    for (int i = 0; i < 4; ++i) {
      const __m256 scale = load_halves(s + 8 * i);
      if (f.symmetric) {
        for (int m = 0; m < Rows; ++m) y[m][i] = _mm256_fmadd_ps(scale, acc[m][i], y[m][i]);
        continue;
      }
      const __m256 z = load_halves(job.zero_points + g * kTileRows + 8 * i);
      const __m256 off = _mm256_mul_ps(scale, _mm256_sub_ps(mid, z));
      const __m256 sc = _mm256_mul_ps(half, scale);
      for (int m = 0; m < Rows; ++m) {
        const float group_sum = job.acts[m].group_sums[g];
        const __m256 rule = _mm256_add_ps(_mm256_mul_ps(sc, acc[m][i]),
                                          _mm256_mul_ps(off, _mm256_set1_ps(group_sum)));
        // Rows whose codes are all zero (the base code) add their exact value (kernel.h).
        const __m256 base =
            _mm256_cmp_ps(acc[m][i], _mm256_set1_ps(job.acts[m].base_acc[g]), _CMP_EQ_OQ);
        if (_mm256_testz_ps(base, base)) {  // the common case: no base-code row
          y[m][i] = _mm256_add_ps(y[m][i], rule);
        } else {
          const __m256 exact = _mm256_mul_ps(_mm256_mul_ps(scale, z), _mm256_set1_ps(-group_sum));
          y[m][i] = _mm256_add_ps(y[m][i], _mm256_blendv_ps(rule, exact, base));
        }
      }
    }
  }
  for (int m = 0; m < Rows; ++m)
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(job.out[m] + 8 * i, y[m][i]);
}

// Activation rows in passes of Sums::kRows (then 2, then 1) over the tile's codes.
template <class Sums>
void tile_dot_rows(const Dot4Job& job) {
  int m = 0;
  const auto pass = [&job, &m](auto rows) {
    constexpr int kRows = decltype(rows)::value;
    Dot4Job part = job;
    part.rows = kRows;
    for (int i = 0; i < kRows; ++i) {
      part.acts[i] = job.acts[m + i];
      part.out[i] = job.out[m + i];
    }
    tile_dot<Sums, kRows>(part);
    m += kRows;
  };
  if constexpr (Sums::kRows >= 4) {
    while (job.rows - m >= 4) pass(std::integral_constant<int, 4>());
  }
  if constexpr (Sums::kRows >= 2) {
    while (job.rows - m >= 2) pass(std::integral_constant<int, 2>());
  }
  while (m < job.rows) pass(std::integral_constant<int, 1>());
}

}  // namespace x86_dot4
}  // namespace edgepet
