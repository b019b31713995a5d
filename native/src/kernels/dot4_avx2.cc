// 3- and 4-bit dot kernel, AVX2 (dot4.h): maddubs multiplies 32 codes (unsigned) by 32
// int8 activations and adds pairs to int16; madd with ones widens to int32 per row. For
// CPUs without AVX512-VNNI.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/dot4.h"

namespace edgepet {
namespace {

// 4 input codes of one row times 4 int8 activations, as the 32-bit lane every row gets.
inline int32_t four_activations(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, sizeof(v));
  return v;
}

// Eight lanes of floats, for the driver and epilogue (dot4.h).
struct V8 {
  using F = __m256;
  using I = __m256i;
  using Mask = __m256;
  static constexpr int kLanes = 8;
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  // F16C
  static F load_halves(const Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static Mask eq(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static bool none(Mask m) { return _mm256_testz_ps(m, m); }
  static F blend(Mask m, F if_false, F if_true) { return _mm256_blendv_ps(if_false, if_true, m); }
};

int32_t round_block(const float* a, int n, float inv, int8_t* x) {
  const __m256 scale = _mm256_set1_ps(inv);
  __m256i sums = _mm256_setzero_si256();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    // cvtps rounds to nearest even (the default MXCSR mode), as nearbyint does.
    const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(a + i), scale));
    sums = _mm256_add_epi32(sums, v);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(x + i), _mm_packs_epi16(w, w));
  }
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  int32_t sum = _mm_cvtsi128_si32(s);
  for (; i < n; ++i) {
    x[i] = static_cast<int8_t>(_mm_cvtss_si32(_mm_set_ss(a[i] * inv)));
    sum += x[i];
  }
  return sum;
}

// maddubs sums of 32 codes (unsigned, < 16) times 32 int8 activations in int16 pairs,
// widened to int32 per row with madd: sums[i] holds rows 8i..8i+7.
inline void widen(const __m256i sums[4], __m256i dots[4]) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < 4; ++i) dots[i] = _mm256_add_epi32(dots[i], _mm256_madd_epi16(sums[i], ones));
}

// 4 bits: the two 32-byte halves of a quad, low and high nibbles; widened every 8 quads
// (8 * 2 * 15 * 127 fits int16).
struct Nibbles {
  static constexpr int kRows = 1;  // the int16 and int32 sums of two rows spill
  static int64_t code_offset(int64_t q0) { return dot4::nibble4_offset(q0); }

  template <int Rows>
  __attribute__((always_inline)) static void block(const uint8_t* codes,
                                                   const int8_t* const* x, int quads,
                                                   __m256i dots[][4], bool prefetch) {
    static_assert(Rows == 1, "one activation row per pass");
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < 4; ++i) dots[0][i] = _mm256_setzero_si256();
    for (int q0 = 0; q0 < quads; q0 += 8) {
      __m256i sums[4];  // int16: rows 0-7, 8-15, 16-23, 24-31, pairs of inputs
      for (auto& v : sums) v = _mm256_setzero_si256();
      const int q_end = std::min(quads, q0 + 8);
#pragma GCC unroll 2
      for (int q = q0; q < q_end; ++q) {
        const uint8_t* c = codes + q * kDot4QuadBytes;
        if (prefetch) prefetch_codes(c, kDot4QuadBytes);
        const __m256i act = _mm256_set1_epi32(four_activations(x[0] + q * kQuad));
        for (int h = 0; h < 2; ++h) {
          const __m256i v = in_register(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32 * h)));
          const __m256i lo = _mm256_and_si256(v, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          sums[h] = _mm256_add_epi16(sums[h], _mm256_maddubs_epi16(lo, act));
          sums[2 + h] = _mm256_add_epi16(sums[2 + h], _mm256_maddubs_epi16(hi, act));
        }
      }
      widen(sums, dots[0]);
    }
  }
};

// 3 bits: a quartet's three 64-byte vectors (dot4.h), a 32-byte half at a time; a whole
// block stays in int16 (16 quads * 2 * 7 * 127 fits).
struct Triples {
  static constexpr int kRows = 1;
  static int64_t code_offset(int64_t q0) { return dot4::dot3_offset(q0); }

  template <int Rows>
  __attribute__((always_inline)) static void block(const uint8_t* codes,
                                                   const int8_t* const* x, int quads,
                                                   __m256i dots[][4], bool prefetch) {
    static_assert(Rows == 1, "one activation row per pass");
    const __m256i low3 = _mm256_set1_epi8(0x07);
    const __m256i top2 = _mm256_set1_epi8(static_cast<char>(0xC0));
    const __m256i mid2 = _mm256_set1_epi8(0x30), bits32 = _mm256_set1_epi8(0x0C);
    __m256i sums[4];
    for (auto& v : sums) v = _mm256_setzero_si256();
    for (int q = 0; q < quads; q += kDot3Quads, codes += kDot3QuartetBytes) {
      if (prefetch) prefetch_codes(codes, kDot3QuartetBytes);
      __m256i act[4];
      for (int j = 0; j < 4; ++j) act[j] = _mm256_set1_epi32(four_activations(x[0] + (q + j) * kQuad));
      for (int h = 0; h < 2; ++h) {
        __m256i v[3];
        for (int j = 0; j < 3; ++j) {
          v[j] = in_register(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 64 * j + 32 * h)));
          const __m256i lo = _mm256_and_si256(v[j], low3);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v[j], 3), low3);
          sums[h] = _mm256_add_epi16(sums[h], _mm256_maddubs_epi16(lo, act[j]));
          sums[2 + h] = _mm256_add_epi16(sums[2 + h], _mm256_maddubs_epi16(hi, act[j]));
        }
        // Quad 3's pair values, times 4: bits 7:6 from V2, 5:4 from V1, 3:2 from V0.
        const __m256i u = _mm256_or_si256(
            _mm256_or_si256(_mm256_and_si256(v[2], top2),
                            _mm256_and_si256(_mm256_srli_epi16(v[1], 2), mid2)),
            _mm256_and_si256(_mm256_srli_epi16(v[0], 4), bits32));
        const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(u, 2), low3);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(u, 5), low3);
        sums[h] = _mm256_add_epi16(sums[h], _mm256_maddubs_epi16(lo, act[3]));
        sums[2 + h] = _mm256_add_epi16(sums[2 + h], _mm256_maddubs_epi16(hi, act[3]));
      }
    }
    for (int i = 0; i < 4; ++i) dots[0][i] = _mm256_setzero_si256();
    widen(sums, dots[0]);
  }
};

}  // namespace

const Dot4Kernel* avx2_dot4_kernel() {
  static const Dot4Kernel kernel{"avx2", round_block, dot4::tile_dot_rows<V8, Nibbles>,
                                 dot4::tile_dot_rows<V8, Triples>,
                                 nullptr};  // 2-bit prefill stays on the LUT path (dot4.h)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return &kernel;
  }
  return nullptr;
}

}  // namespace edgepet
