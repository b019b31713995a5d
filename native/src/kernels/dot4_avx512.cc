// 4-bit dot kernel, AVX-512 VNNI (dot4.h): one 64-byte load is a quad of 4 inputs for
// all 32 rows; the low nibbles (rows 0..15) and the high nibbles, masked in place
// (rows 16..31, 16 x their codes), each meet the 4 activations broadcast to every lane
// in one vpdpbusd. Several accumulators per row hide vpdpbusd's latency; up to 4
// activation rows share each unpacked code vector (prefill).
#include <immintrin.h>

#include "kernels/dot4.h"

// GCC 12's AVX-512 intrinsics pass _mm*_undefined_*() as the merge source of
// unmasked forms, which -Wmaybe-uninitialized reports once inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/dot4_x86.h"

namespace edgepet {
namespace {

void round_block(const float* a, int n, float inv, int8_t* x) {
  const __m512 scale = _mm512_set1_ps(inv);
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    // cvtps rounds to nearest even (the default MXCSR mode), as nearbyint does; every
    // value is within [-127, 127], so the saturating narrowing is exact.
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(a + i), scale));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x + i), _mm512_cvtsepi32_epi8(v));
  }
  for (; i < n; ++i) x[i] = static_cast<int8_t>(_mm_cvtss_si32(_mm_set_ss(a[i] * inv)));
}

struct VnniDots {
  static constexpr int kRows = 4;

  template <int Rows>
  __attribute__((always_inline)) static void block(const uint8_t* codes,
                                                   const int8_t* const* x, int quads,
                                                   __m256i dots[][4]) {
    // Independent accumulators: 8 chains of vpdpbusd in flight whatever the row count.
    constexpr int kChains = Rows >= 4 ? 1 : 4 / Rows;
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m512i lo[kChains][Rows], hi[kChains][Rows];
    for (int u = 0; u < kChains; ++u)
      for (int m = 0; m < Rows; ++m) lo[u][m] = hi[u][m] = _mm512_setzero_si512();
    for (int q = 0; q < quads; q += kChains) {
      for (int u = 0; u < kChains && q + u < quads; ++u) {
        const uint8_t* c = codes + (q + u) * kDot4QuadBytes;
        _mm_prefetch(reinterpret_cast<const char*>(c) + kPrefetchBytes, _MM_HINT_T0);
        const __m512i v = _mm512_loadu_si512(c);
        const __m512i low = _mm512_and_si512(v, low4);
        const __m512i high = _mm512_andnot_si512(low4, v);  // 16 x the code
        for (int m = 0; m < Rows; ++m) {
          const __m512i act = _mm512_set1_epi32(x86_dot4::four_activations(x[m] + (q + u) * kQuad));
          lo[u][m] = _mm512_dpbusd_epi32(lo[u][m], low, act);
          hi[u][m] = _mm512_dpbusd_epi32(hi[u][m], high, act);
        }
      }
    }
    for (int m = 0; m < Rows; ++m) {
      __m512i l = lo[0][m], h = hi[0][m];
      for (int u = 1; u < kChains; ++u) {
        l = _mm512_add_epi32(l, lo[u][m]);
        h = _mm512_add_epi32(h, hi[u][m]);
      }
      h = _mm512_srai_epi32(h, 4);  // exact: a sum of multiples of 16
      dots[m][0] = _mm512_castsi512_si256(l);
      dots[m][1] = _mm512_extracti64x4_epi64(l, 1);
      dots[m][2] = _mm512_castsi512_si256(h);
      dots[m][3] = _mm512_extracti64x4_epi64(h, 1);
    }
  }
};

}  // namespace

const Dot4Kernel* avx512_vnni_dot4_kernel() {
  static const Dot4Kernel kernel{"avx512", round_block, x86_dot4::tile_dot_rows<VnniDots>};
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
      avx2_dot4_kernel()) {
    return &kernel;
  }
  return nullptr;
}

}  // namespace edgepet
