// Standalone kernel tests (no ONNX Runtime, no Python): every kernel against the
// exact product with dequantized weights, and every vector kernel against the
// reference. Built with EDGEPET_BUILD_TESTS=ON; runs under qemu for other ISAs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/dot4.h"
#include "kernels/gemm.h"
#include "huge_pages.h"
#include "kernels/pack.h"
#include "thread_pool.h"

#ifdef __linux__
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

using namespace edgepet;

namespace {

int failures = 0;

struct Case {
  int64_t m, n, k;
  int bits;
  bool ternary, symmetric;
  int64_t group_size;
  bool zero_level = false;  // symmetric codes with a zero level (op ABI 6)
};

// Variants of a width the loops below run: 0 symmetric, 1 asymmetric, 2 ternary (2 bits
// only), 3 zero-level symmetric (2 to 4 bits).
constexpr int kVariants = 4;
bool variant_applies(int variant, int bits) {
  return variant == 2 ? bits == 2 : variant == 3 ? bits >= 2 : true;
}
WeightFormat format_of(const Case& c) {
  return {c.n, c.k, c.bits, c.ternary, c.symmetric, c.group_size, c.zero_level};
}
Case variant_case(int64_t m, int64_t n, int64_t k, int bits, int variant, int64_t group) {
  Case c{m, n, k, bits, variant == 2, variant != 1, group};
  c.zero_level = variant == 3;
  return c;
}

struct Problem {
  WeightFormat f;
  std::vector<float> a, scales, zeros, bias, exact;  // scales, zeros: fp16 values
  std::vector<Half> half_scales, half_zeros;          // the same, as stored
  std::vector<uint8_t> codes, packed;
};

// fp32 -> fp16 for normal values, rounding to nearest (ties away; test data only).
Half to_half(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const int exponent = static_cast<int>((bits >> 23) & 0xFFu) - 127 + 15;
  const uint32_t rounded = (bits & 0x7FFFFFu) + 0x1000u;  // half an fp16 ulp
  return static_cast<Half>(sign + (static_cast<uint32_t>(exponent) << 10) + (rounded >> 13));
}

// values [groups][n] rounded to what fp16 holds (the kernels read them as stored), and
// their stored form: tile-major [tiles][groups][32], rows past n zero.
void fill_halves(const WeightFormat& f, std::vector<float>& values, std::vector<Half>& halves) {
  if (values.empty()) return;
  const int64_t groups = num_groups(f);
  halves.assign(static_cast<size_t>(scale_count(f)), 0);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t r = 0; r < f.n; ++r) {
      float& v = values[g * f.n + r];
      const Half h = to_half(v);
      v = half_to_float(h);
      halves[(r / kTileRows * groups + g) * kTileRows + r % kTileRows] = h;
    }
}

// The code -> value rule of docs/operator.md, written out for the test.
float dequant(const WeightFormat& f, int q, float s, float z) {
  if (f.ternary) return s * (q - 1.0f);
  if (f.zero_level) return s * (q - float(1 << (f.bits - 1)));
  if (f.symmetric) return s * (2.0f * q - ((1 << f.bits) - 1));
  return s * (q - z);
}

Problem make(const Case& c, std::mt19937& rng) {
  Problem p;
  p.f = format_of(c);
  const int64_t groups = num_groups(p.f);
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.01f, 0.1f);
  const int top = c.ternary ? 2 : (1 << c.bits) - 1;
  std::uniform_int_distribution<int> code(0, top);
  p.a.resize(c.m * c.k);
  for (auto& v : p.a) v = normal(rng);
  p.codes.resize(c.n * c.k);
  for (auto& v : p.codes) v = static_cast<uint8_t>(code(rng));
  p.scales.resize(groups * c.n);
  for (auto& v : p.scales) v = uniform(rng);
  if (c.zero_level) {  // signed scales: the largest magnitude of either sign takes code 0
    for (auto& v : p.scales) v = code(rng) % 2 ? -v : v;
  }
  if (!c.symmetric && !c.ternary) {
    p.zeros.resize(groups * c.n);
    for (auto& v : p.zeros) v = uniform(rng) * 10.0f * top;
  }
  fill_halves(p.f, p.scales, p.half_scales);
  fill_halves(p.f, p.zeros, p.half_zeros);
  p.bias.resize(c.n);
  for (auto& v : p.bias) v = normal(rng);
  p.packed.resize(packed_bytes(p.f));
  pack_codes(p.codes.data(), c.n, c.k, c.bits, p.packed.data());
  p.exact.assign(c.m * c.n, 0.0f);
  for (int64_t m = 0; m < c.m; ++m)
    for (int64_t n = 0; n < c.n; ++n) {
      double acc = p.bias[n];
      for (int64_t k = 0; k < c.k; ++k) {
        const int64_t g = k / c.group_size;
        const float z = p.zeros.empty() ? 0.0f : p.zeros[g * c.n + n];
        acc += double(p.a[m * c.k + k]) *
               dequant(p.f, p.codes[n * c.k + k], p.scales[g * c.n + n], z);
      }
      p.exact[m * c.n + n] = static_cast<float>(acc);
    }
  return p;
}

