// The dot-product path for 3- and 4-bit codes: unsigned codes times int8 activations in
// dot products of 4 inputs (docs/operator.md, "3 and 4 bits: int8 dot products"). A LUT
// kernel makes one lookup per bit-plane and quad; a dot product makes one multiply-add per
// weight, 4 of them per 32-bit lane (vpdpbusd, maddubs, sdot/smull), on codes unpacked with
// a few and/shift operations. "dot4" names the 4-input dot products, not the width.
//
// 4-bit storage ("nibble4", bits = 4, not ternary): tiles of 32 rows, then quads of 4
// inputs (K padded with zeros to a multiple of 8, as tile32), 64 bytes per tile and quad.
// Byte b holds, in its low nibble, the code of row b/4 at input 4j + b%4 and, in its high
// nibble, that of row 16 + b/4: a 64-byte vector is the quad for all 32 rows, each 32-bit
// lane one row's 4 codes (16 rows per nibble).
//
// 3-bit storage ("dot3", bits = 3): tiles of 32 rows, then quartets of 4 quads (16 inputs,
// K padded with zeros to a multiple of 16), 192 bytes per tile and quartet: three 64-byte
// vectors V0, V1, V2. For quad j < 3 of the quartet, byte b of Vj holds the pair value
// P = c(row b/4) + 8 c(row 16 + b/4) at input 4j + b%4 in its bits 0..5, the same
// arrangement as a nibble4 vector with 3-bit fields. Quad 3's pair values are spread over
// the spare top bits: bits 1:0 of P in V0's bits 7:6, bits 3:2 in V1's, bits 5:4 in V2's.
// Quads 0-2 unpack with one and each (P = V & 0x3F, c = V & 7); quad 3 with two shifts
// and two bit-selects (AVX-512 ternlog, NEON sri). dot3_bit is the one definition.
//
// Activations: int8 per table block (32 or 64 inputs, as the LUT path's blocks), with
// step = max|a| / 127. The LUT path's plane sum of a group, sum_k (2 q_k - top) a_k with
// top = 2^bits - 1, becomes
//   sum_blocks dot_b * 2 step_b  +  sum_blocks (-top * sum(x)_b) * step_b,
// dot_b = sum_k q_k x_k over the block (an int32). The kernels accumulate the first
// part (fused multiply-adds in block order) and add the second, which depends on the
// activations alone: Dot4Activations::base_acc, also the plane sum of a row of zero
// codes, so the base-code rule (kernel.h) compares against it exactly. Everything after
// the plane sum is one epilogue (dot4::add_group), that of kernel.h's group_affine.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/kernel.h"
#include "kernels/tables.h"

