// Standalone tests of the decoder ops' kernels (kernels/attention.h): every vector set of
// this CPU against the reference, and decoder_attention against a direct, unfused
// computation (split, RoPE, concat, causal softmax attention) in double precision. No
// ONNX Runtime, no Python; runs under qemu for aarch64.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "thread_pool.h"

using namespace edgepet;

namespace {

int failures = 0, checks = 0;

void expect_close(const std::string& what, double got, double want, double tol) {
  ++checks;
  if (!(std::fabs(got - want) <= tol * (1.0 + std::fabs(want)))) {
    ++failures;
    std::printf("FAIL %s: got %.9g, want %.9g\n", what.c_str(), got, want);
  }
}

std::vector<float> random(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

void test_primitives(const VectorOps& ops) {
  std::mt19937 rng(1);
  const std::string name = ops.name;
  for (int64_t n : {0, 1, 3, 7, 8, 9, 15, 16, 17, 64, 72, 100, 136, 1536}) {
    const std::vector<float> a = random(n, rng), b = random(n, rng, 4.0f);
    // dots and weighted_sum over rows of d = n columns (5 rows, a tail of any width).
    const std::vector<float> rows = random(5 * n, rng);
    std::vector<float> got(5);
    ops.dots(a.data(), rows.data(), 5, n, got.data());
    for (int j = 0; j < 5; ++j) {
      double want = 0.0;
      for (int64_t i = 0; i < n; ++i) want += double(a[i]) * rows[j * n + i];
      expect_close(name + " dots d=" + std::to_string(n), got[j], want,
                   1e-5 * std::sqrt(double(n) + 1));
    }
    const float p[5] = {0.5f, -1.0f, 0.25f, 2.0f, 0.0f};
    std::vector<float> combined(static_cast<size_t>(n), 99.0f);  // overwritten, not added to
    ops.weighted_sum(p, rows.data(), 5, n, combined.data());
    for (int64_t i = 0; i < n; ++i) {
      double want = 0.0;
      for (int j = 0; j < 5; ++j) want += double(p[j]) * rows[j * n + i];
      expect_close(name + " weighted_sum d=" + std::to_string(n), combined[i], want, 1e-6);
    }

    // The same over an fp16 copy of the rows: the products of the rows' fp16 values.
    std::vector<Half> half_rows(rows.size());
    ops.to_half(rows.data(), half_rows.data(), 5 * n);
    for (size_t i = 0; i < rows.size(); ++i) {
      ++checks;
      if (half_rows[i] != float_to_half(rows[i])) {
        ++failures;
        std::printf("FAIL %s to_half(%.9g) = %04x, want %04x\n", name.c_str(), rows[i],
                    half_rows[i], float_to_half(rows[i]));
        break;
      }
    }
    ops.dots_half(a.data(), half_rows.data(), 5, n, got.data());
    for (int j = 0; j < 5; ++j) {
      double want = 0.0;
      for (int64_t i = 0; i < n; ++i) want += double(a[i]) * half_to_float(half_rows[j * n + i]);
      expect_close(name + " dots_half d=" + std::to_string(n), got[j], want,
                   1e-5 * std::sqrt(double(n) + 1));
    }
    ops.weighted_sum_half(p, half_rows.data(), 5, n, combined.data());
    for (int64_t i = 0; i < n; ++i) {
      double want = 0.0;
      for (int j = 0; j < 5; ++j) want += double(p[j]) * half_to_float(half_rows[j * n + i]);
      expect_close(name + " weighted_sum_half d=" + std::to_string(n), combined[i], want, 1e-6);
    }

    std::vector<float> e = b;  // includes values far below the shift: exp underflows
    const float sum = ops.exp_shifted(e.data(), n, 3.0f);
    double want_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double w = std::exp(double(b[i]) - 3.0);
      want_sum += w;
      expect_close(name + " exp", e[i], w, 3e-7);
    }
    expect_close(name + " exp sum", sum, want_sum, 1e-5);

    std::vector<float> out(static_cast<size_t>(n));
    ops.silu_mul(b.data(), a.data(), out.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const double g = b[i];
      expect_close(name + " silu_mul", out[i], g / (1.0 + std::exp(-g)) * a[i], 1e-6);
    }
  }
  // Large magnitudes: saturation, not overflow into NaN.
  const float gates[] = {-200.0f, -90.0f, -20.0f, 0.0f, 20.0f, 90.0f, 200.0f, 1e30f};
  const float ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  float out[8];
  ops.silu_mul(gates, ones, out, 8);
  for (int i = 0; i < 8; ++i) {
    const double g = gates[i];
    expect_close(name + " silu_mul saturates at " + std::to_string(g), out[i],
                 g / (1.0 + std::exp(-g)), 1e-6);
  }
  float nan_in[9] = {0, 0, 0, 0, 0, 0, 0, NAN, NAN};
  ops.exp_shifted(nan_in, 9, 0.0f);
  ++checks;
  if (!std::isnan(nan_in[7]) || !std::isnan(nan_in[8])) {
    ++failures;
    std::printf("FAIL %s exp: NaN must stay NaN\n", name.c_str());
  }
}

// The unfused computation the op replaces, in double.
void direct_attention(const AttentionArgs& a, std::vector<double>& out,
                      std::vector<double>& present_key, std::vector<double>& present_value) {
  const AttentionShape& s = a.shape;
  const int64_t d = s.head_dim, half = d / 2, total = s.past + s.seq;
  const int64_t row = (s.heads + 2 * s.kv_heads) * d, group = s.heads / s.kv_heads;
  auto rope = [&](const float* x, int64_t pos, double* y) {
    for (int64_t i = 0; i < half; ++i) {
      const double c = a.cos[pos * half + i], sn = a.sin[pos * half + i];
      y[i] = x[i] * c - x[i + half] * sn;
      y[i + half] = x[i + half] * c + x[i] * sn;
    }
  };
  present_key.assign(s.batch * s.kv_heads * total * d, 0.0);
  present_value = present_key;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t g = 0; g < s.kv_heads; ++g) {
      const int64_t c = b * s.kv_heads + g;
      for (int64_t p = 0; p < s.past; ++p)
        for (int64_t i = 0; i < d; ++i) {
          present_key[(c * total + p) * d + i] =
              static_cast<const float*>(a.past_key)[(c * s.past + p) * d + i];
          present_value[(c * total + p) * d + i] =
              static_cast<const float*>(a.past_value)[(c * s.past + p) * d + i];
        }
      for (int64_t t = 0; t < s.seq; ++t) {
        const float* src = a.qkv + (b * s.seq + t) * row + (s.heads + g) * d;
        rope(src, s.past + t, &present_key[(c * total + s.past + t) * d]);
        for (int64_t i = 0; i < d; ++i) {
          present_value[(c * total + s.past + t) * d + i] = src[s.kv_heads * d + i];
        }
      }
    }
  out.assign(s.batch * s.seq * s.heads * d, 0.0);
  std::vector<double> q(d), w(total);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = 0; t < s.seq; ++t)
      for (int64_t h = 0; h < s.heads; ++h) {
        rope(a.qkv + (b * s.seq + t) * row + h * d, s.past + t, q.data());
        const int64_t c = b * s.kv_heads + h / group, seen = s.past + t + 1;
        double top = -1e300, sum = 0.0;
        for (int64_t j = 0; j < seen; ++j) {
          w[j] = 0.0;
          for (int64_t i = 0; i < d; ++i) w[j] += q[i] * present_key[(c * total + j) * d + i];
          w[j] *= a.scale;
          top = std::max(top, w[j]);
        }
        for (int64_t j = 0; j < seen; ++j) sum += (w[j] = std::exp(w[j] - top));
        for (int64_t j = 0; j < seen; ++j)
          for (int64_t i = 0; i < d; ++i) {
            out[((b * s.seq + t) * s.heads + h) * d + i] +=
                w[j] / sum * present_value[(c * total + j) * d + i];
          }
      }
}

