// The decoder ops' vector primitives in plain C++: the oracle the ISA versions are
// tested against (native/tests/test_decoder_kernels.cc).
#include <cmath>

#include "kernels/attention.h"

namespace edgepet {
namespace {

float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
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
  static const VectorOps ops{"reference", dot, axpy, exp_shifted, silu_mul};
  return ops;
}

}  // namespace edgepet
