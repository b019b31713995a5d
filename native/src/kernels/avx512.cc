// AVX-512 kernel (AVX512F + AVX512BW + AVX512VL; GFNI where the CPU has it): the AVX2 method on
// 64-byte vectors. The tile32 layout puts a quad pair's streams next to each other, so
// one 64-byte load covers two quads of a 2-bit tile; each 128-bit lane looks up in its
// own quad's table. Tables are the AVX2 kernel's (bit-identical to the reference); the
// float epilogue is shared (x86_tile.h). 1 to 3 bits and ternary: 4-bit formats use the
// dot kernels (dot4.h).
#include <immintrin.h>

#include "kernels/kernel.h"
#include "kernels/pack.h"

// GCC 12's AVX-512 intrinsics pass _mm*_undefined_*() as the merge source of
// unmasked forms, which -Wmaybe-uninitialized (and, where in_register pins a vector that
// holds one, -Wuninitialized) reports once inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include "kernels/x86_tile.h"

namespace edgepet {
namespace {

// Lanes (a, a, b, b) of the four 16-byte tables starting at t.
template <int A, int B>
inline __m512i table_lanes(__m512i four_tables) {
  return _mm512_shuffle_i64x2(four_tables, four_tables, (B << 6) | (B << 4) | (A << 2) | A);
}

// Each byte's high nibble in its low bits. With GFNI that is one affine transform over
// GF(2) (bit i of the result is bit i + 4 of the byte: matrix rows 0x10..0x80) instead of
// a shift and a mask, one of the nine instructions per code vector: measured 10 % off a
// 2-bit 4096 x 4096 GEMV on Zen 4 (docs/operator.md).
template <bool Gfni>
inline __m512i high_nibbles(__m512i x) {
  if constexpr (Gfni) {
    return _mm512_gf2p8affine_epi64_epi8(x, _mm512_set1_epi64(0x1020408000000000ll), 0);
  } else {
    return _mm512_and_si512(_mm512_srli_epi16(x, 4), _mm512_set1_epi8(0x0F));
  }
}

inline __m512i load(const uint8_t* p) { return in_register(_mm512_loadu_si512(p)); }
inline __m512i join(const uint8_t* lo, const uint8_t* hi) {
  return in_register(_mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)), 1));
}

// Sums of one block for Rows activation rows: the codes are loaded and unpacked once
// and looked up in each row's tables (AVX-512 has the registers for two rows' tables
// and accumulators at every width).
template <int Bits, int Rows, bool Gfni>
struct Block512 {
  static_assert(Bits >= 1 && Bits <= 2, "3- and 4-bit formats use the dot kernels (dot4.h)");
  static constexpr int kPairs = Bits / 2;
  static constexpr bool kSingle = Bits & 1;
  static constexpr int kTop = Bits - 1;
  static constexpr int kStride = static_cast<int>(pair_stride(Bits));
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  const __m512i pair_weights = _mm512_set1_epi16(0x0201);  // planes 0 and 1
  const __m512i single_weights = _mm512_set1_epi8(static_cast<char>(1 << kTop));
  static constexpr __mmask64 kOddBytes = 0xAAAAAAAAAAAAAAAAull;
  __m512i acc_a[Rows];
  __m512i acc_b[Rows];

  Block512() {
    for (int m = 0; m < Rows; ++m) acc_a[m] = acc_b[m] = _mm512_setzero_si512();
  }

  inline void add_pairs(__m512i x, const __m512i* table) {
    const __m512i lo = _mm512_and_si512(x, low4);
    const __m512i hi = high_nibbles<Gfni>(x);
    for (int m = 0; m < Rows; ++m) {
      acc_a[m] = _mm512_add_epi16(
          acc_a[m], _mm512_maddubs_epi16(pair_weights, _mm512_shuffle_epi8(table[m], lo)));
      acc_b[m] = _mm512_add_epi16(
          acc_b[m], _mm512_maddubs_epi16(pair_weights, _mm512_shuffle_epi8(table[m], hi)));
    }
  }

