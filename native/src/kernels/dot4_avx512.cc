// 3- and 4-bit dot kernel, AVX-512 VNNI (dot4.h): a 64-byte vector is a quad of 4 inputs
// for all 32 rows; the low fields (rows 0..15) and the whole pair values each meet the 4
// activations broadcast to every lane in one vpdpbusd, and the high fields' sums (rows
// 16..31) follow from the difference. Two activation rows share each code vector
// (prefill): with four, the driver's accumulators spilled, and M=32 576 x 576 took
// 0.0837 ms at 4 bits and 0.105 ms at 3 bits against 0.0714 and 0.0818 with two
// (native/bench_kernels, docs/operator.md). Sums, steps and the epilogue stay in 16-lane
// vectors throughout.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/dot4.h"

// GCC 12's AVX-512 intrinsics pass _mm*_undefined_*() as the merge source of
// unmasked forms, which -Wmaybe-uninitialized (and, for the extracts and reductions,
// -Wuninitialized) reports once inlined here.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace edgepet {
namespace {

int32_t round_block(const float* a, int n, float inv, int8_t* x) {
  const __m512 scale = _mm512_set1_ps(inv);
  __m512i sums = _mm512_setzero_si512();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    // cvtps rounds to nearest even (the default MXCSR mode), as nearbyint does; every
    // value is within [-127, 127], so the saturating narrowing is exact.
    const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(a + i), scale));
    sums = _mm512_add_epi32(sums, v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(x + i), _mm512_cvtsepi32_epi8(v));
  }
  int32_t sum = _mm512_reduce_add_epi32(sums);
  for (; i < n; ++i) {
    x[i] = static_cast<int8_t>(_mm_cvtss_si32(_mm_set_ss(a[i] * inv)));
    sum += x[i];
  }
  return sum;
}

inline __m512i four_activations(const int8_t* x) {
  int32_t v;
  std::memcpy(&v, x, sizeof(v));
  return _mm512_set1_epi32(v);
}

// Sixteen lanes of floats, for the driver and epilogue (dot4.h).
struct V16 {
  using F = __m512;
  using I = __m512i;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static F load_halves(const Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static Mask eq(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static bool none(Mask m) { return m == 0; }
  static F blend(Mask m, F if_false, F if_true) { return _mm512_mask_blend_ps(m, if_false, if_true); }
};

// Rows 0..15 and 16..31 from the sums of the low fields alone (lo) and of whole pair
// values (all = lo + 2^width x high): high = (all - lo) >> width, exact.
template <int Width>
__attribute__((always_inline)) inline void split(__m512i lo, __m512i all, __m512i dots[2]) {
  dots[0] = lo;
  dots[1] = _mm512_srai_epi32(_mm512_sub_epi32(all, lo), Width);
}

// One quad: the low nibbles alone and the whole bytes (low + 16 x high) against the
// 4 activations in every lane.
template <int Rows>
__attribute__((always_inline)) inline void quad(const uint8_t* c, const int8_t* const* x,
                                                __m512i* lo, __m512i* all) {
  const __m512i v = in_register(_mm512_loadu_si512(c));
  const __m512i low = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
  for (int m = 0; m < Rows; ++m) {
    const __m512i act = four_activations(x[m]);
    lo[m] = _mm512_dpbusd_epi32(lo[m], low, act);
    all[m] = _mm512_dpbusd_epi32(all[m], v, act);
  }
}

// 4 bits: one load is a quad of all 32 rows.
struct Nibbles {
  static constexpr int kRows = 2;  // activation rows per pass (top of file)
  static int64_t code_offset(int64_t q0) { return dot4::nibble4_offset(q0); }

  template <int Rows>
  __attribute__((always_inline)) static void block(const uint8_t* codes, const int8_t* const* x_in,
                                                   int quads, __m512i dots[][2], bool prefetch) {
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
      if (prefetch) prefetch_codes(codes, 2 * kDot4QuadBytes);
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
      split<4>(l, a, dots[m]);
    }
  }
};

// 3 bits: three loads are a quartet of quads of all 32 rows (dot4.h). Quads 0-2 are the
// low 6 bits of V0..V2; quad 3's pair values are gathered from their top 2 bits into bits
// 2..7 of one vector (two shifts, two bit-selects), i.e. 4 x the pair value, summed apart.
struct Triples {
  static constexpr int kRows = 2;  // activation rows per pass (top of file)
  static int64_t code_offset(int64_t q0) { return dot4::dot3_offset(q0); }