// The same call with the cache in buffers of a larger capacity, written in place (present
// = past): the same outputs bit for bit, the new rows after the past ones, and the
// positions after them untouched.
void test_shared_buffer(const VectorOps& ops, AttentionArgs a, const std::vector<float>& out,
                        const std::vector<float>& key, const std::vector<float>& value,
                        const Parallel& parallel, const std::string& name) {
  AttentionShape& s = a.shape;
  const int64_t d = s.head_dim, total = s.past + s.seq, capacity = total + 3;
  constexpr float kUntouched = 7.0f;
  std::vector<float> keys(s.batch * s.kv_heads * capacity * d, kUntouched), values(keys);
  for (int64_t c = 0; c < s.batch * s.kv_heads; ++c) {
    for (int64_t i = 0; i < s.past * d; ++i) {
      keys[c * capacity * d + i] = static_cast<const float*>(a.past_key)[c * s.past * d + i];
      values[c * capacity * d + i] = static_cast<const float*>(a.past_value)[c * s.past * d + i];
    }
  }
  std::vector<float> buffer_out(out.size());
  s.past_rows = s.cache_rows = capacity;
  a.past_key = a.present_key = keys.data();
  a.past_value = a.present_value = values.data();
  a.out = buffer_out.data();
  decoder_attention(ops, a, parallel);
  const int before = failures;
  for (size_t i = 0; i < out.size() && failures - before < 5; ++i) {
    expect_close(name + " shared buffer out", buffer_out[i], out[i], 0.0);
  }
  for (int64_t c = 0; c < s.batch * s.kv_heads && failures - before < 5; ++c) {
    for (int64_t i = 0; i < capacity * d; ++i) {
      const size_t at = static_cast<size_t>(c * capacity * d + i);
      const bool filled = i < total * d;
      const float want_key = filled ? key[c * total * d + i] : kUntouched;
      const float want_value = filled ? value[c * total * d + i] : kUntouched;
      expect_close(name + " shared buffer key", keys[at], want_key, 0.0);
      expect_close(name + " shared buffer value", values[at], want_value, 0.0);
    }
  }
}