  // Single-plane stream: even bytes of one quad's lookups with odd bytes of the next
  // put a row's two quads side by side (the layout of pack.h), so one maddubs each.
  inline void add_single(__m512i x, const __m512i* table_lo, const __m512i* table_hi) {
    const __m512i lo = _mm512_and_si512(x, low4);
    const __m512i hi = high_nibbles<Gfni>(x);
    for (int m = 0; m < Rows; ++m) {
      const __m512i r0 = _mm512_shuffle_epi8(table_lo[m], lo);
      const __m512i r1 = _mm512_shuffle_epi8(table_hi[m], hi);
      const __m512i rows_a = _mm512_mask_blend_epi8(kOddBytes, r0, r1);
      const __m512i rows_b = _mm512_mask_blend_epi8(kOddBytes, r1, r0);
      acc_a[m] = _mm512_add_epi16(acc_a[m], _mm512_maddubs_epi16(single_weights, rows_a));
      acc_b[m] = _mm512_add_epi16(acc_b[m], _mm512_maddubs_epi16(single_weights, rows_b));
    }
  }

  // The pair streams of one quad pair (q, q+1) at c, each row's tables at t[m] (32 bytes).
  inline void pair_streams(const uint8_t* c, const int8_t* const* t) {
    __m512i table[Rows];
    if (kPairs == 1) {
      for (int m = 0; m < Rows; ++m) {
        table[m] = table_lanes<0, 1>(
            _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t[m]))));
      }
      add_pairs(load(c + pair_stream_offset(Bits, 0, 0)), table);
    }
  }

  // Four quads: two quad pairs at c and c + pair_stride.
  inline void four_quads(const uint8_t* c, const int8_t* const* t) {
    const int8_t* next[Rows];
    for (int m = 0; m < Rows; ++m) next[m] = t[m] + 2 * kTableSize;
    pair_streams(c, t);
    pair_streams(c + kStride, next);
    if (kSingle) {
      __m512i lo[Rows], hi[Rows];
      for (int m = 0; m < Rows; ++m) {
        const __m512i four = _mm512_loadu_si512(t[m]);
        lo[m] = table_lanes<0, 2>(four);
        hi[m] = table_lanes<1, 3>(four);
      }
      const __m512i x = Bits == 1 ? load(c)
                                  : join(c + single_stream_offset(Bits),
                                         c + kStride + single_stream_offset(Bits));
      add_single(x, lo, hi);
    }
  }

  // The last quad pair of a block whose quad count is not a multiple of 4.
  inline void two_quads(const uint8_t* c, const int8_t* const* t) {
    pair_streams(c, t);
    if (kSingle) {
      __m512i lo[Rows], hi[Rows];
      for (int m = 0; m < Rows; ++m) {
        const __m512i four = _mm512_maskz_loadu_epi8(0xFFFFFFFFull, t[m]);  // lanes 2, 3 zero
        lo[m] = table_lanes<0, 2>(four);
        hi[m] = table_lanes<1, 3>(four);
      }
      const __m512i x = in_register(_mm512_zextsi256_si512(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + single_stream_offset(Bits)))));
      add_single(x, lo, hi);
    }
  }

  // The two 256-bit halves hold different quads of the same rows.
  static inline __m256i rows(__m512i acc) {
    return _mm256_add_epi16(_mm512_castsi512_si256(acc), _mm512_extracti64x4_epi64(acc, 1));
  }
};

template <bool Gfni>
struct Avx512Sums {
  template <int Bits>
  static constexpr bool shares_rows() { return true; }

  template <int Bits, int Rows>
  static void block(const uint8_t* codes, const int8_t* const* tables, int quads,
                    __m256i* acc_a, __m256i* acc_b) {
    Block512<Bits, Rows, Gfni> sums;
    const int8_t* t[Rows];
    for (int m = 0; m < Rows; ++m) t[m] = tables[m];
    int q = 0;
    for (; q + 4 <= quads; q += 4, codes += 2 * pair_stride(Bits)) {
      prefetch_codes(codes, 2 * pair_stride(Bits));
      sums.four_quads(codes, t);
      for (int m = 0; m < Rows; ++m) t[m] += 4 * kTableSize;
    }
    if (q < quads) sums.two_quads(codes, t);
    for (int m = 0; m < Rows; ++m) {
      acc_a[m] = sums.rows(sums.acc_a[m]);
      acc_b[m] = sums.rows(sums.acc_b[m]);
    }
  }
};

}  // namespace

const Kernel* avx512_kernel() {
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512vl") || !avx2_kernel()) {
    return nullptr;
  }
  // The same sums either way; GFNI (Ice Lake, Zen 4 and later) only splits nibbles faster.
  static const Kernel with_gfni{"avx512", avx2_kernel()->build_tables,
                                x86::tile_dot_any<Avx512Sums<true>>};
  static const Kernel without{"avx512", avx2_kernel()->build_tables,
                              x86::tile_dot_any<Avx512Sums<false>>};
  return __builtin_cpu_supports("gfni") ? &with_gfni : &without;
}

}  // namespace edgepet