std::vector<float> run(const Kernel& kernel, const Problem& p, int64_t m,
                       const Parallel& parallel = Serial(), bool codes_in_huge_pages = false) {
  std::vector<float> y(m * p.f.n);
  GemmArgs args;
  args.format = p.f;
  args.a = p.a.data();
  args.m = m;
  args.codes = p.packed.data();
  args.scales = p.half_scales.data();
  args.zero_points = p.zeros.empty() ? nullptr : p.half_zeros.data();
  args.bias = p.bias.data();
  args.y = y.data();
  args.codes_in_huge_pages = codes_in_huge_pages;
  lut_gemm(kernel, args, parallel);
  return y;
}

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += double(got[i] - want[i]) * (got[i] - want[i]);
    den += double(want[i]) * want[i];
  }
  return std::sqrt(num / (den > 0 ? den : 1));
}

void expect(bool ok, const char* what, const Case& c, double err) {
  if (ok) return;
  ++failures;
  std::printf("FAIL %s: m=%lld n=%lld k=%lld bits=%d ternary=%d sym=%d zero_level=%d "
              "group=%lld err=%g\n", what, (long long)c.m, (long long)c.n, (long long)c.k,
              c.bits, c.ternary, c.symmetric, c.zero_level, (long long)c.group_size, err);
}

// Vector kernels must build the same int8 tables as the reference, bit for bit.
int check_tables_identical(const Kernel& kernel, std::mt19937& rng) {
  int checked = 0;
  std::normal_distribution<float> normal;
  for (int64_t k : {1, 5, 31, 64, 100, 1000}) {
    for (int block : {32, 64}) {
      std::vector<float> a(k);
      for (auto& v : a) v = normal(rng);
      const int64_t quads = num_quads(k), blocks = num_blocks(k, block);
      std::vector<int8_t> e_ref(quads * kTableSize), e_vec(quads * kTableSize);
      std::vector<float> s_ref(blocks), s_vec(blocks), sum_ref(blocks), sum_vec(blocks);
      reference_kernel().build_tables(a.data(), k, block, e_ref.data(), s_ref.data(),
                                      sum_ref.data());
      kernel.build_tables(a.data(), k, block, e_vec.data(), s_vec.data(), sum_vec.data());
      if (e_ref != e_vec || s_ref != s_vec || sum_ref != sum_vec) {
        ++failures;
        std::printf("FAIL tables differ: kernel=%s k=%lld block=%d\n", kernel.name,
                    (long long)k, block);
      }
      ++checked;
    }
  }
  return checked;
}

// half_to_float is exact on every class of fp16 value, and to_half inverts it.
int check_half_conversion() {
  const struct {
    Half h;
    float f;
  } known[] = {{0x3C00, 1.0f},     {0xC000, -2.0f},          {0x3555, 0.333251953125f},
               {0x7BFF, 65504.0f}, {0x0001, 5.9604645e-8f},  {0x03FF, 6.0975552e-5f},
               {0x0000, 0.0f},     {0x2E66, 0.0999755859375f}};
  int checked = 0;
  for (const auto& k : known) {
    if (half_to_float(k.h) != k.f) {
      ++failures;
      std::printf("FAIL half_to_float(0x%04x) = %g, expected %g\n", k.h, half_to_float(k.h), k.f);
    }
    ++checked;
  }
  for (uint32_t h = 0x0400; h < 0x7C00; ++h) {  // every normal positive half
    if (to_half(half_to_float(static_cast<Half>(h))) != h) {
      ++failures;
      std::printf("FAIL half round trip 0x%04x\n", h);
      break;
    }
  }
  return checked + 1;
}

// The formats every edge-case check runs: bits 1..4 symmetric and asymmetric, ternary,
// 2..4 zero-level.
std::vector<Case> edge_formats(int64_t m, int64_t n, int64_t k, int64_t group) {
  std::vector<Case> out;
  for (int bits = 1; bits <= 4; ++bits)
    for (int variant = 0; variant < kVariants; ++variant) {
      if (variant_applies(variant, bits)) out.push_back(variant_case(m, n, k, bits, variant, group));
    }
  return out;
}

// NaN and +-inf in one activation make every output of that row NaN (docs/operator.md),
// and leave the other rows as they were.
int check_non_finite(const Kernel& kernel, std::mt19937& rng) {
  int checked = 0;
  const float specials[] = {std::nanf(""), INFINITY, -INFINITY};
  std::vector<Case> cases = edge_formats(3, 40, 200, 64);
  for (const Case& c : edge_formats(kDotPrefillRows, 40, 200, 64)) {  // 2-bit prefill
    if (c.bits == 2) cases.push_back(c);
  }
  for (const Case& c : cases) {
    Problem p = make(c, rng);
    const std::vector<float> clean = run(kernel, p, c.m);
    for (float special : specials)
      for (int64_t at : {int64_t{0}, int64_t{63}, int64_t{64}, c.k - 1}) {
        Problem bad = p;
        bad.a[1 * c.k + at] = special;
        const std::vector<float> y = run(kernel, bad, c.m);
        bool ok = true;
        for (int64_t n = 0; n < c.n; ++n) {
          ok = ok && std::isnan(y[1 * c.n + n]) && y[n] == clean[n] &&
               y[2 * c.n + n] == clean[2 * c.n + n];
        }
        expect(ok, (std::string(kernel.name) + ": non-finite activation").c_str(), c, special);
        ++checked;
      }
  }
  return checked;
}

