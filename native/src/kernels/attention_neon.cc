// The decoder ops' vector primitives with NEON (aarch64: always present).
#include <arm_neon.h>

#include <cmath>

#include "kernels/attention.h"

namespace edgepet {
namespace {

// Four cache elements as floats: stored as float, or as fp16 (fcvtl).
float32x4_t load4(const float* p) { return vld1q_f32(p); }
float32x4_t load4(const Half* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }

template <typename T>
float dot(const float* a, const T* b, int64_t n) {
  float32x4_t s0 = vdupq_n_f32(0.0f), s1 = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), load4(b + i));
    s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), load4(b + i + 4));
  }
  for (; i + 4 <= n; i += 4) s0 = vfmaq_f32(s0, vld1q_f32(a + i), load4(b + i));
  float sum = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; ++i) sum += a[i] * cache_value(b[i]);
  return sum;
}

// Four keys at a time (independent accumulator chains), summed across lanes together.
template <typename T>
void dots(const float* q, const T* keys, int64_t n, int64_t d, float* out) {
  const int64_t d4 = d - d % 4;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const T* k0 = keys + j * d;
    const T *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < d4; i += 4) {
      const float32x4_t qv = vld1q_f32(q + i);
      a0 = vfmaq_f32(a0, qv, load4(k0 + i));
      a1 = vfmaq_f32(a1, qv, load4(k1 + i));
      a2 = vfmaq_f32(a2, qv, load4(k2 + i));
      a3 = vfmaq_f32(a3, qv, load4(k3 + i));
    }
    float32x4_t sums = vpaddq_f32(vpaddq_f32(a0, a1), vpaddq_f32(a2, a3));
    if (d4 < d) {
      float tail[4] = {0, 0, 0, 0};
      for (int64_t i = d4; i < d; ++i) {
        tail[0] += q[i] * cache_value(k0[i]);
        tail[1] += q[i] * cache_value(k1[i]);
        tail[2] += q[i] * cache_value(k2[i]);
        tail[3] += q[i] * cache_value(k3[i]);
      }
      sums = vaddq_f32(sums, vld1q_f32(tail));
    }
    vst1q_f32(out + j, sums);
  }
  for (; j < n; ++j) out[j] = dot(q, keys + j * d, d);
}

// Up to 64 columns at a time stay in sixteen registers while the rows stream by.
template <typename T>
void weighted_sum(const float* p, const T* values, int64_t n, int64_t d, float* out) {
  int64_t c = 0;
  for (; c + 64 <= d; c += 64) {
    float32x4_t acc[16];
    for (auto& a : acc) a = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < n; ++j) {
      const T* v = values + j * d + c;
      for (int r = 0; r < 16; ++r) acc[r] = vfmaq_n_f32(acc[r], load4(v + 4 * r), p[j]);
    }
    for (int r = 0; r < 16; ++r) vst1q_f32(out + c + 4 * r, acc[r]);
  }
  for (; c + 4 <= d; c += 4) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t j = 0; j < n; ++j) acc = vfmaq_n_f32(acc, load4(values + j * d + c), p[j]);
    vst1q_f32(out + c, acc);
  }
  for (; c < d; ++c) {
    float acc = 0.0f;
    for (int64_t j = 0; j < n; ++j) acc += p[j] * cache_value(values[j * d + c]);
    out[c] = acc;
  }
}

// fp32 -> fp16, rounded to nearest even (fcvtn, in the default rounding mode).
void to_half(const float* x, Half* out, int64_t n) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
  for (; i < n; ++i) out[i] = float_to_half(x[i]);
}

// exp(x) as in attention_avx2.cc (Cephes' expf polynomial, clamped, NaN kept).
float32x4_t exp4(float32x4_t x) {
  const uint32x4_t nan = vmvnq_u32(vceqq_f32(x, x));
  x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3365447504f)), vdupq_n_f32(88.3762626647949f));
  const float32x4_t n =
      vrndmq_f32(vfmaq_f32(vdupq_n_f32(0.5f), x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
  // vmaxq/vminq would pass a NaN on already, but say so rather than rely on it.
  return vbslq_f32(nan, vdupq_n_f32(NAN), y);
}

float exp_shifted(float* x, int64_t n, float shift) {
  const float32x4_t vs = vdupq_n_f32(shift);
  float32x4_t sum = vdupq_n_f32(0.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t e = exp4(vsubq_f32(vld1q_f32(x + i), vs));
    vst1q_f32(x + i, e);
    sum = vaddq_f32(sum, e);
  }
  float total = vaddvq_f32(sum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    total += x[i];
  }
  return total;
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const float32x4_t g = vld1q_f32(gate + i);
    const float32x4_t silu = vdivq_f32(g, vaddq_f32(one, exp4(vnegq_f32(g))));
    vst1q_f32(out + i, vmulq_f32(silu, vld1q_f32(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace

const VectorOps* neon_vector_ops() {
  static const VectorOps ops{"neon",   dots<float>, weighted_sum<float>, exp_shifted,
                             silu_mul, dots<Half>,  weighted_sum<Half>,  to_half};
  return &ops;
}

}  // namespace edgepet
