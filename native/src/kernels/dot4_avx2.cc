// 4-bit dot kernel, AVX2 (dot4.h): maddubs multiplies 32 nibble codes (unsigned) by
// 32 int8 activations and adds pairs to int16; madd with ones widens to int32 per row
// every 8 quads (8 * 2 * 15 * 127 fits int16). For CPUs without AVX512-VNNI.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "kernels/dot4.h"

namespace edgepet {
namespace {

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

// The driver, after a block's int32 dots: steps, group scales, zero points, base rows.
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


void round_block(const float* a, int n, float inv, int8_t* x) {
  const __m256 scale = _mm256_set1_ps(inv);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    // cvtps rounds to nearest even (the default MXCSR mode), as nearbyint does.
    const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + i), scale));
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(x + i), _mm_packs_epi16(w, w));
  }
  for (; i < n; ++i) x[i] = static_cast<int8_t>(_mm_cvtss_si32(_mm_set_ss(a[i] * inv)));
}

struct Avx2Dots {
  static constexpr int kRows = 1;  // the int16 and int32 sums of two rows spill

  template <int Rows>
  __attribute__((always_inline)) static void block(const uint8_t* codes,
                                                   const int8_t* const* x, int quads,
                                                   __m256i dots[][4]) {
    static_assert(Rows == 1, "one activation row per pass");
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int i = 0; i < 4; ++i) dots[0][i] = _mm256_setzero_si256();
    for (int q0 = 0; q0 < quads; q0 += 8) {
      __m256i sums[4];  // int16: rows 0-7, 8-15, 16-23, 24-31, pairs of inputs
      for (auto& v : sums) v = _mm256_setzero_si256();
      const int q_end = std::min(quads, q0 + 8);
#pragma GCC unroll 2
      for (int q = q0; q < q_end; ++q) {
        const uint8_t* c = codes + q * kDot4QuadBytes;
        _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
        const __m256i act = _mm256_set1_epi32(four_activations(x[0] + q * kQuad));
        for (int h = 0; h < 2; ++h) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32 * h));
          const __m256i lo = _mm256_and_si256(v, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          sums[h] = _mm256_add_epi16(sums[h], _mm256_maddubs_epi16(lo, act));
          sums[2 + h] = _mm256_add_epi16(sums[2 + h], _mm256_maddubs_epi16(hi, act));
        }
      }
      for (int i = 0; i < 4; ++i) {
        dots[0][i] = _mm256_add_epi32(dots[0][i], _mm256_madd_epi16(sums[i], ones));
      }
    }
  }
};

}  // namespace

const Dot4Kernel* avx2_dot4_kernel() {
  static const Dot4Kernel kernel{"avx2", round_block, tile_dot_rows<Avx2Dots>};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return &kernel;
  }
  return nullptr;
}

}  // namespace edgepet