// Scaling the activations by 2^e scales the result by 2^e: exactly where everything stays
// a normal float (2^-100, 2^100: blocks outside the ordinary range are rescaled, exactly),
// and closely for tiny and subnormal activations, where 127 / max once overflowed (results
// up to 57x too large): 2^-126 ~ 1.2e-38 to 1e-4, and 2^-135 ~ 2.3e-41 to 5e-3 (its table
// step is a subnormal float of 7 significant bits; still below the tables' rounding).
int check_scaled_activations(const Kernel& kernel, std::mt19937& rng) {
  int checked = 0;
  for (const Case& c : edge_formats(2, 33, 200, 32)) {
    Problem p = make(c, rng);
    std::fill(p.bias.begin(), p.bias.end(), 0.0f);
    const std::vector<float> y = run(kernel, p, c.m);
    for (int e : {-100, 100, -126, -135}) {
      Problem scaled = p;
      for (auto& v : scaled.a) v = std::ldexp(v, e);
      std::vector<float> back = run(kernel, scaled, c.m);
      for (auto& v : back) v = std::ldexp(v, -e);
      const double err = rel_err(back, y);
      expect(e >= -100 ? back == y : err < (e >= -126 ? 1e-4 : 5e-3),
             (std::string(kernel.name) + ": activations scaled by 2^" + std::to_string(e)).c_str(),
             c, err);
      ++checked;
    }
  }
  return checked;
}

// A group whose codes are all the base code gives its exact value, not the rounding of
// the offset term: all-zero asymmetric weights (codes 0, zero point 0) and ternary zeros
// (codes 1) give exactly 0; a constant asymmetric group (codes 0, zero point -+1) gives
// the constant times the sum of the activations to float rounding. M = 3, and M = 17 for
// 2 bits and ternary (their prefill runs on the dot path, uses_dot_prefill).
int check_constant_groups(const Kernel& kernel, std::mt19937& rng) {
  int checked = 0;
  for (int bits : {1, 2, 3, 4, 0})  // 0: ternary
  for (int64_t m : {int64_t{3}, kDotPrefillRows + 1}) {
    if (m > 3 && bits > 0 && bits != 2) continue;
    for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{200}}) {
      Case c{m, 40, 200, bits ? bits : 2, bits == 0, bits == 0, group};
      Problem p = make(c, rng);
      std::fill(p.bias.begin(), p.bias.end(), 0.0f);
      std::fill(p.codes.begin(), p.codes.end(), static_cast<uint8_t>(bits == 0 ? 1 : 0));
      pack_codes(p.codes.data(), c.n, c.k, c.bits, p.packed.data());
      if (bits) {  // zero points 0 for rows < 20, +-1 (constants -+s) for the others
        for (int64_t g = 0; g < num_groups(p.f); ++g)
          for (int64_t r = 0; r < c.n; ++r) {
            const float z = r < 20 ? 0.0f : (r % 2 ? 1.0f : -1.0f);
            p.half_zeros[(r / kTileRows * num_groups(p.f) + g) * kTileRows + r % kTileRows] =
                z == 0.0f ? 0 : to_half(z);
            p.zeros[g * c.n + r] = z;
          }
      }
      const std::vector<float> y = run(kernel, p, c.m);
      bool ok = true;
      double worst = 0.0;
      for (int64_t m = 0; m < c.m; ++m)
        for (int64_t r = 0; r < c.n; ++r) {
          double want = 0.0, size = 0.0;
          for (int64_t kk = 0; kk < c.k; ++kk) {
            const int64_t g = kk / c.group_size;
            const double w = bits ? -double(p.scales[g * c.n + r]) * p.zeros[g * c.n + r] : 0.0;
            want += w * p.a[m * c.k + kk];
            size += std::fabs(w * p.a[m * c.k + kk]);
          }
          const double got = y[m * c.n + r];
          if (size == 0.0) {
            ok = ok && got == 0.0;
          } else {
            worst = std::max(worst, std::fabs(got - want) / size);
          }
        }
      const std::string what = std::string(kernel.name) + ": constant groups";
      expect(ok && worst < 1e-6, what.c_str(), c, worst);
      ++checked;
    }
  }
  return checked;
}

// Tables of blocks outside the ordinary range are bit-identical across kernels too.
int check_unusual_tables_identical(const Kernel& kernel, std::mt19937& rng) {
  int checked = 0;
  std::normal_distribution<float> normal;
  for (float magnitude : {1e-45f, 1e-40f, 1e-38f, 1e30f, 3e38f}) {
    for (float special : {0.0f, std::nanf(""), INFINITY}) {
      const int64_t k = 100;
      std::vector<float> a(k);
      for (auto& v : a) v = normal(rng) * magnitude;
      if (special != 0.0f) a[70] = special;
      const int64_t quads = num_quads(k), blocks = num_blocks(k, 64);
      std::vector<int8_t> e_ref(quads * kTableSize), e_vec(quads * kTableSize);
      std::vector<float> s_ref(blocks), s_vec(blocks), sum_ref(blocks), sum_vec(blocks);
      reference_kernel().build_tables(a.data(), k, 64, e_ref.data(), s_ref.data(), sum_ref.data());
      kernel.build_tables(a.data(), k, 64, e_vec.data(), s_vec.data(), sum_vec.data());
      const auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
        return std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
      };
      if (e_ref != e_vec || !same(s_ref, s_vec) || !same(sum_ref, sum_vec)) {
        ++failures;
        std::printf("FAIL unusual tables differ: kernel=%s magnitude=%g special=%g\n",
                    kernel.name, magnitude, special);
      }
      ++checked;
    }
  }
  return checked;
}

