// The dot path in plain scalar C++: the oracle the vector dot kernels are tested against
// (dot4.h). Codes are read one at a time through the layouts' one definitions
// (dot4_address, dot3_bit); the driver and epilogue are the vector kernels' own
// (dot4::tile_dot, add_group) with one lane, so they agree to float rounding.
#include <cmath>
#include <cstring>

#include "kernels/dot4.h"
#include "kernels/pack.h"

namespace edgepet {
namespace {

int32_t round_block(const float* a, int n, float inv, int8_t* x) {
  int32_t sum = 0;
  for (int i = 0; i < n; ++i) {
    x[i] = static_cast<int8_t>(std::nearbyint(a[i] * inv));
    sum += x[i];
  }
  return sum;
}

// One lane: every "vector" is a single row.
struct Scalar {
  using F = float;
  using I = int32_t;
  using Mask = bool;
  static constexpr int kLanes = 1;
  static F zero() { return 0.0f; }
  static F set1(float v) { return v; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F fmadd(F a, F b, F c) { return std::fma(a, b, c); }
  static F cvt(I v) { return static_cast<float>(v); }
  static F load_halves(const Half* p) { return half_to_float(*p); }
  static void store(float* p, F v) { *p = v; }
  static Mask eq(F a, F b) { return a == b; }
  static bool none(Mask m) { return !m; }
  static F blend(Mask m, F if_false, F if_true) { return m ? if_true : if_false; }
};

// The int32 dots of one block, a code at a time: Code(tile codes, row, input) reads one.
template <int (*Code)(const uint8_t*, int, int64_t), int64_t (*Offset)(int64_t)>
struct Codes {
  static constexpr int kRows = 1;
  static int64_t code_offset(int64_t q0) { return Offset(q0); }
  template <int Rows>
  static void block(const uint8_t* codes, const int8_t* const* x, int quads, int32_t dots[][kTileRows],
                    bool /*prefetch*/) {
    for (int m = 0; m < Rows; ++m)
      for (int row = 0; row < kTileRows; ++row) {
        int32_t dot = 0;
        for (int64_t i = 0; i < int64_t{quads} * kQuad; ++i) dot += Code(codes, row, i) * x[m][i];
        dots[m][row] = dot;
      }
  }
};

int nibble4_code(const uint8_t* codes, int row, int64_t input) {
  const Dot4Address at = dot4_address(row, input);
  return (codes[at.byte] >> at.shift) & 0xF;
}

int dot3_code(const uint8_t* codes, int row, int64_t input) {
  int code = 0;
  for (int e = 0; e < 3; ++e) {
    const Dot3Bit at = dot3_bit(row, input, e);
    code |= ((codes[at.byte] >> at.bit) & 1) << e;
  }
  return code;
}

// 2-bit planes -> nibble codes a code at a time, through both layouts' one definitions
// (pack.h's packed_index, dot4_address); ZeroRows code by code too.
void unpack2(const uint8_t* planes, int64_t quads, uint8_t* nibbles, const ZeroRows& zero) {
  std::memset(nibbles, 0, static_cast<size_t>(quads * kDot4QuadBytes));
  if (zero.rows) std::fill(zero.rows, zero.rows + ceil_div(quads, zero.group_quads), ~uint32_t{0});
  for (int64_t q = 0; q < quads; ++q) {
    const uint8_t* pair = planes + q / 2 * pair_stride(2);
    for (int row = 0; row < kTileRows; ++row) {
      const int parity = static_cast<int>(q % 2);
      const int low = packed_index(pair, 2, row, 0, parity);
      const int high = packed_index(pair, 2, row, 1, parity);
      for (int l = 0; l < kQuad; ++l) {
        const int code = ((low >> l) & 1) | (((high >> l) & 1) << 1);
        const Dot4Address at = dot4_address(row, q * kQuad + l);
        nibbles[at.byte] = static_cast<uint8_t>(nibbles[at.byte] | code << at.shift);
        if (zero.rows && code != 1 && q * kQuad + l < zero.k) {
          zero.rows[q / zero.group_quads] &= ~(uint32_t{1} << row);
        }
      }
    }
  }
}

}  // namespace

const Dot4Kernel& reference_dot4_kernel() {
  static const Dot4Kernel kernel{"reference", round_block,
                                 dot4::tile_dot_rows<Scalar, Codes<nibble4_code, dot4::nibble4_offset>>,
                                 dot4::tile_dot_rows<Scalar, Codes<dot3_code, dot4::dot3_offset>>,
                                 unpack2};
  return kernel;
}

}  // namespace edgepet