  template <int Rows>
  __attribute__((always_inline)) static void block(const uint8_t* codes, const int8_t* const* x,
                                                   int quads, __m512i dots[][2], bool prefetch) {
    // One row alone keeps quads 0, 1 and 2 in separate accumulators (latency).
    constexpr int kChains = Rows == 1 ? 3 : 1;
    __m512i lo[kChains][Rows], all[kChains][Rows], lo4[Rows], all4[Rows];
    for (int m = 0; m < Rows; ++m) {
      lo4[m] = all4[m] = _mm512_setzero_si512();
      for (int u = 0; u < kChains; ++u) lo[u][m] = all[u][m] = _mm512_setzero_si512();
    }
    const __m512i pair = _mm512_set1_epi8(0x3F), low3 = _mm512_set1_epi8(0x07);
    const __m512i top2 = _mm512_set1_epi8(static_cast<char>(0xC0));
    const __m512i top4 = _mm512_set1_epi8(static_cast<char>(0xF0));
    const __m512i pair4 = _mm512_set1_epi8(static_cast<char>(0xFC)), low3x4 = _mm512_set1_epi8(0x1C);
    // quads is even; a block's last quartet may hold 2 quads, whose other 2 are zero codes
    // against zero activations (K padded to 16).
    for (int q = 0; q < quads; q += kDot3Quads, codes += kDot3QuartetBytes) {
      if (prefetch) prefetch_codes(codes, kDot3QuartetBytes);
      __m512i v[3];
      for (int j = 0; j < 3; ++j) v[j] = in_register(_mm512_loadu_si512(codes + 64 * j));
      for (int j = 0; j < 3; ++j) {
        const __m512i p = _mm512_and_si512(v[j], pair), c = _mm512_and_si512(v[j], low3);
        for (int m = 0; m < Rows; ++m) {
          const __m512i act = four_activations(x[m] + (q + j) * kQuad);
          lo[j % kChains][m] = _mm512_dpbusd_epi32(lo[j % kChains][m], c, act);
          all[j % kChains][m] = _mm512_dpbusd_epi32(all[j % kChains][m], p, act);
        }
      }
      // Bits 7:6 from V2, 5:4 from V1, 3:2 from V0 (0xCA: a ? b : c, bit by bit).
      const __m512i t = _mm512_ternarylogic_epi32(top2, v[2], _mm512_srli_epi16(v[1], 2), 0xCA);
      const __m512i u = _mm512_ternarylogic_epi32(top4, t, _mm512_srli_epi16(v[0], 4), 0xCA);
      const __m512i p4 = _mm512_and_si512(u, pair4), c4 = _mm512_and_si512(u, low3x4);
      for (int m = 0; m < Rows; ++m) {
        const __m512i act = four_activations(x[m] + (q + 3) * kQuad);
        lo4[m] = _mm512_dpbusd_epi32(lo4[m], c4, act);
        all4[m] = _mm512_dpbusd_epi32(all4[m], p4, act);
      }
    }
    for (int m = 0; m < Rows; ++m) {
      __m512i l = _mm512_srai_epi32(lo4[m], 2), a = _mm512_srai_epi32(all4[m], 2);  // exact
      for (int u = 0; u < kChains; ++u) {
        l = _mm512_add_epi32(l, lo[u][m]);
        a = _mm512_add_epi32(a, all[u][m]);
      }
      split<3>(l, a, dots[m]);
    }
  }
};

// unpack2 with AVX512-VBMI (dot4::unpack2_vectors is the definition; this is its layout
// arithmetic in 5 instructions per quad instead of ~17: 0.14 against 0.36 ms for the
// tiles of a 4096 x 4096 weight on a Zen 4 core). Quad bytes 4j..4j+3 (rows 2j and
// 2j + 1: byte 2r + plane, low nibble row r, high nibble row 16 + r) widen to 64-bit lane
// j, which is rows 2j and 2j + 1 of the output. Output byte i of row r's 32-bit lane wants
// bit i of each of the 4 nibbles of r: vpmultishiftqb takes the 8 bits from offset i (plane
// 0's two bits land at 0 and 4) and from offset i + 7 (plane 1's at 1 and 5); one
// bit-select and one and keep those four. Row 2j + 1 reads 16 bits further on.
//
// ZeroRows from the planes: row r's 16-bit word holds code 1 at the quad's inputs with
// mask m (4 bits) when plane 0's nibbles have m set and plane 1's have m clear, i.e. the
// word and (m | m << 8) is m (row r), and (m << 4 | m << 12) is m << 4 (row 16 + r): two
// ands and two compares into mask registers per quad (zero_rows_of), which took the
// unpacking of a 4096 x 4096 weight from 0.15 to 0.19 ms.
__attribute__((target("avx512vbmi"))) inline uint32_t zero_rows_of(__m256i words, int m) {
  const __mmask16 low = _mm256_cmpeq_epi16_mask(
      _mm256_and_si256(words, _mm256_set1_epi16(static_cast<int16_t>(m | m << 8))),
      _mm256_set1_epi16(static_cast<int16_t>(m)));
  const __mmask16 high = _mm256_cmpeq_epi16_mask(
      _mm256_and_si256(words, _mm256_set1_epi16(static_cast<int16_t>(m << 4 | m << 12))),
      _mm256_set1_epi16(static_cast<int16_t>(m << 4)));
  return static_cast<uint32_t>(low) | static_cast<uint32_t>(high) << 16;
}

__attribute__((target("avx512vbmi"))) void unpack2_vbmi(const uint8_t* planes, int64_t quads,
                                                          uint8_t* nibbles, const ZeroRows& zero) {
  // Control bytes per 64-bit lane: 0..3, 16..19 (plane 0); 7..10, 23..26 (plane 1).
  const __m512i plane0 = _mm512_set1_epi64(0x1312111003020100ll);
  const __m512i plane1 = _mm512_set1_epi64(0x1A1918170A090807ll);
  const __m512i plane0_bits = _mm512_set1_epi8(0x11), code_bits = _mm512_set1_epi8(0x33);
  const int64_t group_quads = zero.rows ? zero.group_quads : quads;
  const int64_t whole = zero.k / kQuad;  // quads with 4 inputs below k
  for (int64_t q0 = 0; q0 < quads; q0 += group_quads) {
    const int64_t q1 = std::min(quads, q0 + group_quads);
    uint32_t rows = ~uint32_t{0};  // of the group so far
    for (int64_t q = q0; q < q1; ++q) {
      const __m256i words = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(planes + 32 * q));
      if (zero.rows) {
        if (q < whole) {
          rows &= zero_rows_of(words, 0xF);
        } else if (q * kQuad < zero.k) {  // the last inputs; the padding counts as 1
          rows &= zero_rows_of(words, (1 << (zero.k - q * kQuad)) - 1);
        }
      }
      const __m512i v = _mm512_cvtepu32_epi64(words);
      const __m512i low = _mm512_multishift_epi64_epi8(plane0, v);
      const __m512i high = _mm512_multishift_epi64_epi8(plane1, v);
      // 0xCA: plane0_bits ? low : high, bit by bit.
      const __m512i codes = _mm512_ternarylogic_epi64(plane0_bits, low, high, 0xCA);
      _mm512_storeu_si512(nibbles + kDot4QuadBytes * q, _mm512_and_si512(codes, code_bits));
    }
    if (zero.rows) zero.rows[q0 / group_quads] = rows;
  }
}

}  // namespace

const Dot4Kernel* avx512_vnni_dot4_kernel() {
  static const Dot4Kernel kernel{"avx512", round_block, dot4::tile_dot_rows<V16, Nibbles>,
                                 dot4::tile_dot_rows<V16, Triples>,
                                 dot4::unpack2_vectors};
  static const Dot4Kernel vbmi{"avx512", round_block, dot4::tile_dot_rows<V16, Nibbles>,
                               dot4::tile_dot_rows<V16, Triples>, unpack2_vbmi};
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
      avx2_dot4_kernel()) {
    return __builtin_cpu_supports("avx512vbmi") ? &vbmi : &kernel;
  }
  return nullptr;
}

}  // namespace edgepet