// The code of (row in tile, input) as the dot layouts' one definitions place it.
int dot_code(const uint8_t* tile, int bits, int row, int64_t input) {
  if (bits == 4) {
    const Dot4Address at = dot4_address(row, input);
    return (tile[at.byte] >> at.shift) & 0xF;
  }
  int code = 0;
  for (int e = 0; e < 3; ++e) {
    const Dot3Bit at = dot3_bit(row, input, e);
    code |= ((tile[at.byte] >> at.bit) & 1) << e;
  }
  return code;
}

// 4-bit codes are nibbles at dot4_address, 3-bit codes quartets at dot3_bit (the one
// definitions of the layouts); every bit of the buffer belongs to one code, and the
// padding (rows past N, inputs past K) is zero.
int check_dot4_layout(std::mt19937& rng) {
  int checked = 0;
  for (int bits : {3, 4}) {
    std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
    for (int64_t n : {1, 33}) {
      for (int64_t k : {1, 9, 16, 17, 70}) {
        std::vector<uint8_t> codes(n * k);
        for (auto& v : codes) v = static_cast<uint8_t>(code(rng));
        const WeightFormat f{n, k, bits, false, true, k};
        std::vector<uint8_t> packed(packed_bytes(f), 0xFF);
        pack_codes(codes.data(), n, k, bits, packed.data());
        const int64_t tile_bytes = dot_tile_bytes(f);
        bool ok = packed.size() == static_cast<size_t>(num_tiles(n) * tile_bytes) &&
                  tile_bytes * 8 == kTileRows * dot_padded_k(f) * bits;
        for (int64_t r = 0; r < num_tiles(n) * kTileRows; ++r)
          for (int64_t i = 0; i < dot_padded_k(f); ++i) {
            const uint8_t* tile = packed.data() + r / kTileRows * tile_bytes;
            const int got = dot_code(tile, bits, static_cast<int>(r % kTileRows), i);
            ok = ok && got == (r < n && i < k ? codes[r * k + i] : 0);
          }
        // Dense: with every code at its top value and no padding in the first tile, every
        // bit of that tile is set.
        if (n >= kTileRows && k == dot_padded_k(f)) {
          std::vector<uint8_t> top(n * k, static_cast<uint8_t>((1 << bits) - 1));
          std::vector<uint8_t> full(packed.size());
          pack_codes(top.data(), n, k, bits, full.data());
          ok = ok && std::all_of(full.begin(), full.begin() + tile_bytes,
                                 [](uint8_t b) { return b == 0xFF; });
        }
        if (!ok) {
          ++failures;
          std::printf("FAIL %d-bit dot layout: n=%lld k=%lld\n", bits, (long long)n, (long long)k);
        }
        ++checked;
      }
    }
  }
  return checked;
}

// Every dot kernel quantizes activations bit for bit as the reference does, on ordinary,
// zero, tiny, subnormal, huge and non-finite blocks and on exact ties (x.5 after scaling).
int check_dot4_quantization_identical(std::mt19937& rng) {
  int checked = 0;
  std::normal_distribution<float> normal;
  const Dot4Kernel* kernels[] = {avx2_dot4_kernel(), avx512_vnni_dot4_kernel(), neon_dot4_kernel()};
  for (const Dot4Kernel* kernel : kernels) {
    if (!kernel) continue;
    // Magnitude 0: zeros of both signs (the sum's sign of zero must agree too).
    for (float magnitude : {1.0f, 0.0f, 1e-45f, 1e-40f, 1e-38f, 1e30f, 3e38f}) {
      for (float special : {0.0f, std::nanf(""), INFINITY}) {
        // Whole vectors of 16 and 8 and every kind of remainder.
        for (int n : {64, 63, 37, 32, 16, 8, 5}) {
          std::vector<float> a(n);
          for (auto& v : a) v = normal(rng) * magnitude;
          if (magnitude == 1.0f) {  // ties: 127 / max = 1 makes x.5 exact
            a[0] = 127.0f;
            for (int i = 1; i < n; ++i) a[i] = std::round(a[i] * 20.0f) + 0.5f;
          }
          if (special != 0.0f) a[n / 2] = special;
          std::vector<int8_t> x_ref(n), x_vec(n);
          float step_ref, step_vec, sum_ref, sum_vec;
          int32_t codes_ref, codes_vec;
          dot4::quantize_block(reference_dot4_kernel(), a.data(), n, x_ref.data(), &step_ref,
                               &sum_ref, &codes_ref);
          dot4::quantize_block(*kernel, a.data(), n, x_vec.data(), &step_vec, &sum_vec,
                               &codes_vec);
          int32_t codes_sum = 0;
          for (int8_t v : x_ref) codes_sum += v;
          const auto same = [](float p, float q) { return std::memcmp(&p, &q, sizeof(p)) == 0; };
          if (x_ref != x_vec || !same(step_ref, step_vec) || !same(sum_ref, sum_vec) ||
              codes_ref != codes_sum || codes_vec != codes_sum) {
            ++failures;
            std::printf("FAIL 4-bit activations differ: kernel=%s magnitude=%g special=%g n=%d\n",
                        kernel->name, magnitude, special, n);
          }
          ++checked;
        }
      }
    }
  }
  return checked;
}