// The same call over an fp16 cache: the cache is the float call's rounded to fp16 (the
// same rounding, bit for bit), the output within fp16's rounding of the float call's.
void test_half_cache(const VectorOps& ops, AttentionArgs a, const std::vector<float>& out,
                     const std::vector<float>& key, const std::vector<float>& value,
                     const Parallel& parallel, const std::string& name) {
  const AttentionShape& s = a.shape;
  const size_t past = static_cast<size_t>(s.batch * s.kv_heads * s.past * s.head_dim);
  std::vector<Half> pk(past), pv(past);
  for (size_t i = 0; i < past; ++i) {
    pk[i] = float_to_half(static_cast<const float*>(a.past_key)[i]);
    pv[i] = float_to_half(static_cast<const float*>(a.past_value)[i]);
  }
  std::vector<Half> keys(key.size()), values(key.size());
  std::vector<float> half_out(out.size());
  a.half_cache = true;
  a.past_key = pk.data();
  a.past_value = pv.data();
  a.present_key = keys.data();
  a.present_value = values.data();
  a.out = half_out.data();
  decoder_attention(ops, a, parallel);
  const int before = failures;
  for (size_t i = 0; i < key.size() && failures - before < 5; ++i) {
    ++checks;
    if (keys[i] != float_to_half(key[i]) || values[i] != float_to_half(value[i])) {
      ++failures;
      std::printf("FAIL %s fp16 cache [%zu]: %04x %04x, want %04x %04x\n", name.c_str(), i,
                  keys[i], values[i], float_to_half(key[i]), float_to_half(value[i]));
    }
  }
  for (size_t i = 0; i < out.size() && failures - before < 5; ++i) {
    expect_close(name + " fp16 cache out", half_out[i], out[i], 4e-3);
  }
}

void test_attention(const VectorOps& ops, AttentionShape s, const Parallel& parallel) {
  std::mt19937 rng(static_cast<unsigned>(s.seq * 131 + s.past * 7 + s.heads));
  const int64_t d = s.head_dim, half = d / 2, total = s.past + s.seq;
  const std::vector<float> qkv = random(s.batch * s.seq * (s.heads + 2 * s.kv_heads) * d, rng);
  const std::vector<float> pk = random(s.batch * s.kv_heads * s.past * d, rng);
  const std::vector<float> pv = random(s.batch * s.kv_heads * s.past * d, rng);
  std::vector<float> cos(s.rope_positions * half), sin(cos.size());
  for (int64_t p = 0; p < s.rope_positions; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const double angle = p / std::pow(10000.0, 2.0 * i / d);
      cos[p * half + i] = static_cast<float>(std::cos(angle));
      sin[p * half + i] = static_cast<float>(std::sin(angle));
    }
  std::vector<float> out(s.batch * s.seq * s.heads * d), key(s.batch * s.kv_heads * total * d);
  std::vector<float> value(key.size());
  AttentionArgs a;
  a.shape = s;
  a.qkv = qkv.data();
  a.past_key = pk.data();
  a.past_value = pv.data();
  a.cos = cos.data();
  a.sin = sin.data();
  a.scale = 1.0f / std::sqrt(float(d));
  a.out = out.data();
  a.present_key = key.data();
  a.present_value = value.data();
  decoder_attention(ops, a, parallel);
  std::vector<double> want_out, want_key, want_value;
  direct_attention(a, want_out, want_key, want_value);
  const std::string name = std::string(ops.name) + " attention seq=" + std::to_string(s.seq) +
                           " past=" + std::to_string(s.past) + " heads=" +
                           std::to_string(s.heads) + "/" + std::to_string(s.kv_heads);
  const int before = failures;
  for (size_t i = 0; i < out.size() && failures - before < 5; ++i) {
    expect_close(name + " out", out[i], want_out[i], 2e-5);
  }
  for (size_t i = 0; i < key.size() && failures - before < 5; ++i) {
    expect_close(name + " present_key", key[i], want_key[i], 1e-6);
    expect_close(name + " present_value", value[i], want_value[i], 0.0);
  }
  test_shared_buffer(ops, a, out, key, value, parallel, name);
  test_half_cache(ops, a, out, key, value, parallel, name);
}

