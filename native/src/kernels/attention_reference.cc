// The decoder ops' vector primitives in plain C++: the oracle the ISA versions are
// tested against (native/tests/test_decoder_kernels.cc).
#include <cmath>

#include "kernels/attention.h"

namespace edgepet {
namespace {

template <typename T>
void dots(const float* q, const T* keys, int64_t n, int64_t d, float* out) {
  for (int64_t j = 0; j < n; ++j) {
    float sum = 0.0f;
    for (int64_t i = 0; i < d; ++i) sum += q[i] * cache_value(keys[j * d + i]);
    out[j] = sum;
  }
}

template <typename T>
void weighted_sum(const float* p, const T* values, int64_t n, int64_t d, float* out) {
  for (int64_t i = 0; i < d; ++i) out[i] = 0.0f;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = 0; i < d; ++i) out[i] += p[j] * cache_value(values[j * d + i]);
}

void to_half(const float* x, Half* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = float_to_half(x[i]);
}

float exp_shifted(float* x, int64_t n, float shift) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

void silu_mul(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace

const VectorOps& reference_vector_ops() {
  static const VectorOps ops{"reference", dots<float>, weighted_sum<float>, exp_shifted,
                             silu_mul,    dots<Half>,  weighted_sum<Half>,  to_half};
  return ops;
}

}  // namespace edgepet
