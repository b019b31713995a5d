// The x86 tile driver shared by the AVX2 and AVX-512 kernels: everything after the
// int16 block sums (their float conversion, group scales, zero points) is the same
// for both; only the lookups differ. Include from files compiled with AVX2, FMA and F16C.
#pragma once

#include <immintrin.h>

#include <algorithm>

#include "kernels/kernel.h"

namespace edgepet {
namespace x86 {

inline __m256 low_rows(__m256i acc) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(acc)));
}
inline __m256 high_rows(__m256i acc) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(acc, 1)));
}

// Eight fp16 scales or zero points as floats (F16C).
inline __m256 load_halves(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// The epilogue's rule (kernel.h, group_affine) as a template parameter: each instance's
// group loop holds only its own format's values. With the format tested per group, the
// 1-bit AVX2 loop kept its output accumulators on the stack (a store and reload per group).
enum class Affine { kSymmetric, kZeroLevel, kTernary, kAsymmetric };

// Sums::block<Bits, Rows>(codes, tables, quads, acc_a, acc_b) fills int16 sums of
// one block for the tile's 32 rows: acc_a[m] rows 0..15, acc_b[m] rows 16..31.
template <class Sums, int Bits, int Rows, Affine kAffine>
void tile_dot(const TileJob& job) {
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 mid = _mm256_set1_ps(0.5f * static_cast<float>((1 << Bits) - 1));
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
      __m256i acc_a[Rows], acc_b[Rows];
      const uint8_t* codes = job.codes + q0 / 2 * pair_stride(Bits);
      const int8_t* tables[Rows];
      for (int m = 0; m < Rows; ++m) tables[m] = job.tables[m].entries + q0 * kTableSize;
      if (n == kMaxBlockQuads) {  // a constant count for the common case
        Sums::template block<Bits, Rows>(codes, tables, kMaxBlockQuads, acc_a, acc_b);
      } else {
        Sums::template block<Bits, Rows>(codes, tables, n, acc_a, acc_b);
      }
      for (int m = 0; m < Rows; ++m) {
        const __m256 step = _mm256_set1_ps(job.tables[m].block_scales[b]);
        acc[m][0] = _mm256_fmadd_ps(low_rows(acc_a[m]), step, acc[m][0]);
        acc[m][1] = _mm256_fmadd_ps(high_rows(acc_a[m]), step, acc[m][1]);
        acc[m][2] = _mm256_fmadd_ps(low_rows(acc_b[m]), step, acc[m][2]);
        acc[m][3] = _mm256_fmadd_ps(high_rows(acc_b[m]), step, acc[m][3]);
      }
    }
    const Half* s = job.scales + g * kTileRows;
    for (int i = 0; i < 4; ++i) {
      const __m256 scale = load_halves(s + 8 * i);
      const __m256 sc = _mm256_mul_ps(half, scale);  // all but the odd symmetric levels
      for (int m = 0; m < Rows; ++m) {
        const __m256 group_sum = _mm256_set1_ps(job.tables[m].group_sums[g]);
        // Rows whose codes are all the base code add their exact value (kernel.h).
        const auto is_base = [&] {
          return _mm256_cmp_ps(acc[m][i], _mm256_set1_ps(job.tables[m].base_acc[g]), _CMP_EQ_OQ);
        };
        if constexpr (kAffine == Affine::kTernary) {
          // off = sc; the base code is the zero weight, which adds 0
#ifdef __AVX512VL__
          // The rows that are not all zero weights as a mask register, and one fused
          // multiply-add under it: three operations where the AVX2 form takes four
          // (NEQ_UQ is EQ_OQ negated: a NaN row is not a base row either way).
          const __mmask8 live = _mm256_cmp_ps_mask(
              acc[m][i], _mm256_set1_ps(job.tables[m].base_acc[g]), _CMP_NEQ_UQ);
          y[m][i] = _mm256_mask3_fmadd_ps(sc, _mm256_add_ps(acc[m][i], group_sum), y[m][i], live);
#else
          const __m256 rule = _mm256_andnot_ps(is_base(), _mm256_add_ps(acc[m][i], group_sum));
          y[m][i] = _mm256_fmadd_ps(sc, rule, y[m][i]);
#endif
        } else if constexpr (kAffine == Affine::kSymmetric) {
          y[m][i] = _mm256_fmadd_ps(scale, acc[m][i], y[m][i]);
        } else if constexpr (kAffine == Affine::kZeroLevel) {
          // sc = s/2, off = -s/2 (kernel.h, group_affine); no base code
          y[m][i] = _mm256_fmadd_ps(sc, _mm256_sub_ps(acc[m][i], group_sum), y[m][i]);
        } else {
          const __m256 z = load_halves(job.zero_points + g * kTileRows + 8 * i);
          const __m256 off = _mm256_mul_ps(scale, _mm256_sub_ps(mid, z));
          const __m256 rule =
              _mm256_add_ps(_mm256_mul_ps(sc, acc[m][i]), _mm256_mul_ps(off, group_sum));
          const __m256 base = is_base();
          if (_mm256_testz_ps(base, base)) {  // the common case: no base-code row
            y[m][i] = _mm256_add_ps(y[m][i], rule);
          } else {
            const __m256 exact = _mm256_mul_ps(_mm256_mul_ps(scale, z),
                                               _mm256_set1_ps(-job.tables[m].group_sums[g]));
            y[m][i] = _mm256_add_ps(y[m][i], _mm256_blendv_ps(rule, exact, base));
          }
        }
      }
    }
  }
  for (int m = 0; m < Rows; ++m)
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(job.out[m] + 8 * i, y[m][i]);
}

template <class Sums, int Bits, int Rows>
void tile_dot_affine(const TileJob& job) {
  if (job.format.ternary) return tile_dot<Sums, Bits, Rows, Affine::kTernary>(job);
  // Zero-level codes have 2 bits or more: no 1-bit instance (its extra code cost the 1-bit
  // M = 32 product 12 % on a Zen 4 core, the compiler inlining less of the unit).
  if constexpr (Bits >= 2) {
    if (job.format.zero_level) return tile_dot<Sums, Bits, Rows, Affine::kZeroLevel>(job);
  }
  if (job.format.symmetric) return tile_dot<Sums, Bits, Rows, Affine::kSymmetric>(job);
  return tile_dot<Sums, Bits, Rows, Affine::kAsymmetric>(job);
}

// Two activation rows share the unpacked codes where Sums says that measured faster;
// otherwise the rows are taken one at a time.
template <class Sums, int Bits>
void tile_dot_bits(const TileJob& job) {
  static_assert(kMaxRowsPerCall == 2, "tile_dot_bits handles 1 or 2 activation rows");
  if constexpr (Sums::template shares_rows<Bits>()) {
    if (job.rows == 2) return tile_dot_affine<Sums, Bits, 2>(job);
  }
  for (int m = 0; m < job.rows; ++m) {
    TileJob one = job;
    one.rows = 1;
    one.tables[0] = job.tables[m];
    one.out[0] = job.out[m];
    tile_dot_affine<Sums, Bits, 1>(one);
  }
}

// 1 and 2 bits and ternary: lut_gemm hands 3- and 4-bit formats to dot4_gemm (dot4.h).
template <class Sums>
void tile_dot_any(const TileJob& job) {
  return job.format.bits == 1 ? tile_dot_bits<Sums, 1>(job) : tile_dot_bits<Sums, 2>(job);
}

}  // namespace x86
}  // namespace edgepet
