// 4-bit dot kernel, NEON (dot4.h). A 16-byte slice of a quad's 64 bytes holds 4 rows'
// 4 codes in its low nibbles and 4 other rows' in its high nibbles; each meets the quad's
// 4 activations (repeated in every 32-bit lane) in one sdot where the build targets the
// dot-product extension (__ARM_FEATURE_DOTPROD, e.g. -mcpu=apple_m1 or -march=armv8.2-a+dotprod),
// else in two widening multiplies and two pairwise widening adds.
#include <arm_neon.h>

#include <cmath>

#include "kernels/dot4.h"

namespace edgepet {
namespace {

void round_block(const float* a, int n, float inv, int8_t* x) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    // vcvtnq rounds to nearest even, as nearbyint does; values lie in [-127, 127].
    const int32x4_t lo = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(a + i), inv));
    const int32x4_t hi = vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(a + i + 4), inv));
    vst1_s8(x + i, vqmovn_s16(vcombine_s16(vqmovn_s32(lo), vqmovn_s32(hi))));
  }
  for (; i < n; ++i) x[i] = static_cast<int8_t>(std::nearbyint(a[i] * inv));
}

// acc[i] += the dot products of rows 4i..4i+3 (i < 4) and 16 + 4(i - 4).. (i >= 4)
// with 4 activations, for one quad's 64 bytes of codes.
inline void quad_dots(const uint8_t* c, int8x16_t act, int32x4_t acc[8]) {
  const uint8x16_t low4 = vdupq_n_u8(0x0F);
  for (int h = 0; h < 4; ++h) {
    const uint8x16_t v = vld1q_u8(c + 16 * h);
    const int8x16_t codes[2] = {vreinterpretq_s8_u8(vandq_u8(v, low4)),
                                vreinterpretq_s8_u8(vshrq_n_u8(v, 4))};
    for (int part = 0; part < 2; ++part) {
      int32x4_t& a = acc[4 * part + h];
#ifdef __ARM_FEATURE_DOTPROD
      a = vdotq_s32(a, codes[part], act);
#else
      const int16x8_t rows01 = vmull_s8(vget_low_s8(codes[part]), vget_low_s8(act));
      const int16x8_t rows23 = vmull_high_s8(codes[part], act);
      a = vpadalq_s16(a, vpaddq_s16(rows01, rows23));
#endif
    }
  }
}

// Four fp16 scales or zero points as floats (fcvtl).
inline float32x4_t load_halves(const Half* p) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

void tile_dot_one(const Dot4Job& job, const Dot4Activations& act, float* out) {
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  float32x4_t y[8];
  for (auto& v : y) v = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < plan.groups; ++g) {
    float32x4_t acc[8];
    for (auto& v : acc) v = vdupq_n_f32(0.0f);
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      const int64_t q0 = plan.first_quad(b);
      const int n = plan.quads_in(b);
      int32x4_t dots[8];
      for (auto& v : dots) v = vdupq_n_s32(0);
      for (int q = 0; q < n; ++q) {
        int32_t four;
        std::memcpy(&four, act.x + (q0 + q) * kQuad, sizeof(four));
        quad_dots(job.codes + (q0 + q) * kDot4QuadBytes, vreinterpretq_s8_s32(vdupq_n_s32(four)),
                  dots);
      }
      const float two_steps = 2.0f * act.steps[b];
      for (int i = 0; i < 8; ++i) acc[i] = vfmaq_n_f32(acc[i], vcvtq_f32_s32(dots[i]), two_steps);
    }
    // The group's plane sum: the dots plus -15 sum(x) step per block (dot4.h).
    for (auto& v : acc) v = vaddq_f32(v, vdupq_n_f32(act.base_acc[g]));
    const Half* s = job.scales + g * kTileRows;
    const float group_sum = act.group_sums[g];
    for (int i = 0; i < 8; ++i) {
      const float32x4_t scale = load_halves(s + 4 * i);
      if (f.symmetric) {
        y[i] = vfmaq_f32(y[i], scale, acc[i]);
        continue;
      }
      const float32x4_t z = load_halves(job.zero_points + g * kTileRows + 4 * i);
      const float32x4_t off = vmulq_f32(scale, vsubq_f32(vdupq_n_f32(7.5f), z));
      const float32x4_t sc = vmulq_n_f32(scale, 0.5f);
      const float32x4_t rule = vaddq_f32(vmulq_f32(sc, acc[i]), vmulq_n_f32(off, group_sum));
      // Rows whose codes are all zero (the base code) add their exact value (kernel.h).
      const uint32x4_t base = vceqq_f32(acc[i], vdupq_n_f32(act.base_acc[g]));
      if (vmaxvq_u32(base) == 0) {  // the common case: no base-code row
        y[i] = vaddq_f32(y[i], rule);
      } else {
        const float32x4_t exact = vmulq_n_f32(vmulq_f32(scale, z), -group_sum);
        y[i] = vaddq_f32(y[i], vbslq_f32(base, exact, rule));
      }
    }
  }
  for (int i = 0; i < 8; ++i) vst1q_f32(out + 4 * i, y[i]);
}

void tile_dot(const Dot4Job& job) {
  for (int m = 0; m < job.rows; ++m) tile_dot_one(job, job.acts[m], job.out[m]);
}

}  // namespace

const Dot4Kernel* neon_dot4_kernel() {
  static const Dot4Kernel kernel{"neon", round_block, tile_dot};
  return &kernel;
}

}  // namespace edgepet