namespace edgepet {

// Bytes of one tile's 4-bit codes for one quad of 4 inputs.
constexpr int kDot4QuadBytes = 64;
// 3 bits: kDot3Quads per quartet, kDot3QuartetBytes per tile and quartet (kernel.h).
// Activation rows one tile call reads against the same codes (prefill shares the
// unpacked codes between them).
constexpr int kDot4MaxRows = 4;

// 3- and 4-bit non-ternary weights are computed by dot products (3-bit: since op ABI 4).
inline bool uses_dot4(const WeightFormat& f) { return (f.bits == 4 || f.bits == 3) && !f.ternary; }

// Activation rows from which a 2-bit or ternary product (stored as LUT bit-planes) is
// computed by a dot kernel that has unpack2 instead: each tile's planes are unpacked into
// nibble codes once per call and read by every row, where a LUT kernel makes two lookups
// and two widenings per 128 codes and row against the dot kernel's one vpdpbusd per 64.
// Only the AVX512-VNNI kernel (and the reference, its oracle) has unpack2: the AVX2 dot
// kernel took twice the LUT kernel's time at M = 32, and NEON's is not measured on a
// device yet. On a Zen 4 core (native/bench_kernels, A B B A): M = 32 0.77-0.88x the LUT
// path's time, M = 16 0.93-1.00x, M = 8 0.98-1.17x, M = 4 1.07-1.12x (docs/operator.md).
// (uses_dot_prefill, below Dot4Kernel.)
constexpr int64_t kDotPrefillRows = 16;
// Whether the dot path reads this format's codes through unpack2 (2-bit planes).
inline bool unpacks_planes(const WeightFormat& f) { return f.bits == 2; }

// Bytes of one tile's codes, and the inputs they cover (K padded with zero codes; the
// activations are zero there too).
inline int64_t dot_tile_bytes(const WeightFormat& f) {
  return f.bits == 3 ? ceil_div(f.k, kDot3Quads * kQuad) * kDot3QuartetBytes
                     : num_quads(f.k) * kDot4QuadBytes;
}
inline int64_t dot_padded_k(const WeightFormat& f) {
  return f.bits == 3 ? ceil_div(f.k, kDot3Quads * kQuad) * kDot3Quads * kQuad
                     : num_quads(f.k) * kQuad;
}

// One activation row, quantized.
struct Dot4Activations {
  const int8_t* x;            // [dot_padded_k]: round(a / step), zero past K
  const float* steps;         // [blocks]: max|a| / 127 of the block; NaN for a non-finite one
  const float* group_sums;    // [groups]: sum of the activations of each group
  const float* base_acc;      // [groups]: sum_blocks (-top sum(x)) * step (fused, in block
                              // order): the plane sum of a row of zero codes, and the part
                              // of every row's that the dot products leave out
  const float* ternary_ones;  // [groups], ternary only: what the kernels accumulate for a
                              // row of base codes (kernel.h, base_code: 1, the zero weight),
                              // sum_blocks sum(x) * step fused in block order
};

// What unpack2 reports for ternary codes, where asked: per group, a word whose bit r is set
// if row r of the tile has code 1 (the zero weight) at every input of the group (inputs
// from k on, the padding, count as 1). add_group compares accumulators for the base-code
// rule (kernel.h) only in groups with such a row: comparing in every group made ternary
// prefill 1.11-1.15x the 2-bit time (1.00-1.03x gated), and a group of zero weights is rare
// outside pruned models.
struct ZeroRows {
  uint32_t* rows = nullptr;  // [groups], or null: not wanted (2-bit codes)
  int64_t k = 0;             // the inputs
  int64_t group_quads = 0;   // quads per group (K's last group may be shorter)
};

struct Dot4Job {
  WeightFormat format;
  const uint8_t* codes;       // the tile's codes: dot_tile_bytes
  const Half* scales;         // the tile's scales: [groups][32]
  const Half* zero_points;    // same layout, or null
  const uint32_t* zero_rows;  // ternary: [groups] from unpack2 (ZeroRows); null: check all
  int rows;                   // activation rows in this call, 1..kDot4MaxRows
  // Whether the x86 kernels ask for the codes kPrefetchBytes ahead (prefetch_codes). Not
  // for symmetric 4-bit codes of groups of 64 or more that lie in huge pages (dot4_gemm.cc,
  // ask_ahead): there the hardware prefetchers run on unhindered across 4 KB boundaries,
  // and the software requests only compete with them. 4-bit codes streaming from memory
  // on a Zen 4 core: 4 KB pages 18.4 GB/s with the requests, 15.5 without; huge pages
  // 19.1 with, 26.5-27.2 without (docs/operator.md, "Huge pages"). Every other format
  // still gains from them in huge pages. The LUT kernels keep theirs: without them a
  // 2-bit stack in huge pages took 1.54x the time.
  bool prefetch = true;
  Dot4Activations acts[kDot4MaxRows];
  float* out[kDot4MaxRows];   // 32 outputs per activation row
};

struct Dot4Kernel {
  const char* name;
  // x[i] = round(a[i] * inv) (to nearest, ties to even) for i < n: the one rounding every
  // kernel does the same way, so activations quantize bit-identically on every ISA.
  // Returns the sum of the x[i] (the driver's base accumulator needs it; summed here in
  // vector registers, it cost a sixth of a small 4-bit product as a separate loop).
  int32_t (*round_block)(const float* a, int n, float inv, int8_t* x);
  void (*tile_dot)(const Dot4Job& job);   // 4-bit codes
  void (*tile_dot3)(const Dot4Job& job);  // 3-bit codes
  // One tile's 2-bit codes as LUT bit-planes (pack.h, quads of 32 bytes) -> the nibble
  // codes tile_dot reads (`quads` * kDot4QuadBytes bytes; quads is even), and for ternary
  // codes the ZeroRows below. Null where 2-bit prefill stays on the LUT path
  // (uses_dot_prefill).
  void (*unpack2)(const uint8_t* planes, int64_t quads, uint8_t* nibbles, const ZeroRows& zero);
};

inline bool uses_dot_prefill(const WeightFormat& f, int64_t m, const Dot4Kernel& kernel) {
  return f.bits == 2 && m >= kDotPrefillRows && kernel.unpack2 != nullptr;
}

const Dot4Kernel& reference_dot4_kernel();
// Null where the CPU or build lacks AVX2, FMA and F16C.
const Dot4Kernel* avx2_dot4_kernel();
// Null where the CPU or build lacks AVX512F/BW/VL and AVX512-VNNI.
const Dot4Kernel* avx512_vnni_dot4_kernel();
// Null except in aarch64 builds.
const Dot4Kernel* neon_dot4_kernel();

struct GemmArgs;
class Parallel;
// Y = A . dequant(W)^T (+ bias) for a format uses_dot4 accepts, or a 2-bit one whose rows
// uses_dot_prefill sends here with this kernel (gemm.h's GemmArgs).
void dot4_gemm(const Dot4Kernel& kernel, const GemmArgs& args, const Parallel& parallel);
// The dot kernel that goes with a LUT kernel (the same ISA; dispatch.cc).
const Dot4Kernel& dot4_kernel_for(const Kernel& lut);

// Where a 4-bit code lives: byte offset inside its tile's codes and nibble shift (0 or
// 4). The one definition of the layout; pack.cc writes it, the kernels read it.
struct Dot4Address {
  int64_t byte;
  int shift;
};
inline Dot4Address dot4_address(int row, int64_t input) {
  return {input / kQuad * kDot4QuadBytes + 4 * (row % 16) + input % kQuad, 4 * (row / 16)};
}

// Where bit e (0..2) of a 3-bit code lives: byte offset inside its tile's codes and bit.
// The one definition of the 3-bit layout (see the top of this file).
struct Dot3Bit {
  int64_t byte;
  int bit;
};
inline Dot3Bit dot3_bit(int row, int64_t input, int e) {
  const int64_t quartet = input / (kDot3Quads * kQuad);
  const int quad = static_cast<int>(input / kQuad % kDot3Quads);
  const int64_t lane_byte = 4 * (row % 16) + input % kQuad;
  const int p = 3 * (row / 16) + e;  // bit of the pair value P
  const int64_t base = quartet * kDot3QuartetBytes + lane_byte;
  if (quad < 3) return {base + 64 * quad, p};
  return {base + 64 * (p / 2), 6 + p % 2};
}

namespace dot4 {

// Four floats as one vector of the compiler's generic vector extension (GCC, Clang; SSE
// or NEON): the driver is built for the baseline ISA, where loops over a float[8] stayed
// scalar (one maxss per activation). Lanes l and 4 + l of the 8-lane forms below are
// lane l of two such vectors, with the same per-lane arithmetic as the scalar form.
typedef float Lanes4 __attribute__((vector_size(16)));
typedef int32_t Lanes4i __attribute__((vector_size(16)));

inline Lanes4 load4(const float* a) {
  Lanes4 v;
  std::memcpy(&v, a, sizeof(v));
  return v;
}

inline Lanes4 magnitude(Lanes4 v) {
  Lanes4i bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits &= 0x7fffffff;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

// Sum of n activations in a fixed order (8 interleaved partial sums, then a fixed tree),
// the same on every ISA.
inline float block_sum(const float* a, int n) {
  Lanes4 low = {}, high = {};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    low += load4(a + i);
    high += load4(a + i + 4);
  }
  float lane[8];
  std::memcpy(lane, &low, sizeof(low));
  std::memcpy(lane + 4, &high, sizeof(high));
  for (int l = 0; i + l < n; ++l) lane[l] += a[i + l];
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

// max |a| of n activations (exact in any order). A NaN among them is skipped, as by
// std::max; callers test the block's sum for finiteness (quantize_block).
inline float block_max(const float* a, int n) {
  Lanes4 low = {}, high = {};
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const Lanes4 l = magnitude(load4(a + i)), h = magnitude(load4(a + i + 4));
    low = low < l ? l : low;
    high = high < h ? h : high;
  }
  float lane[8];
  std::memcpy(lane, &low, sizeof(low));
  std::memcpy(lane + 4, &high, sizeof(high));
  for (int l = 0; i + l < n; ++l) lane[l] = std::max(lane[l], std::fabs(a[i + l]));
  float top = 0.0f;
  for (float v : lane) top = std::max(top, v);
  return top;
}

// One block's activations quantized, and the sum of the codes; outside the ordinary
// range (tables.h) they are first scaled by a power of two (exact) so that max|a| lies in
// [1, 2), and step and sum scaled back. Non-finite inputs give a NaN step and sum and zero
// codes.
inline void quantize_block(const Dot4Kernel& kernel, const float* a, int n, int8_t* x,
                           float* step, float* sum, int32_t* x_sum) {
  float top = block_max(a, n);
  float total = block_sum(a, n);
  const bool ordinary = std::isfinite(total) &&
                        (top == 0.0f || (top >= tables::kOrdinaryLow && top <= tables::kOrdinaryHigh));
  if (ordinary) {
    *x_sum = kernel.round_block(a, n, top > 0.0f ? 127.0f / top : 0.0f, x);
    *step = top / 127.0f;
    *sum = total;
    return;
  }
  bool finite = true;
  for (int i = 0; i < n; ++i) finite = finite && std::isfinite(a[i]);
  if (!finite) {
    std::memset(x, 0, static_cast<size_t>(n));
    *step = *sum = std::numeric_limits<float>::quiet_NaN();
    *x_sum = 0;
    return;
  }
  int exponent = 0;
  std::frexp(top, &exponent);  // top = m * 2^exponent, m in [0.5, 1)
  const int e = std::clamp(1 - exponent, -126, 126);
  const float up = tables::power_of_two(e), down = tables::power_of_two(-e);
  float scaled[kMaxBlockK];
  for (int i = 0; i < n; ++i) scaled[i] = a[i] * up;
  top = block_max(scaled, n);
  *x_sum = kernel.round_block(scaled, n, 127.0f / top, x);
  *step = top / 127.0f * down;
  *sum = block_sum(scaled, n) * down;
}

// Everything after the integer dot products, written once for every ISA. V is the ISA's
// float vector: F (kLanes floats), I (kLanes int32), zero, set1, add, sub, mul, fmadd(a,
// b, c) = a * b + c (fused), cvt (int32 -> float), load_halves (kLanes fp16), store,
// Mask, eq, none, blend(mask, if_false, if_true). The files are built with
// -ffp-contract=off, so each ISA rounds exactly where this code says.

// add_group for ternary codes: group_affine's sc = off = s / 2, so the rule is
// s/2 (plane + sum(a)) = s (acc + (base_acc + sum(a)) / 2), where acc is half the plane's
// dot part (tile_dot's step_factor) and the rest one scalar per row; rows whose codes are
// all 1 (zero weights) add their exact value, 0 (kernel.h, base_code), found by comparing
// acc with a zero row's (ternary_ones) in the groups that have one (ZeroRows). 4096 x 4096,
// M = 32 on a Zen 4 core: ternary took 1.16x the 2-bit time with the asymmetric form (seven
// vector operations per row), 1.11-1.15x comparing in every group, 1.00-1.03x this way.
template <class V, int Rows>
__attribute__((always_inline)) inline void add_ternary_group(
    const Dot4Job& job, int64_t g, const typename V::F (*acc)[kTileRows / V::kLanes],
    typename V::F (*y)[kTileRows / V::kLanes]) {
  using F = typename V::F;
  constexpr int kVecs = kTileRows / V::kLanes;
  const Half* s = job.scales + g * kTileRows;
  if (job.zero_rows && job.zero_rows[g] == 0) {  // no row of zero weights: the rule alone
    for (int i = 0; i < kVecs; ++i) {
      const F scale = V::load_halves(s + i * V::kLanes);
      for (int m = 0; m < Rows; ++m) {
        const Dot4Activations& a = job.acts[m];
        const F rest = V::set1(0.5f * (a.base_acc[g] + a.group_sums[g]));
        y[m][i] = V::fmadd(scale, V::add(acc[m][i], rest), y[m][i]);
      }
    }
    return;
  }
  F kept[Rows][kVecs];
  typename V::Mask zero_row[Rows][kVecs];
  bool any = false;
  for (int i = 0; i < kVecs; ++i) {
    const F scale = V::load_halves(s + i * V::kLanes);
    for (int m = 0; m < Rows; ++m) {
      const Dot4Activations& a = job.acts[m];
      kept[m][i] = y[m][i];
      const F rest = V::set1(0.5f * (a.base_acc[g] + a.group_sums[g]));
      y[m][i] = V::fmadd(scale, V::add(acc[m][i], rest), y[m][i]);
      zero_row[m][i] = V::eq(acc[m][i], V::set1(a.ternary_ones[g]));
      any = any | !V::none(zero_row[m][i]);
    }
  }
  if (!any) return;
  for (int i = 0; i < kVecs; ++i)
    for (int m = 0; m < Rows; ++m) y[m][i] = V::blend(zero_row[m][i], y[m][i], kept[m][i]);
}

// y[m] (32 rows each) += the group's value for activation row m: acc[m] holds
// sum_blocks dot_b * 2 step_b per row. Scales and zero points are converted once for all
// Rows activation rows. Always inlined: as a call per group it passed the accumulators
// through the stack (a 64-byte store and reload per group), which made 4-bit products
// 7-9 % slower on a Zen 4 core.
template <class V, int Rows>
__attribute__((always_inline)) inline void add_group(
    const Dot4Job& job, int64_t g, const typename V::F (*acc)[kTileRows / V::kLanes],
    typename V::F (*y)[kTileRows / V::kLanes]) {
  using F = typename V::F;
  const WeightFormat& f = job.format;
  if (f.ternary) return add_ternary_group<V, Rows>(job, g, acc, y);
  const float mid = 0.5f * static_cast<float>((1 << f.bits) - 1);
  const Half* s = job.scales + g * kTileRows;
  for (int i = 0; i < kTileRows / V::kLanes; ++i) {
    const F scale = V::load_halves(s + i * V::kLanes);
    if (f.zero_level) {  // sc = s/2, off = -s/2 (kernel.h, group_affine); no base code
      // y += s/2 (plane sum - sum(a)), the plane sum being the dots plus base_acc.
      const F sc = V::mul(V::set1(0.5f), scale);
      for (int m = 0; m < Rows; ++m) {
        const F offset = V::set1(job.acts[m].base_acc[g] - job.acts[m].group_sums[g]);
        y[m][i] = V::fmadd(sc, V::add(acc[m][i], offset), y[m][i]);
      }
      continue;
    }
    if (f.symmetric) {
      for (int m = 0; m < Rows; ++m) {
        // The group's plane sum: the dots plus -top sum(x) step per block (top of file).
        const F plane = V::add(acc[m][i], V::set1(job.acts[m].base_acc[g]));
        y[m][i] = V::fmadd(scale, plane, y[m][i]);
      }
      continue;
    }
    const F z = V::load_halves(job.zero_points + g * kTileRows + i * V::kLanes);
    const F off = V::mul(scale, V::sub(V::set1(mid), z));
    const F sc = V::mul(V::set1(0.5f), scale);
    for (int m = 0; m < Rows; ++m) {
      const F base_acc = V::set1(job.acts[m].base_acc[g]);
      const float group_sum = job.acts[m].group_sums[g];
      const F plane = V::add(acc[m][i], base_acc);
      const F rule = V::add(V::mul(sc, plane), V::mul(off, V::set1(group_sum)));
      // Rows whose codes are all zero (the base code) add their exact value (kernel.h).
      const typename V::Mask base = V::eq(plane, base_acc);
      if (V::none(base)) {  // the common case: no base-code row
        y[m][i] = V::add(y[m][i], rule);
      } else {
        const F exact = V::mul(V::mul(scale, z), V::set1(-group_sum));
        y[m][i] = V::add(y[m][i], V::blend(base, rule, exact));
      }
    }
  }
}

// One tile against Rows activation rows. Sums is the ISA's integer inner loop for one
// width: code_offset(q0), the byte offset of quad q0 (the first of a block) in a tile's
// codes, and block<Rows>(codes, x, quads, dots, prefetch), which sets dots[m][i] to the
// int32 sums sum_k q_k x_k of one block for the rows of vector i against activation row m
// (asking for codes ahead if prefetch: Dot4Job::prefetch).
template <class V, class Sums, int Rows>
void tile_dot(const Dot4Job& job) {
  using F = typename V::F;
  constexpr int kVecs = kTileRows / V::kLanes;
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  // 2 step: the plane sum (top of file); ternary accumulates half of it (add_ternary_group).
  const float step_factor = f.ternary ? 1.0f : 2.0f;
  F y[Rows][kVecs];
  for (int m = 0; m < Rows; ++m)
    for (int i = 0; i < kVecs; ++i) y[m][i] = V::zero();
  for (int64_t g = 0; g < plan.groups; ++g) {
    F acc[Rows][kVecs];
    for (int m = 0; m < Rows; ++m)
      for (int i = 0; i < kVecs; ++i) acc[m][i] = V::zero();
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      const int64_t q0 = plan.first_quad(b);
      const int n = plan.quads_in(b);
      const uint8_t* codes = job.codes + Sums::code_offset(q0);
      const int8_t* x[Rows];
      for (int m = 0; m < Rows; ++m) x[m] = job.acts[m].x + q0 * kQuad;
      typename V::I dots[Rows][kVecs];
      if (n == kMaxBlockQuads) {  // a constant count for the common case
        Sums::template block<Rows>(codes, x, kMaxBlockQuads, dots, job.prefetch);
      } else {
        Sums::template block<Rows>(codes, x, n, dots, job.prefetch);
      }
      for (int m = 0; m < Rows; ++m) {
        const F two_steps = V::set1(step_factor * job.acts[m].steps[b]);
        for (int i = 0; i < kVecs; ++i) acc[m][i] = V::fmadd(V::cvt(dots[m][i]), two_steps, acc[m][i]);
      }
    }
    add_group<V, Rows>(job, g, acc, y);
  }
  for (int m = 0; m < Rows; ++m)
    for (int i = 0; i < kVecs; ++i) V::store(job.out[m] + i * V::kLanes, y[m][i]);
}

// Activation rows in passes of Sums::kRows (4, 2 or 1), then 2, then 1 over the codes.
template <class V, class Sums>
void tile_dot_rows(const Dot4Job& job) {
  int m = 0;
  const auto pass = [&job, &m](auto rows) {
    constexpr int kRows = decltype(rows)::value;
    Dot4Job part = job;
    part.rows = kRows;
    for (int i = 0; i < kRows; ++i) {
      part.acts[i] = job.acts[m + i];
      part.out[i] = job.out[m + i];
    }
    tile_dot<V, Sums, kRows>(part);
    m += kRows;
  };
  if constexpr (Sums::kRows >= 4) {
    while (job.rows - m >= 4) pass(std::integral_constant<int, 4>());
  }
  if constexpr (Sums::kRows >= 2) {
    while (job.rows - m >= 2) pass(std::integral_constant<int, 2>());
  }
  while (m < job.rows) pass(std::integral_constant<int, 1>());
}

// unpack2 in the compiler's generic vectors, two quads (32 bytes each) per step: the one
// definition of how 2-bit planes become nibble codes, for AVX512-VNNI CPUs without VBMI
// (dot4_avx512.cc has the VBMI form); it leaves ternary's ZeroRows all set (every group
// compares). Row r's two bytes of a quad (pack.h: byte 2r + plane, low nibble row r, high
// nibble row 16 + r) are one little-endian 16-bit word, a 4 x 4 bit matrix whose rows are
// the nibbles (plane 0 of r, of 16 + r, plane 1 of r, of 16 + r) and whose columns are
// the 4 inputs. With the middle rows swapped and
// the matrix transposed, nibble i holds input i's bits in the order (r plane 0, r plane 1,
// 16 + r plane 0, 16 + r plane 1): two 2-bit codes, which spread to bits 0-1 and 4-5 of
// byte i of row r's 32-bit lane (dot4_address).
inline void unpack2_vectors(const uint8_t* planes, int64_t quads, uint8_t* nibbles,
                            const ZeroRows& zero) {
  if (zero.rows) {
    std::fill(zero.rows, zero.rows + ceil_div(quads, zero.group_quads), ~uint32_t{0});
  }
  typedef uint16_t Words __attribute__((vector_size(64)));
  typedef uint32_t Lanes __attribute__((vector_size(128)));
  for (int64_t q = 0; q < quads; q += 2) {
    Words x;
    std::memcpy(&x, planes + q * 32, sizeof(x));
    Words t = (x ^ (x >> 4)) & 0x00F0;  // swap the middle nibbles
    x ^= t ^ (t << 4);
    t = (x ^ (x >> 3)) & 0x0A0A;  // transpose the 4 x 4 bits: 1 x 1 blocks
    x ^= t ^ (t << 3);
    t = (x ^ (x >> 6)) & 0x00CC;  // 2 x 2 blocks
    x ^= t ^ (t << 6);
    Lanes y = __builtin_convertvector(x, Lanes);
    y = (y | (y << 8)) & 0x00FF00FF;
    y = (y | (y << 4)) & 0x0F0F0F0F;
    y = (y | (y << 2)) & 0x33333333;
    std::memcpy(nibbles + q * kDot4QuadBytes, &y, sizeof(y));
  }
}

// Byte offsets of quad q0 (a block's first) in a tile's 4-bit and 3-bit codes.
inline int64_t nibble4_offset(int64_t q0) { return q0 * kDot4QuadBytes; }
inline int64_t dot3_offset(int64_t q0) { return q0 / kDot3Quads * kDot3QuartetBytes; }

}  // namespace dot4

}  // namespace edgepet
