// Activation tables, written once for every kernel: the walk over blocks, the rule for
// blocks outside the ordinary range (tiny, subnormal, huge, non-finite) and the block
// sums live here; an ISA supplies only how to compute, measure and store the 8 lower
// entries of one quad's table (Ops, below). Every kernel therefore builds the same
// tables bit for bit, on every input.
//
// Ops provides, as members of an object made once per call:
//   using Half = ...;                        entries 0..7 of one quad, as floats
//   Half half_table(const float* a4) const;  summed in the order ((a0 a1) a2) a3
//   float entry0(const Half&) const;         entry 0 (minus the quad's sum)
//   float largest(const Half* h, int n) const;  max |entry| over n quads (no NaN here)
//   void store(const Half&, float inv, int8_t* out) const;  round(entry * inv) to int8,
//       entries 0..7, then 8..15 as their negations (entry 15 - j = -entry j)
// and may provide store_pair(h0, h1, inv, out): two quads' stores in one (HasStorePair).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>

#include "kernels/kernel.h"

namespace edgepet {
namespace tables {

// Blocks whose largest entry lies in [kOrdinaryLow, kOrdinaryHigh] are rounded as they
// are. Outside it 127 / max overflows (max below ~3.7e-37) or a quad's sum may overflow,
// so such blocks are first scaled by a power of two (exact) into [1, 2).
constexpr float kOrdinaryLow = 0x1p-60f;
constexpr float kOrdinaryHigh = 0x1p60f;

// 2^e for e in [-126, 127], built from its bits (exact, no libm).
inline float power_of_two(int e) {
  const uint32_t bits = static_cast<uint32_t>(127 + e) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// The 4 inputs of quad q: a pointer into `a`, or into `tail` (zero-padded) at the end of K.
inline const float* quad_inputs(const float* a, int64_t k, int64_t q, float* tail) {
  const int64_t first = q * kQuad;
  if (first + kQuad <= k) return a + first;
  for (int l = 0; l < kQuad; ++l) tail[l] = first + l < k ? a[first + l] : 0.0f;
  return tail;
}

// Whether Ops also has store_pair(h0, h1, inv, out): store for two quads at once (32
// bytes), the same bytes as two stores. A block holds an even number of quads (K is
// padded to a multiple of 8), so an ISA that has it never needs the single store here.
template <class Ops, class = void>
struct HasStorePair : std::false_type {};
template <class Ops>
struct HasStorePair<Ops, std::void_t<decltype(std::declval<const Ops&>().store_pair(
                             std::declval<const typename Ops::Half&>(),
                             std::declval<const typename Ops::Half&>(), 0.0f,
                             static_cast<int8_t*>(nullptr)))>> : std::true_type {};

// Rounds n quads' tables with one scale, top = their largest |entry| (finite).
template <class Ops>
__attribute__((always_inline)) inline void store_block(const Ops& ops,
                                                       const typename Ops::Half* half, int n,
                                                       float top, int8_t* entries) {
  const float inv = top > 0.0f ? 127.0f / top : 0.0f;
  int i = 0;
  if constexpr (HasStorePair<Ops>::value) {
    for (; i + 2 <= n; i += 2) ops.store_pair(half[i], half[i + 1], inv, entries + i * kTableSize);
  }
  for (; i < n; ++i) ops.store(half[i], inv, entries + i * kTableSize);
}

// A block outside the ordinary range. Non-finite inputs give a NaN step and sum (every
// output of the row becomes NaN) and zero entries; finite ones are scaled by 2^e so that
// their largest magnitude lies in [1, 2), and the step and sum scaled back by 2^-e.
template <class Ops>
void unusual_block(const Ops& ops, const float* a, int64_t k, int64_t q0, int n,
                   int8_t* entries, float* step, float* sum) {
  float amax = 0.0f;
  bool finite = true;
  for (int64_t i = q0 * kQuad; i < std::min(k, (q0 + n) * kQuad); ++i) {
    finite = finite && std::isfinite(a[i]);
    amax = std::max(amax, std::fabs(a[i]));
  }
  if (!finite) {
    std::memset(entries, 0, static_cast<size_t>(n) * kTableSize);
    *step = *sum = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  int exponent = 0;
  std::frexp(amax, &exponent);  // amax = m * 2^exponent, m in [0.5, 1)
  const int e = std::clamp(1 - exponent, -126, 126);
  const float up = power_of_two(e), down = power_of_two(-e);
  typename Ops::Half half[kMaxBlockQuads];
  float scaled_sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    float tail[kQuad], scaled[kQuad];
    const float* a4 = quad_inputs(a, k, q0 + i, tail);
    for (int l = 0; l < kQuad; ++l) scaled[l] = a4[l] * up;
    half[i] = ops.half_table(scaled);
    scaled_sum -= ops.entry0(half[i]);
  }
  const float top = ops.largest(half, n);
  store_block(ops, half, n, top, entries);
  *step = top / 127.0f * down;
  *sum = scaled_sum * down;
}

// The Kernel::build_tables of every ISA (kernel.h), given its Ops.
template <class Ops>
void build_tables(const Ops& ops, const float* a, int64_t k, int block, int8_t* entries,
                  float* block_scales, float* block_sums) {
  const int64_t quads = num_quads(k);
  const int block_quads = block / kQuad;
  for (int64_t b = 0; b < num_blocks(k, block); ++b) {
    const int64_t q0 = b * block_quads;
    const int n = static_cast<int>(std::min<int64_t>(quads - q0, block_quads));
    int8_t* out = entries + q0 * kTableSize;
    typename Ops::Half half[kMaxBlockQuads];
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
      float tail[kQuad];
      half[i] = ops.half_table(quad_inputs(a, k, q0 + i, tail));
      sum -= ops.entry0(half[i]);  // entry 0 is minus the quad's sum
    }
    // A NaN or an infinity anywhere in the block makes the sum non-finite.
    const float top = ops.largest(half, n);
    const bool ordinary =
        std::isfinite(sum) && (top == 0.0f || (top >= kOrdinaryLow && top <= kOrdinaryHigh));
    if (!ordinary) {
      unusual_block(ops, a, k, q0, n, out, block_scales + b, block_sums + b);
      continue;
    }
    store_block(ops, half, n, top, out);
    block_scales[b] = top / 127.0f;
    block_sums[b] = sum;
  }
}

}  // namespace tables
}  // namespace edgepet