// How far the 3- and 4-bit products exceed the dot path's error bound (docs/operator.md):
// per input, |w| <= (2^bits - 1) s (symmetric; asymmetric's centred codes give half)
// times half an activation step (max|a| of its block / 127), plus float rounding. <= 0:
// within.
double dot4_excess_error(const Problem& p, const std::vector<float>& y, const Case& c) {
  const int block = table_block(p.f);
  double worst = -1.0;
  for (int64_t m = 0; m < c.m; ++m)
    for (int64_t r = 0; r < c.n; ++r) {
      double bound = 1e-6, size = 0.0;
      for (int64_t i = 0; i < c.k; ++i) {
        const int64_t b0 = i / block * block;
        float top = 0.0f;
        for (int64_t j = b0; j < std::min(c.k, b0 + block); ++j)
          top = std::max(top, std::fabs(p.a[m * c.k + j]));
        const int64_t g = i / c.group_size;
        const float z = p.zeros.empty() ? 0.0f : p.zeros[g * c.n + r];
        bound += ((1 << c.bits) - 1) * std::fabs(p.scales[g * c.n + r]) * top / 127.0 / 2.0;
        size += std::fabs(p.a[m * c.k + i] * dequant(p.f, p.codes[r * c.k + i],
                                                     p.scales[g * c.n + r], z));
      }
      bound += 1e-5 * size;
      worst = std::max(worst, std::fabs(y[m * c.n + r] - p.exact[m * c.n + r]) - bound);
    }
  return worst;
}

// The reference kernel's LUT path for all m rows: calls of fewer than kDotPrefillRows.
std::vector<float> run_lut_rows(const Problem& p, int64_t m) {
  std::vector<float> y;
  Problem rows = p;
  for (int64_t r0 = 0; r0 < m; r0 += kDotPrefillRows - 1) {
    const int64_t count = std::min(m - r0, kDotPrefillRows - 1);
    rows.a.assign(p.a.begin() + r0 * p.f.k, p.a.begin() + (r0 + count) * p.f.k);
    const std::vector<float> part = run(reference_kernel(), rows, count);
    y.insert(y.end(), part.begin(), part.end());
  }
  return y;
}

// One case of the dot path: the reference within the error bound of the exact product,
// every vector kernel within float rounding of its oracle: the reference, or, for 2-bit
// prefill on a kernel whose dot kernel has no unpack2 (it keeps the LUT path), the
// reference's LUT path.
int check_dot_case(const Case& c, const std::vector<const Kernel*>& vector_kernels,
                   const std::string& what, std::mt19937& rng) {
  const Problem p = make(c, rng);
  const auto ref = run(reference_kernel(), p, c.m);
  const double over = dot4_excess_error(p, ref, c);
  expect(over <= 0.0, (what + " reference vs exact, beyond the error bound").c_str(), c, over);
  for (const Kernel* kernel : vector_kernels) {
    const bool lut = c.bits == 2 && !uses_dot_prefill(p.f, c.m, dot4_kernel_for(*kernel));
    const double e_vec = rel_err(run(*kernel, p, c.m), lut ? run_lut_rows(p, c.m) : ref);
    expect(e_vec < 1e-5, (std::string(kernel->name) + ": " + what).c_str(), c, e_vec);
  }
  return 1 + static_cast<int>(vector_kernels.size());
}

// The 3- and 4-bit dot path's edges: M = 1..5 (passes of 4, 2 and 1 rows), N not a
// multiple of 32, K odd, below a quad, a quad pair but not a quartet (3 bits), not a
// multiple of the block, groups of 32, 64, 128 and per row; symmetric and asymmetric.
// Reference vs exact, every kernel vs the reference.
int check_dot4_shapes(const std::vector<const Kernel*>& vector_kernels, std::mt19937& rng) {
  int checked = 0;
  for (int bits : {3, 4})
  for (int64_t m = 1; m <= 5; ++m)
    for (int64_t n : {1, 31, 33, 65})
      for (int64_t k : {1, 3, 7, 9, 24, 33, 65, 129, 200})
        for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, k})
          for (int variant : {0, 1, 3}) {
            const Case c = variant_case(m, n, k, bits, variant, group);
            if (!check_format(format_of(c)).empty()) continue;
            checked += check_dot_case(c, vector_kernels, "dot", rng);
          }
  return checked;
}

