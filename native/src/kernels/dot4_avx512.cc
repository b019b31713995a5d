// 4-bit dot kernel, AVX-512 VNNI (dot4.h): one 64-byte load is a quad of 4 inputs for
// all 32 rows; the low nibbles (rows 0..15) and the whole bytes each meet the 4
// activations broadcast to every lane in one vpdpbusd, and the high nibbles' sums
// (rows 16..31) follow from the difference. Up to 4 activation rows share each code
// vector (prefill). Sums, steps and the epilogue stay in 16-lane vectors throughout.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "kernels/dot4.h"

// GCC 12's AVX-512 intrinsics pass _mm*_undefined_*() as the merge source of
// unmasked forms, which -Wmaybe-uninitialized reports once inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

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

inline __m512i four_activations(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, sizeof(v));
  return _mm512_set1_epi32(v);
}

// Sixteen fp16 scales or zero points as floats.
inline __m512 load_halves(const Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// One quad: the low nibbles alone and the whole bytes (low + 16 x high) against the
// 4 activations in every lane.
template <int Rows>
__attribute__((always_inline)) inline void quad(const uint8_t* c, const int8_t* const* x,
                                                __m512i* lo, __m512i* all) {
  const __m512i v = _mm512_loadu_si512(c);
  const __m512i low = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
  for (int m = 0; m < Rows; ++m) {
    const __m512i act = four_activations(x[m]);
    lo[m] = _mm512_dpbusd_epi32(lo[m], low, act);
    all[m] = _mm512_dpbusd_epi32(all[m], v, act);
  }
}

// acc[m][0] (rows 0..15) and acc[m][1] (rows 16..31) += dot * 2 step for one block.
template <int Rows>
__attribute__((always_inline)) inline void block(const uint8_t* codes, const int8_t* const* x_in,
                                                 int quads, const float* two_steps,
                                                 __m512 acc[][2]) {
  // One row alone keeps two sets of accumulators (even and odd quads; quads is even) so
  // that vpdpbusd's latency stays hidden.
  constexpr int kChains = Rows == 1 ? 2 : 1;
  __m512i lo[kChains][Rows], all[kChains][Rows];
  const int8_t* x[Rows];
  for (int m = 0; m < Rows; ++m) {
    x[m] = x_in[m];
    for (int u = 0; u < kChains; ++u) lo[u][m] = all[u][m] = _mm512_setzero_si512();
  }
  for (int q = 0; q < quads; q += 2, codes += 2 * kDot4QuadBytes) {
    _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(codes) + kPrefetchBytes + 64, _MM_HINT_T0);
    for (int u = 0; u < 2; ++u) {
      quad<Rows>(codes + u * kDot4QuadBytes, x, lo[u % kChains], all[u % kChains]);
      for (int m = 0; m < Rows; ++m) x[m] += kQuad;
    }
  }
  for (int m = 0; m < Rows; ++m) {
    __m512i l = lo[0][m], a = all[0][m];
    if (kChains == 2) {
      l = _mm512_add_epi32(l, lo[kChains - 1][m]);
      a = _mm512_add_epi32(a, all[kChains - 1][m]);
    }
    const __m512i h = _mm512_srai_epi32(_mm512_sub_epi32(a, l), 4);  // exact: 16 x the dot
    const __m512 step2 = _mm512_set1_ps(two_steps[m]);
    acc[m][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(l), step2, acc[m][0]);
    acc[m][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(h), step2, acc[m][1]);
  }
}

template <int Rows>
void tile_dot(const Dot4Job& job) {
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512 mid = _mm512_set1_ps(7.5f);
  __m512 y[Rows][2];
  for (int m = 0; m < Rows; ++m) y[m][0] = y[m][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < plan.groups; ++g) {
    __m512 acc[Rows][2];
    for (int m = 0; m < Rows; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      const int64_t q0 = plan.first_quad(b);
      const int n = plan.quads_in(b);
      const uint8_t* codes = job.codes + q0 * kDot4QuadBytes;
      const int8_t* x[Rows];
      float two_steps[Rows];
      for (int m = 0; m < Rows; ++m) {
        x[m] = job.acts[m].x + q0 * kQuad;
        two_steps[m] = 2.0f * job.acts[m].steps[b];
      }
      if (n == kMaxBlockQuads) {  // a constant count for the common case
        block<Rows>(codes, x, kMaxBlockQuads, two_steps, acc);
      } else {
        block<Rows>(codes, x, n, two_steps, acc);
      }
    }
    const Half* s = job.scales + g * kTileRows;
    for (int i = 0; i < 2; ++i) {
      const __m512 scale = load_halves(s + 16 * i);
      __m512 z, off, sc;
      if (!f.symmetric) {
        z = load_halves(job.zero_points + g * kTileRows + 16 * i);
        off = _mm512_mul_ps(scale, _mm512_sub_ps(mid, z));
        sc = _mm512_mul_ps(half, scale);
      }
      for (int m = 0; m < Rows; ++m) {
        // The group's plane sum: the dots plus -15 sum(x) step per block (dot4.h).
        const __m512 base_acc = _mm512_set1_ps(job.acts[m].base_acc[g]);
        const __m512 plane = _mm512_add_ps(acc[m][i], base_acc);
        if (f.symmetric) {
          y[m][i] = _mm512_fmadd_ps(scale, plane, y[m][i]);
          continue;
        }
        const float group_sum = job.acts[m].group_sums[g];
        const __m512 rule =
            _mm512_add_ps(_mm512_mul_ps(sc, plane), _mm512_mul_ps(off, _mm512_set1_ps(group_sum)));
        // Rows whose codes are all zero (the base code) add their exact value (kernel.h).
        const __mmask16 base = _mm512_cmp_ps_mask(plane, base_acc, _CMP_EQ_OQ);
        if (base == 0) {  // the common case: no base-code row
          y[m][i] = _mm512_add_ps(y[m][i], rule);
        } else {
          const __m512 exact = _mm512_mul_ps(_mm512_mul_ps(scale, z), _mm512_set1_ps(-group_sum));
          y[m][i] = _mm512_add_ps(y[m][i], _mm512_mask_blend_ps(base, rule, exact));
        }
      }
    }
  }
  for (int m = 0; m < Rows; ++m) {
    _mm512_storeu_ps(job.out[m], y[m][0]);
    _mm512_storeu_ps(job.out[m] + 16, y[m][1]);
  }
}

// Activation rows in passes of 4, then 2, then 1 over the tile's codes.
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
    tile_dot<kRows>(part);
    m += kRows;
  };
  while (job.rows - m >= 4) pass(std::integral_constant<int, 4>());
  while (job.rows - m >= 2) pass(std::integral_constant<int, 2>());
  while (m < job.rows) pass(std::integral_constant<int, 1>());
}

}  // namespace

const Dot4Kernel* avx512_vnni_dot4_kernel() {
  static const Dot4Kernel kernel{"avx512", round_block, tile_dot_rows};
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
      avx2_dot4_kernel()) {
    return &kernel;
  }
  return nullptr;
}

}  // namespace edgepet
