// The decoder ops' vector primitives with AVX2 + FMA + F16C (built with -mavx2 -mfma
// -mf16c; chosen at run time only on CPUs that have all three).
#include <immintrin.h>

#include <cmath>

#include "kernels/attention.h"

namespace edgepet {
namespace {

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Eight cache elements as floats: stored as float, or as fp16 (F16C).
__m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__m256 load8(const Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

template <typename T>
float dot(const float* a, const T* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8(b + i + 8), s1);
  }
  for (; i + 8 <= n; i += 8) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), s0);
  }
  float sum = hsum(_mm256_add_ps(s0, s1));
  for (; i < n; ++i) sum += a[i] * cache_value(b[i]);
  return sum;
}

// Four keys at a time: four independent accumulator chains (one chain waits on the
// fused multiply-add latency), summed across lanes together.
template <typename T>
void dots(const float* q, const T* keys, int64_t n, int64_t d, float* out) {
  const int64_t d8 = d - d % 8;
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    const T* k0 = keys + j * d;
    const T *k1 = k0 + d, *k2 = k1 + d, *k3 = k2 + d;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i < d8; i += 8) {
      const __m256 qv = _mm256_loadu_ps(q + i);
      a0 = _mm256_fmadd_ps(qv, load8(k0 + i), a0);
      a1 = _mm256_fmadd_ps(qv, load8(k1 + i), a1);
      a2 = _mm256_fmadd_ps(qv, load8(k2 + i), a2);
      a3 = _mm256_fmadd_ps(qv, load8(k3 + i), a3);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    if (d8 < d) {
      alignas(16) float tail[4] = {0, 0, 0, 0};
      for (int64_t i = d8; i < d; ++i) {
        tail[0] += q[i] * cache_value(k0[i]);
        tail[1] += q[i] * cache_value(k1[i]);
        tail[2] += q[i] * cache_value(k2[i]);
        tail[3] += q[i] * cache_value(k3[i]);
      }
      sums = _mm_add_ps(sums, _mm_load_ps(tail));
    }
    _mm_storeu_ps(out + j, sums);
  }
  for (; j < n; ++j) out[j] = dot(q, keys + j * d, d);
}

// Up to 64 columns at a time stay in eight registers while the rows stream by: no
// load and store of the output per row.
template <typename T>
void weighted_sum(const float* p, const T* values, int64_t n, int64_t d, float* out) {
  int64_t c = 0;
  for (; c + 64 <= d; c += 64) {
    __m256 acc[8];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      const __m256 w = _mm256_set1_ps(p[j]);
      const T* v = values + j * d + c;
      for (int r = 0; r < 8; ++r) acc[r] = _mm256_fmadd_ps(w, load8(v + 8 * r), acc[r]);
    }
    for (int r = 0; r < 8; ++r) _mm256_storeu_ps(out + c + 8 * r, acc[r]);
  }
  for (; c + 8 <= d; c += 8) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t j = 0; j < n; ++j) {
      acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load8(values + j * d + c), acc);
    }
    _mm256_storeu_ps(out + c, acc);
  }
  for (; c < d; ++c) {
    float acc = 0.0f;
    for (int64_t j = 0; j < n; ++j) acc += p[j] * cache_value(values[j * d + c]);
    out[c] = acc;
  }
}

// fp32 -> fp16, rounded to nearest even (F16C).
void to_half(const float* x, Half* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  for (; i < n; ++i) out[i] = float_to_half(x[i]);
}

// exp(x) to about 2 ulp (Cephes' expf polynomial): x = n ln2 + r, |r| <= ln2 / 2,
// exp(x) = 2^n exp(r). Inputs are clamped to where 2^n is a normal float; a NaN stays NaN
// (min/max return their second operand when one is NaN).
__m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_set1_ps(88.3762626647949f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-87.3365447504f), x);
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

float exp_shifted(float* x, int64_t n, float shift) {
  const __m256 vs = _mm256_set1_ps(shift);
  __m256 sum = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), vs));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  float total = hsum(sum);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    total += x[i];
  }
  return total;
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp8(_mm256_xor_ps(g, sign));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace

const VectorOps* avx2_vector_ops() {
  static const VectorOps ops{"avx2",          dots<float>, weighted_sum<float>, exp_shifted,
                             silu_mul,        dots<Half>,  weighted_sum<Half>,  to_half};
  static const bool usable = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                             __builtin_cpu_supports("f16c");
  return usable ? &ops : nullptr;
}

}  // namespace edgepet