// unpack2 of every dot kernel that has one, and the generic form, turn a tile's 2-bit
// planes (pack.h) into exactly the nibble codes pack_codes writes for the same codes at 4
// bits (dot4.h), and report ZeroRows for ternary codes: per group, the rows whose codes are
// all 1 at the inputs below K (some rows made so on purpose, some with one other code);
// the generic form reports every row (it does not work them out), a superset.
int check_unpack2(std::mt19937& rng) {
  int checked = 0;
  const Dot4Kernel* kernels[] = {&reference_dot4_kernel(), avx2_dot4_kernel(),
                                 avx512_vnni_dot4_kernel(), neon_dot4_kernel()};
  std::uniform_int_distribution<int> code(0, 3);
  for (int64_t n : {1, 33, 64})
    for (int64_t k : {1, 8, 9, 64, 70, 200})
      for (int64_t group : {int64_t{32}, int64_t{64}, k}) {
        const WeightFormat f2{n, k, 2, true, true, group}, f4{n, k, 4, false, true, k};
        if (!check_format(f2).empty()) continue;
        const int64_t groups = num_groups(f2);
        std::vector<uint8_t> codes(n * k);
        for (auto& v : codes) v = static_cast<uint8_t>(code(rng));
        for (int64_t r = 0; r < n; r += 3)  // rows of zero weights, every third one spoiled
          for (int64_t g = 0; g < groups; ++g)
            for (int64_t i = g * group; i < std::min(k, (g + 1) * group); ++i) {
              codes[r * k + i] = (r % 9 == 6 && i == g * group) ? 2 : 1;
            }
        std::vector<uint8_t> planes(packed_bytes(f2)), nibbles(packed_bytes(f4));
        pack_codes(codes.data(), n, k, 2, planes.data());
        pack_codes(codes.data(), n, k, 4, nibbles.data());
        const int64_t quads = num_quads(k), tile_bytes = dot_tile_bytes(f4);
        std::vector<uint32_t> want(num_tiles(n) * groups, 0);
        for (int64_t r = 0; r < n; ++r)
          for (int64_t g = 0; g < groups; ++g) {
            bool ones = true;
            for (int64_t i = g * group; i < std::min(k, (g + 1) * group); ++i) {
              ones = ones && codes[r * k + i] == 1;
            }
            if (ones) want[r / kTileRows * groups + g] |= uint32_t{1} << (r % kTileRows);
          }
        const BlockPlan plan(f2);
        const auto check = [&](const char* name, decltype(Dot4Kernel::unpack2) unpack2,
                               bool exact) {
          std::vector<uint8_t> got(nibbles.size(), 0xAB);
          std::vector<uint32_t> rows(want.size(), 0x5A5A5A5A);
          for (int64_t t = 0; t < num_tiles(n); ++t) {
            ZeroRows zero;
            zero.rows = rows.data() + t * groups;
            zero.k = k;
            zero.group_quads = plan.per_group * plan.block_quads;
            unpack2(planes.data() + t * quads / 2 * pair_stride(2), quads,
                    got.data() + t * tile_bytes, zero);
          }
          bool rows_ok = true;
          for (size_t i = 0; i < want.size(); ++i) {
            // Rows past N (zero codes) are never all 1; only rows < N matter.
            const int64_t tile = static_cast<int64_t>(i) / groups;
            const int64_t live = std::min<int64_t>(kTileRows, n - tile * kTileRows);
            const uint32_t mask = live == 32 ? ~uint32_t{0} : (uint32_t{1} << live) - 1;
            const bool ok = exact ? (rows[i] & mask) == want[i] : (rows[i] & want[i]) == want[i];
            rows_ok = rows_ok && ok;
          }
          if (got != nibbles || !rows_ok) {
            ++failures;
            std::printf("FAIL %s unpack2: n=%lld k=%lld group=%lld (codes %s, zero rows %s)\n",
                        name, (long long)n, (long long)k, (long long)group,
                        got == nibbles ? "ok" : "wrong", rows_ok ? "ok" : "wrong");
          }
          ++checked;
        };
        check("generic vectors", dot4::unpack2_vectors, false);
        for (const Dot4Kernel* kernel : kernels) {
          if (kernel && kernel->unpack2) check(kernel->name, kernel->unpack2, true);
        }
      }
  return checked;
}

// 2-bit and ternary prefill (uses_dot_prefill: M >= kDotPrefillRows) runs on the dot path:
// within its error bound of the exact product (the reference), every kernel within float
// rounding of the reference (of its LUT path for a kernel that keeps prefill there). N with
// a short last tile, K odd and past a group, groups of 32, 64 and per row, symmetric,
// asymmetric and ternary, M with a pass of 1 row at the end; weights split by rows
// (uses_row_blocks: each thread unpacks every tile) and, at 2080 x 2056 (over 1 MB), by
// tiles (each tile unpacked where it runs).
int check_dot_prefill_shapes(const std::vector<const Kernel*>& vector_kernels, std::mt19937& rng) {
  int checked = 0;
  std::vector<Case> cases;
  for (int64_t m : {kDotPrefillRows, kDotPrefillRows + 3})
    for (int64_t n : {31, 65})
      for (int64_t k : {9, 65, 200})
        for (int64_t group : {int64_t{32}, int64_t{64}, k})
          for (int variant = 0; variant < kVariants; ++variant) {
            cases.push_back(variant_case(m, n, k, 2, variant, group));
          }
  cases.push_back({kDotPrefillRows, 2080, 2056, 2, true, true, 64});
  for (const Case& c : cases) {
    if (!check_format(format_of(c)).empty()) continue;
    checked += check_dot_case(c, vector_kernels, "2-bit prefill", rng);
  }
  return checked;
}

