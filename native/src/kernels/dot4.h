// The 4-bit dot-product path: nibble codes times int8 activations (docs/operator.md,
// "4-bit: int8 dot products"). At 4 bits a LUT kernel makes 4 lookups per 4 weights (one
// per bit-plane); a dot product makes one multiply-add per weight, 4 of them per
// instruction (vpdpbusd, maddubs, sdot/smull), on codes unpacked with one and/shift.
//
// Storage (layout "tile32-nibble4", bits = 4, not ternary): tiles of 32 rows, then
// quads of 4 inputs (K padded with zeros to a multiple of 8, as tile32), 64 bytes per
// tile and quad. Byte b holds, in its low nibble, the code of row b/4 at input
// 4j + b%4 and, in its high nibble, that of row 16 + b/4: a 64-byte vector is the quad
// for all 32 rows, each 32-bit lane one row's 4 codes (16 rows per nibble).
//
// Activations: int8 per table block (32 or 64 inputs, as the LUT path's blocks), with
// step = max|a| / 127. The LUT path's plane sum of a group, sum_k (2 q_k - 15) a_k,
// becomes
//   sum_blocks dot_b * 2 step_b  +  sum_blocks (-15 * sum(x)_b) * step_b,
// dot_b = sum_k q_k x_k over the block (an int32). The kernels accumulate the first
// part (fused multiply-adds in block order) and add the second, which depends on the
// activations alone: Dot4Activations::base_acc, also the plane sum of a row of zero
// codes, so the base-code rule (kernel.h) compares against it exactly. Everything after
// the plane sum (group_affine, the epilogue) is that of kernel.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "kernels/kernel.h"
#include "kernels/tables.h"

namespace edgepet {

// Bytes of one tile's codes for one quad of 4 inputs.
constexpr int kDot4QuadBytes = 64;
// Activation rows one tile call reads against the same codes (prefill shares the
// unpacked codes between them).
constexpr int kDot4MaxRows = 4;

// 4-bit non-ternary weights are stored as nibble codes and computed by dot products.
inline bool uses_dot4(const WeightFormat& f) { return f.bits == 4 && !f.ternary; }

// One activation row, quantized.
struct Dot4Activations {
  const int8_t* x;            // [num_quads(k) * 4]: round(a / step), zero past K
  const float* steps;         // [blocks]: max|a| / 127 of the block; NaN for a non-finite one
  const float* group_sums;    // [groups]: sum of the activations of each group
  const float* base_acc;      // [groups]: sum_blocks (-15 sum(x)) * step (fused, in block
                              // order): the plane sum of a row of zero codes (kernel.h,
                              // base_code), and the part of every row's that the dot
                              // products leave out
};

struct Dot4Job {
  WeightFormat format;
  const uint8_t* codes;       // the tile's codes: [quads][64]
  const Half* scales;         // the tile's scales: [groups][32]
  const Half* zero_points;    // same layout, or null
  int rows;                   // activation rows in this call, 1..kDot4MaxRows
  Dot4Activations acts[kDot4MaxRows];
  float* out[kDot4MaxRows];   // 32 outputs per activation row
};

struct Dot4Kernel {
  const char* name;
  // x[i] = round(a[i] * inv) (to nearest, ties to even) for i < n: the one rounding every
  // kernel does the same way, so activations quantize bit-identically on every ISA.
  void (*round_block)(const float* a, int n, float inv, int8_t* x);
  void (*tile_dot)(const Dot4Job& job);
};

const Dot4Kernel& reference_dot4_kernel();
// Null where the CPU or build lacks AVX2, FMA and F16C.
const Dot4Kernel* avx2_dot4_kernel();
// Null where the CPU or build lacks AVX512F/BW/VL and AVX512-VNNI.
const Dot4Kernel* avx512_vnni_dot4_kernel();
// Null except in aarch64 builds.
const Dot4Kernel* neon_dot4_kernel();

struct GemmArgs;
class Parallel;
// Y = A . dequant(W)^T (+ bias) for a format uses_dot4 accepts (gemm.h's GemmArgs).
void dot4_gemm(const Dot4Kernel& kernel, const GemmArgs& args, const Parallel& parallel);
// The dot kernel that goes with a LUT kernel (the same ISA; dispatch.cc).
const Dot4Kernel& dot4_kernel_for(const Kernel& lut);

// Where a code lives: byte offset inside its tile's codes and nibble shift (0 or 4). The
// one definition of the layout; pack.cc writes it, the kernels read it.
struct Dot4Address {
  int64_t byte;
  int shift;
};
inline Dot4Address dot4_address(int row, int64_t input) {
  return {input / kQuad * kDot4QuadBytes + 4 * (row % 16) + input % kQuad, 4 * (row / 16)};
}

namespace dot4 {

// Sum of n activations in a fixed order (8 interleaved partial sums, then a fixed tree),
// the same on every ISA: a vectorising compiler keeps each lane's order.
inline float block_sum(const float* a, int n) {
  float lane[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] += a[i + l];
  for (int l = 0; i + l < n; ++l) lane[l] += a[i + l];
  return ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
}

// max |a| of n finite activations (exact in any order; 8 lanes so that it vectorises).
inline float block_max(const float* a, int n) {
  float lane[8] = {};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) lane[l] = std::max(lane[l], std::fabs(a[i + l]));
  for (int l = 0; i + l < n; ++l) lane[l] = std::max(lane[l], std::fabs(a[i + l]));
  float top = 0.0f;
  for (float v : lane) top = std::max(top, v);
  return top;
}

// One block's activations quantized; outside the ordinary range (tables.h) they are
// first scaled by a power of two (exact) so that max|a| lies in [1, 2), and step and sum
// scaled back. Non-finite inputs give a NaN step and sum and zero codes.
inline void quantize_block(const Dot4Kernel& kernel, const float* a, int n, int8_t* x,
                           float* step, float* sum) {
  float top = block_max(a, n);
  float total = block_sum(a, n);
  const bool ordinary = std::isfinite(total) &&
                        (top == 0.0f || (top >= tables::kOrdinaryLow && top <= tables::kOrdinaryHigh));
  if (ordinary) {
    kernel.round_block(a, n, top > 0.0f ? 127.0f / top : 0.0f, x);
    *step = top / 127.0f;
    *sum = total;
    return;
  }
  bool finite = true;
  for (int i = 0; i < n; ++i) finite = finite && std::isfinite(a[i]);
  if (!finite) {
    std::memset(x, 0, static_cast<size_t>(n));
    *step = *sum = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  int exponent = 0;
  std::frexp(top, &exponent);  // top = m * 2^exponent, m in [0.5, 1)
  const int e = std::clamp(1 - exponent, -126, 126);
  const float up = tables::power_of_two(e), down = tables::power_of_two(-e);
  float scaled[kMaxBlockK];
  for (int i = 0; i < n; ++i) scaled[i] = a[i] * up;
  top = block_max(scaled, n);
  kernel.round_block(scaled, n, 127.0f / top, x);
  *step = top / 127.0f * down;
  *sum = block_sum(scaled, n) * down;
}

}  // namespace dot4

}  // namespace edgepet
