// 3- and 4-bit dot kernel, NEON (dot4.h). A 16-byte slice of a quad's 64 bytes holds 4
// rows' 4 codes in its low fields and 4 other rows' in its high fields; each meets the
// quad's 4 activations (repeated in every 32-bit lane) in one sdot where the build targets the
// dot-product extension (__ARM_FEATURE_DOTPROD, e.g. -mcpu=apple_m1 or -march=armv8.2-a+dotprod),
// else in two widening multiplies and two pairwise widening adds.
#include <arm_neon.h>

#include <cmath>
#include <cstring>

#include "kernels/dot4.h"

namespace edgepet {
namespace {

int32_t round_block(const float* a, int n, float inv, int8_t* x) {
  int32x4_t sums = vdupq_n_s32(0);
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    // vcvtnq rounds to nearest even, as nearbyint does; values lie in [-127, 127].
    const int32x4_t lo = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(a + i), inv));
    const int32x4_t hi = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(a + i + 4), inv));
    sums = vaddq_s32(sums, vaddq_s32(lo, hi));
    vst1_s8(x + i, vqmovn_s16(vcombine_s16(vqmovn_s32(lo), vqmovn_s32(hi))));
  }
  int32_t sum = vaddvq_s32(sums);
  for (; i < n; ++i) {
    x[i] = static_cast<int8_t>(std::nearbyint(a[i] * inv));
    sum += x[i];
  }
  return sum;
}

// acc += the dot products of 4 rows' 4 codes (each 32-bit lane one row) with the same 4
// activations in every lane.
inline int32x4_t dot(int32x4_t acc, uint8x16_t codes, int8x16_t act) {
  const int8x16_t c = vreinterpretq_s8_u8(codes);
#ifdef __ARM_FEATURE_DOTPROD
  return vdotq_s32(acc, c, act);
#else
  const int16x8_t rows01 = vmull_s8(vget_low_s8(c), vget_low_s8(act));
  const int16x8_t rows23 = vmull_high_s8(c, act);
  return vpadalq_s16(acc, vpaddq_s16(rows01, rows23));
#endif
}

inline int8x16_t four_activations(const int8_t* x) {
  int32_t four;
  std::memcpy(&four, x, sizeof(four));
  return vreinterpretq_s8_s32(vdupq_n_s32(four));
}

// Four lanes of floats, for the driver and epilogue (dot4.h).
struct V4 {
  using F = float32x4_t;
  using I = int32x4_t;
  using Mask = uint32x4_t;
  static constexpr int kLanes = 4;
  static F zero() { return vdupq_n_f32(0.0f); }
  static F set1(float v) { return vdupq_n_f32(v); }
  static F add(F a, F b) { return vaddq_f32(a, b); }
  static F sub(F a, F b) { return vsubq_f32(a, b); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F fmadd(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  static F cvt(I v) { return vcvtq_f32_s32(v); }
  // fcvtl
  static F load_halves(const Half* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static void store(float* p, F v) { vst1q_f32(p, v); }
  static Mask eq(F a, F b) { return vceqq_f32(a, b); }
  static bool none(Mask m) { return vmaxvq_u32(m) == 0; }
  static F blend(Mask m, F if_false, F if_true) { return vbslq_f32(m, if_true, if_false); }
};

// 4 bits: a 16-byte slice h of a quad holds rows 4h..4h+3 (low nibbles) and 16 + 4h..
// (high nibbles); dots[i] collects rows 4i..4i+3.
struct Nibbles {
  static constexpr int kRows = 1;
  static int64_t code_offset(int64_t q0) { return dot4::nibble4_offset(q0); }

  template <int Rows>
  static void block(const uint8_t* codes, const int8_t* const* x, int quads, int32x4_t dots[][8],
                    bool /*prefetch: x86 only*/) {
    for (int i = 0; i < 8; ++i) dots[0][i] = vdupq_n_s32(0);
    const uint8x16_t low4 = vdupq_n_u8(0x0F);
    for (int q = 0; q < quads; ++q, codes += kDot4QuadBytes) {
      const int8x16_t act = four_activations(x[0] + q * kQuad);
      for (int h = 0; h < 4; ++h) {
        const uint8x16_t v = vld1q_u8(codes + 16 * h);
        dots[0][h] = dot(dots[0][h], vandq_u8(v, low4), act);
        dots[0][4 + h] = dot(dots[0][4 + h], vshrq_n_u8(v, 4), act);
      }
    }
  }
};

// 3 bits: a quartet's three 64-byte vectors (dot4.h), 16 bytes at a time; quad 3's pair
// values gathered from the top 2 bits by two shift-inserts (sri).
struct Triples {
  static constexpr int kRows = 1;
  static int64_t code_offset(int64_t q0) { return dot4::dot3_offset(q0); }

  template <int Rows>
  static void block(const uint8_t* codes, const int8_t* const* x, int quads, int32x4_t dots[][8],
                    bool /*prefetch: x86 only*/) {
    for (int i = 0; i < 8; ++i) dots[0][i] = vdupq_n_s32(0);
    const uint8x16_t low3 = vdupq_n_u8(0x07);
    for (int q = 0; q < quads; q += kDot3Quads, codes += kDot3QuartetBytes) {
      int8x16_t act[4];
      for (int j = 0; j < 4; ++j) act[j] = four_activations(x[0] + (q + j) * kQuad);
      for (int h = 0; h < 4; ++h) {
        uint8x16_t v[3];
        for (int j = 0; j < 3; ++j) {
          v[j] = vld1q_u8(codes + 64 * j + 16 * h);
          dots[0][h] = dot(dots[0][h], vandq_u8(v[j], low3), act[j]);
          dots[0][4 + h] = dot(dots[0][4 + h], vandq_u8(vshrq_n_u8(v[j], 3), low3), act[j]);
        }
        // Bits 7:6 from V2, 5:4 from V1, 3:2 from V0: 4 x quad 3's pair values (+ junk
        // in bits 1:0, shifted out).
        const uint8x16_t u = vsriq_n_u8(vsriq_n_u8(v[2], v[1], 2), v[0], 4);
        dots[0][h] = dot(dots[0][h], vandq_u8(vshrq_n_u8(u, 2), low3), act[3]);
        dots[0][4 + h] = dot(dots[0][4 + h], vshrq_n_u8(u, 5), act[3]);
      }
    }
  }
};

}  // namespace

const Dot4Kernel* neon_dot4_kernel() {
  static const Dot4Kernel kernel{"neon", round_block, dot4::tile_dot_rows<V4, Nibbles>,
                                 dot4::tile_dot_rows<V4, Triples>,
                                 nullptr};  // 2-bit prefill stays on the LUT path (dot4.h)
  return &kernel;
}

}  // namespace edgepet