// Products large enough for threads (estimated_ns >= kParallelMinNs) give the same bits on
// 1 to 4 pool threads as on the calling thread alone: M = 1 (tables, and the 3- and 4-bit
// int8 activations, built in chunks by whichever threads come first), M = 3, 18 and 32; K with
// a short last group and quad pair, groups of 32 (several per chunk) to K; N with a short
// last tile; 3- and 4-bit included. And with the codes said to lie in huge pages (no
// prefetching) on the calling thread.
int check_threads_identical(std::mt19937& rng) {
  int checked = 0;
  // M = 18 and 32 split their rows among the threads (uses_row_blocks: 18 ends with a
  // block of 2 rows); M = 3 its tiles.
  const int64_t shapes[][3] = {{1, 400, 1000}, {1, 96, 4104}, {3, 333, 1000}, {18, 96, 520},
                               {32, 96, 520}};
  for (auto& s : shapes)
    for (int bits = 1; bits <= 4; ++bits)
      for (int variant = 0; variant < kVariants; ++variant) {
        if (!variant_applies(variant, bits)) continue;
        for (int64_t group : {int64_t{32}, int64_t{64}, int64_t{128}, s[2]}) {
          const Case c = variant_case(s[0], s[1], s[2], bits, variant, group);
          const Problem p = make(c, rng);
          if (estimated_ns(p.f, c.m) < kParallelMinNs) {
            ++failures;
            std::printf("FAIL threads test shape too small for the pool: n=%lld k=%lld\n",
                        (long long)c.n, (long long)c.k);
          }
          for (const Kernel* kernel : available_kernels()) {
            const auto serial = run(*kernel, p, c.m);
            // Codes in huge pages: the dot kernels ask for none ahead, same bits.
            const bool same_unfetched = run(*kernel, p, c.m, Serial(), true) == serial;
            expect(same_unfetched, (std::string(kernel->name) + ": codes in huge pages").c_str(),
                   c, same_unfetched ? 0.0 : 1.0);
            for (int threads = 1; threads <= 4; ++threads) {
              const bool same = run(*kernel, p, c.m, ThreadPool::shared(threads)) == serial;
              expect(same, (std::string(kernel->name) + ": threads " + std::to_string(threads) +
                            " vs the calling thread").c_str(), c, same ? 0.0 : 1.0);
              ++checked;
            }
          }
        }
      }
  return checked;
}

// A "Field: N kB" line of a /proc file (/proc/self/status, /proc/self/smaps_rollup) in
// bytes, or -1.
long proc_bytes(const char* file, const char* field) {
  FILE* f = std::fopen(file, "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof(line), f)) {
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') {
      std::sscanf(line + n + 1, "%ld", &kb);
      break;
    }
  }
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

long anon_huge_bytes() { return proc_bytes("/proc/self/smaps_rollup", "AnonHugePages"); }

// Memory figures are checked only natively: CI runs the aarch64 build under qemu-user,
// which answers madvise without collapsing anything, and whose smaps are the host
// process's.
#if defined(__x86_64__)
constexpr bool kNativeMemory = true;
#else
constexpr bool kNativeMemory = false;
#endif

// back_with_huge_pages keeps every byte of the range and of the pages around it, and where
// it says it succeeded the process holds that much more in huge pages. Where the system
// offers none (THP "never", not Linux) it says false.
int check_huge_pages() {
  const size_t bytes = 5u << 20, around = 16u << 20, huge_page = 2u << 20;
  std::vector<uint8_t> want(around);
  for (size_t i = 0; i < around; ++i) want[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
  // A vector of this size is its own anonymous mapping (glibc's mmap threshold); the
  // range starts 12345 bytes into a 2 MB page inside it, so the pages around it are too.
  std::vector<uint8_t> buffer(want);
  const uintptr_t base = reinterpret_cast<uintptr_t>(buffer.data());
  const uint8_t* start =
      buffer.data() + ((base + huge_page - 1) / huge_page * huge_page - base) + 12345;
  const long before = anon_huge_bytes();
  const bool huge = back_with_huge_pages(start, bytes);
  const long after = anon_huge_bytes();
  if (buffer != want) {
    ++failures;
    std::printf("FAIL back_with_huge_pages changed the memory\n");
  }
  if (kNativeMemory && huge && after >= 0 && after - before < static_cast<long>(bytes) / 2) {
    ++failures;
    std::printf("FAIL back_with_huge_pages said yes, AnonHugePages %ld -> %ld\n", before, after);
  }
  if (back_with_huge_pages(buffer.data(), 0)) {
    ++failures;
    std::printf("FAIL back_with_huge_pages of no bytes said yes\n");
  }
  std::printf("huge pages here: %s\n", huge ? "yes" : "no");
  return 3;
}

#ifdef __linux__
// Weights mapped from a file, the way ONNX Runtime maps a bundle's initializers (private,
// writable): place_in_huge_pages copies them (the same bytes) into huge pages, takes the
// original's pages out of the process unless a write made one of them private (then the
// write survives), and unmaps the copies' memory when the last one is released.
int check_file_weights_copied() {
  const size_t bytes = 5u << 20, small = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<uint8_t> want(bytes);
  for (size_t i = 0; i < bytes; ++i) want[i] = static_cast<uint8_t>(i * 2654435761u >> 11);
  char path[] = "/tmp/edgepet_weightsXXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0 || write(fd, want.data(), bytes) != static_cast<ssize_t>(bytes)) {
    std::printf("SKIP check_file_weights_copied: cannot write %s\n", path);
    if (fd >= 0) close(fd), unlink(path);
    return 0;
  }
  void* map = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  // A second mapping of the file, as a second session of the same bundle would have.
  void* map2 = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  close(fd);
  unlink(path);
  const auto* file2 = static_cast<const uint8_t*>(map2);
  auto* file = static_cast<uint8_t*>(map);
  auto fail = [](const char* what) {
    ++failures;
    std::printf("FAIL place_in_huge_pages, file-mapped weights: %s\n", what);
  };
  if (!mapped_from_file(file)) fail("the mapping is not seen as a file's");
  if (mapped_from_file(want.data())) fail("a vector is seen as a file's");
  volatile uint8_t sink = 0;
  for (size_t i = 0; i < bytes; i += small) sink = sink + file[i];  // fault every page in
  const long before = proc_bytes("/proc/self/status", "RssFile");
  // Two tensors in one mapping; a write makes one page of the second private.
  const size_t first = 3u << 20;
  file[first + 100] = static_cast<uint8_t>(want[first + 100] + 1);
  HugePagePlacement a = place_in_huge_pages(file + 12345, first - 12345);
  HugePagePlacement b = place_in_huge_pages(file + first, bytes - first);
  const long after = proc_bytes("/proc/self/status", "RssFile");
  if (a.copy) {
    if (a.data == file + 12345 || !a.in_huge_pages) fail("a copy not in huge pages");
    if (std::memcmp(a.data, want.data() + 12345, first - 12345) != 0) fail("copy differs");
    if (kNativeMemory && before >= 0 && before - after < static_cast<long>(first) / 2) {
      std::printf("  RssFile %ld -> %ld\n", before, after);
      fail("the original's pages stayed in the process");
    }
  } else if (a.data != file + 12345 || a.in_huge_pages) {
    fail("no copy, yet not the original");
  }
  if (b.copy && (static_cast<const uint8_t*>(b.data)[100] != file[first + 100] ||
                 std::memcmp(b.data, want.data() + first, 100) != 0)) {
    fail("the copy of a written page differs");
  }
  if (file[first + 100] != static_cast<uint8_t>(want[first + 100] + 1)) {
    fail("a written page was dropped");
  }
  if (std::memcmp(file, want.data(), first) != 0) fail("the original changed");
  // The second mapping shares the copy of the same bytes, but not the one whose page a
  // write changed in the first mapping only.
  HugePagePlacement a2 = place_in_huge_pages(file2 + 12345, first - 12345);
  HugePagePlacement b2 = place_in_huge_pages(file2 + first, bytes - first);
  if (a.copy && a2.data != a.data) fail("a second mapping of the same bytes got a copy of its own");
  if (b.copy && (b2.data == b.data ||
                 std::memcmp(b2.data, want.data() + first, bytes - first) != 0)) {
    fail("a copy was shared although the bytes differ");
  }
  a2 = HugePagePlacement();
  b2 = HugePagePlacement();
  // The copies share one chunk: released together, it is unmapped (madvise on memory
  // that is not mapped fails with ENOMEM).
  void* copy_page = reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(a.data) / small * small);
  const bool copied = a.copy != nullptr;
  a = HugePagePlacement();
  if (copied && madvise(copy_page, small, MADV_NORMAL) != 0) fail("unmapped too early");
  b = HugePagePlacement();
  if (copied && kNativeMemory && madvise(copy_page, small, MADV_NORMAL) == 0) {
    fail("the copies' memory stays mapped after their release");
  }
  munmap(map, bytes);
  munmap(map2, bytes);
  std::printf("file-mapped weights copied into huge pages: %s\n", copied ? "yes" : "no");
  return 8;
}
#else
int check_file_weights_copied() { return 0; }
#endif

}  // namespace

