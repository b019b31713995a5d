// 4-bit dot kernel, AVX2 (dot4.h): maddubs multiplies 32 nibble codes (unsigned) by
// 32 int8 activations and adds pairs to int16; madd with ones widens to int32 per row
// every 8 quads (8 * 2 * 15 * 127 fits int16). For CPUs without AVX512-VNNI.
#include <immintrin.h>

#include "kernels/dot4.h"
#include "kernels/dot4_x86.h"

namespace edgepet {
namespace {

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
        const __m256i act = _mm256_set1_epi32(x86_dot4::four_activations(x[0] + q * kQuad));
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
  static const Dot4Kernel kernel{"avx2", round_block, x86_dot4::tile_dot_rows<Avx2Dots>};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return &kernel;
  }
  return nullptr;
}

}  // namespace edgepet
