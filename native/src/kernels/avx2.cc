// AVX2 kernel: pshufb looks up 32 table indices at once, maddubs widens pairs of
// planes to int16 and weights them by their powers of two in the same instruction.
// Tables are built bit-identically to the reference kernel (same additions, same
// rounding), so the two agree to float rounding in the epilogue.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/kernel.h"
#include "kernels/pack.h"
#include "kernels/tables.h"
#include "kernels/x86_tile.h"

namespace edgepet {
namespace {

// Sign masks for table entries 0..7 (bit 3 clear: a3 enters negated): lane bit l
// of the entry index set means +a_l, clear means -a_l (xor with the sign bit).
inline __m256 sign_mask(int l) {
  alignas(32) int32_t m[8];
  for (int idx = 0; idx < 8; ++idx) m[idx] = (idx >> l) & 1 ? 0 : INT32_MIN;
  return _mm256_castsi256_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(m)));
}

// Entries 0..7 of one quad's table, summed in the reference order.
inline __m256 half_table(const float* a4, __m256 m0, __m256 m1, __m256 m2) {
  const __m256 t01 = _mm256_add_ps(_mm256_xor_ps(_mm256_broadcast_ss(a4 + 0), m0),
                                   _mm256_xor_ps(_mm256_broadcast_ss(a4 + 1), m1));
  const __m256 t012 = _mm256_add_ps(t01, _mm256_xor_ps(_mm256_broadcast_ss(a4 + 2), m2));
  return _mm256_sub_ps(t012, _mm256_broadcast_ss(a4 + 3));
}

// Round 8 entries to int8 and store all 16: entry 15 - j is minus entry j.
inline void store_table(__m256 half, __m256 inv, int8_t* out) {
  const __m256i i32 = _mm256_cvtps_epi32(_mm256_mul_ps(half, inv));
  const __m256i i8 = _mm256_packs_epi16(_mm256_packs_epi32(i32, i32), _mm256_setzero_si256());
  const __m128i low = _mm_unpacklo_epi32(_mm256_castsi256_si128(i8),
                                         _mm256_extracti128_si256(i8, 1));
  const __m128i reverse = _mm_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m128i mirrored = _mm_shuffle_epi8(_mm_sub_epi8(_mm_setzero_si128(), low), reverse);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi64(low, mirrored));
}

// store_table for two quads (32 bytes), with half the instructions: both quads' entries
// are packed together and negated as int16 (|entry| <= 127, so the packs never saturate
// and the bytes equal store_table's), then one dword permute and one byte shuffle put
// each quad's entries 0..7 and its mirrored negations 8..15 in order.
inline void store_table_pair(__m256 h0, __m256 h1, __m256 inv, int8_t* out) {
  const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(h0, inv));
  const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(h1, inv));
  // int16 lanes: [q0 e0-3, q1 e0-3 | q0 e4-7, q1 e4-7]
  const __m256i p16 = _mm256_packs_epi32(i0, i1);
  // dwords of 4 bytes: d0 q0 e0-3, d1 q1 e0-3, d2 -q0 e0-3, d3 -q1 e0-3, then e4-7 alike
  const __m256i p8 = _mm256_packs_epi16(p16, _mm256_sub_epi16(_mm256_setzero_si256(), p16));
  // quad 0: d0 d4 d6 d2, quad 1: d1 d5 d7 d3; then the negated dwords' bytes reversed
  const __m256i order = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 6, 2, 1, 5, 7, 3));
  const __m256i reverse = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 11, 10, 9, 8, 15, 14, 13, 12,
                                           0, 1, 2, 3, 4, 5, 6, 7, 11, 10, 9, 8, 15, 14, 13, 12);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_shuffle_epi8(order, reverse));
}

inline float horizontal_max(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  return _mm_cvtss_f32(m);
}

// Tables (tables.h) with 8 entries per vector: the sign masks are made once per call.
struct Avx2TableOps {
  using Half = __m256;
  const __m256 m0 = sign_mask(0), m1 = sign_mask(1), m2 = sign_mask(2);