int main() {
  std::mt19937 rng(7);
  std::vector<const Kernel*> vector_kernels = available_kernels();
  vector_kernels.pop_back();  // the reference itself
  std::string names;
  for (const Kernel* k : vector_kernels) names += std::string(", ") + k->name;
  int cases = 0;
  // K=200 has a tail block of 2 quad pairs, K=1000 one of 1 (odd quad-pair counts).
  const int64_t shapes[][3] = {{1, 37, 100}, {7, 64, 256}, {2, 33, 1000}, {3, 40, 200}};
  for (auto& s : shapes)
    for (int bits = 1; bits <= 4; ++bits)
      for (int variant = 0; variant < kVariants; ++variant) {
        if (!variant_applies(variant, bits)) continue;
        Case c = variant_case(s[0], s[1], s[2], bits, variant, 0);
        for (int64_t group : {int64_t{32}, int64_t{128}, s[2]}) {
          c.group_size = group;
          const Problem p = make(c, rng);
          const auto ref = run(reference_kernel(), p, c.m);
          const double e_ref = rel_err(ref, p.exact);
          expect(e_ref < 0.015, "reference vs exact", c, e_ref);
          ++cases;
          for (const Kernel* kernel : vector_kernels) {
            const double e_vec = rel_err(run(*kernel, p, c.m), ref);
            expect(e_vec < 1e-5, kernel->name, c, e_vec);
            ++cases;
          }
        }
      }
  for (const Kernel* kernel : vector_kernels) {
    cases += check_tables_identical(*kernel, rng);
    cases += check_unusual_tables_identical(*kernel, rng);
  }
  for (const Kernel* kernel : available_kernels()) {
    cases += check_non_finite(*kernel, rng);
    cases += check_scaled_activations(*kernel, rng);
    cases += check_constant_groups(*kernel, rng);
  }
  cases += check_half_conversion();
  cases += check_dot4_layout(rng);
  cases += check_dot4_quantization_identical(rng);
  cases += check_dot4_shapes(vector_kernels, rng);
  cases += check_unpack2(rng);
  cases += check_dot_prefill_shapes(vector_kernels, rng);
  cases += check_threads_identical(rng);
  cases += check_huge_pages();
  cases += check_file_weights_copied();
  std::printf("%d passed, %d failed (kernels: reference%s)\n", cases - failures, failures,
              names.c_str());
  return failures ? 1 : 0;
}