// float_to_half against known roundings: ties to even, subnormals, overflow, NaN.
void test_float_to_half() {
  struct Case {
    float f;
    Half h;
  };
  const Case cases[] = {{0.0f, 0x0000}, {-0.0f, 0x8000}, {1.0f, 0x3C00}, {-2.5f, 0xC100},
                        {65504.0f, 0x7BFF}, {65519.0f, 0x7BFF}, {65520.0f, 0x7C00},
                        {1e9f, 0x7C00}, {INFINITY, 0x7C00}, {-INFINITY, 0xFC00},
                        {1.0f + 1.0f / 2048, 0x3C00},                 // tie: to even (down)
                        {1.0f + 3.0f / 2048, 0x3C02},                 // tie: to even (up)
                        {6.103515625e-05f, 0x0400},                   // smallest normal
                        {5.9604644775390625e-08f, 0x0001},            // smallest subnormal
                        {2.98023223876953125e-08f, 0x0000},           // its half: to even, 0
                        {4.4703483581542969e-08f, 0x0001},            // 0.75 of it: up
                        {6.0975551605224609e-05f, 0x03FF}};           // largest subnormal
  for (const Case& c : cases) {
    ++checks;
    if (float_to_half(c.f) != c.h) {
      ++failures;
      std::printf("FAIL float_to_half(%.9g) = %04x, want %04x\n", c.f, float_to_half(c.f), c.h);
    }
  }
  ++checks;
  const Half nan = float_to_half(NAN);
  if ((nan & 0x7C00) != 0x7C00 || (nan & 0x3FF) == 0) {
    ++failures;
    std::printf("FAIL float_to_half(NaN) = %04x is not a NaN\n", nan);
  }
  // Every fp16 value converts back to itself.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;  // NaNs
    ++checks;
    if (float_to_half(half_to_float(static_cast<Half>(h))) != h) {
      ++failures;
      std::printf("FAIL float_to_half(half_to_float(%04x)) is not %04x\n", h, h);
      break;
    }
  }
}

void test_checks() {
  AttentionShape s;
  s.batch = 1, s.seq = 2, s.past = 5, s.heads = 4, s.kv_heads = 2, s.head_dim = 8;
  s.rope_positions = 7;
  ++checks;
  if (!check_attention(s).empty()) {
    ++failures;
    std::printf("FAIL check_attention refused a right shape: %s\n", check_attention(s).c_str());
  }
  struct Bad {
    AttentionShape s;
    const char* says;
  };
  AttentionShape long_ctx = s, odd = s, groups = s, full = s;
  long_ctx.rope_positions = 6;
  odd.head_dim = 7;
  groups.kv_heads = 3;
  full.past_rows = full.cache_rows = 6;  // 5 filled + 2 new in 6 positions
  for (const Bad& bad : {Bad{long_ctx, "beyond the RoPE tables"}, Bad{odd, "even"},
                         Bad{groups, "multiple of kv_num_heads"},
                         Bad{full, "do not fit a cache of 6 positions"}}) {
    ++checks;
    const std::string msg = check_attention(bad.s);
    if (msg.find(bad.says) == std::string::npos) {
      ++failures;
      std::printf("FAIL check_attention: '%s' does not say '%s'\n", msg.c_str(), bad.says);
    }
  }
}

}  // namespace

int main() {
  std::string names;
  for (const VectorOps* ops : available_vector_ops()) {
    names += std::string(names.empty() ? "" : ", ") + ops->name;
    test_primitives(*ops);
    //                         batch seq past heads kv  dim  rope
    for (const AttentionShape s : {AttentionShape{1, 1, 0, 4, 2, 16, 8},    // first token
                                   AttentionShape{1, 1, 37, 9, 3, 64, 64},  // decode, GQA
                                   AttentionShape{1, 7, 0, 4, 2, 16, 8},    // prefill
                                   AttentionShape{2, 5, 3, 4, 4, 10, 9},    // MHA, odd D/2
                                   AttentionShape{1, 40, 9, 6, 2, 12, 64},  // several chunks
                                   AttentionShape{1, 3, 2, 2, 1, 2, 5}}) {  // D = 2
      test_attention(*ops, s, Serial());
    }
    // Enough work to go to the pool: the same answer from two threads.
    ThreadPool pool(2);
    test_attention(*ops, AttentionShape{1, 150, 20, 4, 2, 64, 256}, pool);
  }
  test_checks();
  test_float_to_half();
  std::printf("%d passed, %d failed (vector ops: %s)\n", checks - failures, failures,
              names.c_str());
  return failures ? 1 : 0;
}