  Half half_table(const float* a4) const { return edgepet::half_table(a4, m0, m1, m2); }
  float entry0(Half h) const { return _mm256_cvtss_f32(h); }
  float largest(const Half* h, int n) const {
    // Four running maxima (exact in any order): one would chain every vmaxps.
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 top[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    int i = 0;
    for (; i + 4 <= n; i += 4) {
      for (int j = 0; j < 4; ++j) top[j] = _mm256_max_ps(top[j], _mm256_and_ps(h[i + j], abs_mask));
    }
    for (; i < n; ++i) top[0] = _mm256_max_ps(top[0], _mm256_and_ps(h[i], abs_mask));
    return horizontal_max(_mm256_max_ps(_mm256_max_ps(top[0], top[1]), _mm256_max_ps(top[2], top[3])));
  }
  void store(Half h, float inv, int8_t* out) const {
    store_table(h, _mm256_set1_ps(inv), out);
  }
  void store_pair(Half h0, Half h1, float inv, int8_t* out) const {
    store_table_pair(h0, h1, _mm256_set1_ps(inv), out);
  }
};

void build_tables(const float* a, int64_t k, int block, int8_t* entries, float* block_scales,
                  float* block_sums) {
  tables::build_tables(Avx2TableOps(), a, k, block, entries, block_scales, block_sums);
}

// Sums of one block (an even number of quads, at most 16) for the tile's 32 rows
// against Rows activation rows, as int16: acc_a[m] holds rows 0..15, acc_b[m] 16..31.
// The codes are loaded and unpacked once for all activation rows. 1 to 3 bits: at most
// one pair stream (planes 0 and 1), then the single-plane stream of odd widths.
template <int Bits, int Rows>
__attribute__((always_inline)) inline void block_sums16(const uint8_t* codes,
                                                        const int8_t* const* tables_in,
                                                        int quads, __m256i* acc_a,
                                                        __m256i* acc_b) {
  static_assert(Bits >= 1 && Bits <= 2, "3- and 4-bit formats use the dot kernels (dot4.h)");
  constexpr int kPairs = Bits / 2;
  constexpr bool kSingle = Bits & 1;
  constexpr int kTop = Bits - 1;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i pair_weights = _mm256_set1_epi16(0x0201);  // planes 0 and 1
  const __m256i single_weights = _mm256_set1_epi8(static_cast<char>(1 << kTop));
  const __m256i odd_bytes = _mm256_set1_epi16(static_cast<int16_t>(0xFF00));
  const int8_t* tables[Rows];
  for (int m = 0; m < Rows; ++m) {
    tables[m] = tables_in[m];
    acc_a[m] = _mm256_setzero_si256();
    acc_b[m] = _mm256_setzero_si256();
  }
#pragma GCC unroll 2
  for (int q = 0; q < quads; q += 2, codes += pair_stride(Bits)) {
    prefetch_codes(codes, pair_stride(Bits));
    __m256i table[2][Rows];
    for (int p = 0; p < 2; ++p) {
      for (int m = 0; m < Rows; ++m) {
        table[p][m] = _mm256_broadcastsi128_si256(_mm_loadu_si128(
            reinterpret_cast<const __m128i*>(tables[m] + (q + p) * kTableSize)));
      }
      if (kPairs == 1) {
        const __m256i x = in_register(_mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(codes + pair_stream_offset(Bits, p, 0))));
        const __m256i lo = _mm256_and_si256(x, low4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
        for (int m = 0; m < Rows; ++m) {
          acc_a[m] = _mm256_add_epi16(
              acc_a[m],
              _mm256_maddubs_epi16(pair_weights, _mm256_shuffle_epi8(table[p][m], lo)));
          acc_b[m] = _mm256_add_epi16(
              acc_b[m],
              _mm256_maddubs_epi16(pair_weights, _mm256_shuffle_epi8(table[p][m], hi)));
        }
      }
    }
    if (kSingle) {
      const __m256i x = in_register(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + single_stream_offset(Bits))));
      const __m256i lo = _mm256_and_si256(x, low4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
      for (int m = 0; m < Rows; ++m) {
        const __m256i r0 = _mm256_shuffle_epi8(table[0][m], lo);
        const __m256i r1 = _mm256_shuffle_epi8(table[1][m], hi);
        // Even bytes of quad 0 with odd bytes of quad 1: rows 0..15, both quads.
        const __m256i rows_a = _mm256_blendv_epi8(r0, r1, odd_bytes);
        const __m256i rows_b = _mm256_blendv_epi8(r1, r0, odd_bytes);
        acc_a[m] = _mm256_add_epi16(acc_a[m], _mm256_maddubs_epi16(single_weights, rows_a));
        acc_b[m] = _mm256_add_epi16(acc_b[m], _mm256_maddubs_epi16(single_weights, rows_b));
      }
    }
  }
}

struct Avx2Sums {
  // Two rows per pass pay off for even widths; with a single-plane stream the doubled
  // tables spill registers.
  template <int Bits>
  static constexpr bool shares_rows() { return Bits % 2 == 0; }

  template <int Bits, int Rows>
  __attribute__((always_inline)) static void block(const uint8_t* codes,
                                                   const int8_t* const* tables, int quads,
                                                   __m256i* acc_a, __m256i* acc_b) {
    block_sums16<Bits, Rows>(codes, tables, quads, acc_a, acc_b);
  }
};

}  // namespace

const Kernel* avx2_kernel() {
  static const Kernel kernel{"avx2", build_tables, x86::tile_dot_any<Avx2Sums>};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return &kernel;
  }
  return nullptr;
}

}  // namespace edgepet
