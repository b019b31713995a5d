// The internal interface every LUT kernel implements (one ISA per file).
//
// A product is computed in two steps: build_tables turns one activation row into
// int8 tables (one per quad of 4 inputs, one float scale per block of 32 inputs),
// then tile_dot reads those tables with the packed weight codes of one tile of 32
// output rows. The math is documented in docs/operator.md.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace edgepet {

constexpr int kTileRows = 32;      // output rows per packed tile
constexpr int kQuad = 4;           // activations per table
constexpr int kTableSize = 16;     // entries per table (2^kQuad)
// Inputs sharing one table scale: 64, or 32 where groups are 32 wide (blocks
// must nest in groups). 16 quads of 3-bit sums fit int16 with room (16 * 7 * 127).
constexpr int kMaxBlockK = 64;
constexpr int kMinBlockK = 32;
constexpr int kMaxBlockQuads = kMaxBlockK / kQuad;
// How far ahead of the codes being read every x86 kernel (the LUT kernels and the int8 dot
// kernels of 3 and 4 bits) asks for the next ones, into L2. A tile's codes are contiguous
// and the next tile's follow, so this is one stream, and a decode step streams every
// projection's weights from memory (a model of ~100 MB does not stay in L3).
// - LUT kernels, Llama-3.2-1B stack of benchmarks/kernels.py (2-bit, one thread, Zen 4):
//   8 KB into L2 ran 1.18-1.35x faster than 2 KB into L1, which ran 1.15x faster than 1 KB
//   (interleaved runs; docs/operator.md).
// - Dot kernels, which used to ask 1 KB ahead into L1: SmolLM2-135M 4-bit decode, one
//   thread, medians of interleaved runs of the libraries: 134 -> 154 tok/s; keeping the
//   1 KB into L1 as well gave 156, but made the 4096 x 4096 product with its weights in L3
//   14 % slower (0.164 -> 0.187 ms), where L2 alone cost no more than the 1 KB did (0.160).
//   4 KB ahead gave 146 tok/s and 16 KB 162 against 165 (another run).
// - No prefetch at all is faster only while the weights stay in cache: 4-bit 4096 x 4096
//   from L3 0.128 -> 0.114 ms without it, N = 65536 from memory 8.5 -> 9.9 ms
//   (docs/operator.md, point 5).
// - Codes in huge pages (GemmArgs::codes_in_huge_pages): the dot kernels ask for
//   symmetric 4-bit codes of groups of 64 or more nothing ahead (Dot4Job::prefetch,
//   docs/operator.md point 6).
constexpr int kPrefetchBytes = 8192;

// Asks for the cache lines kPrefetchBytes past [codes, codes + bytes) into L2: far enough
// ahead to cover memory latency, and L2 rather than L1, which a stream that far ahead
// would crowd (locality 1: prefetcht2 on x86, which current cores fill into L2).
inline void prefetch_codes(const uint8_t* codes, int bytes) {
  for (int line = 0; line < bytes; line += 64) {
    __builtin_prefetch(codes + kPrefetchBytes + line, 0, 1);
  }
}

// A vector the compiler must keep in a register: `in_register(load(p))` reads p once.
// Otherwise GCC folds a load into every instruction that uses the value (vpandd, vpsrlw,
// vgf2p8affineqb with a memory operand), and the x86 kernels read each 64 bytes of codes
// two or three times: load slots, not arithmetic, then bound a product whose weights stream
// from L3 (4-bit 4096 x 4096 GEMV on a Zen 4 core: 0.141 -> 0.130 ms, docs/operator.md).
template <class Vector>
inline Vector in_register(Vector v) {
#if defined(__x86_64__) || defined(__i386__)
  __asm__("" : "+v"(v));
#endif
  return v;
}

// What a weight's codes mean; mirrors the LutMatMul attributes.
struct WeightFormat {
  int64_t n = 0;           // output rows
  int64_t k = 0;           // inputs
  int bits = 0;            // stored bit-planes, 1..4 (ternary stores 2)
  bool ternary = false;
  bool symmetric = true;
  int64_t group_size = 0;  // inputs per scale group; k for per-row
  // Symmetric codes with a zero level (op ABI 6): w = s (q - 2^(b-1)), the grid of Q4_0
  // and of ONNX Runtime's symmetric MatMulNBits, instead of the odd levels
  // s (2q - (2^b - 1)). Bits 2, 3, 4; symmetric (no zero points); not ternary.
  bool zero_level = false;
};

// For a >= 0, b > 0; written so that no intermediate overflows (group_size may be any
// positive int64 an ONNX attribute holds).
inline int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0); }
// Largest N or K check_format accepts: every size below (packed bytes, scale counts,
// table entries per row) then fits int64 with room to spare.
constexpr int64_t kMaxDimension = (int64_t{1} << 31) - 1;
// Quads come in pairs (the single-plane stream packs two quads per 32 bytes), so K
// is padded with zeros to a multiple of 8.
inline int64_t num_quads(int64_t k) { return 2 * ceil_div(k, 2 * kQuad); }
inline int64_t num_tiles(int64_t n) { return ceil_div(n, kTileRows); }
inline int64_t num_groups(const WeightFormat& f) { return ceil_div(f.k, f.group_size); }
inline int table_block(const WeightFormat& f) {
  return f.group_size >= f.k || f.group_size % kMaxBlockK == 0 ? kMaxBlockK : kMinBlockK;
}
inline int64_t num_blocks(int64_t k, int block) { return ceil_div(k, block); }
inline int64_t num_blocks(const WeightFormat& f) { return num_blocks(f.k, table_block(f)); }
inline int64_t blocks_per_group(const WeightFormat& f) {
  return num_groups(f) == 1 ? num_blocks(f) : f.group_size / table_block(f);
}

// How every kernel walks K: groups (one scale each) made of table blocks (one table
// scale each) made of quads. Blocks nest in groups; the last of each may be short.
struct BlockPlan {
  int64_t quads, blocks, groups, per_group;
  int block_quads;

  explicit BlockPlan(const WeightFormat& f)
      : quads(num_quads(f.k)),
        blocks(num_blocks(f)),
        groups(num_groups(f)),
        per_group(blocks_per_group(f)),
        block_quads(table_block(f) / kQuad) {}

  int64_t first_block(int64_t group) const { return group * per_group; }
  int64_t end_block(int64_t group) const { return std::min(blocks, (group + 1) * per_group); }
  int64_t first_quad(int64_t block) const { return block * block_quads; }
  int quads_in(int64_t block) const {
    return static_cast<int>(std::min<int64_t>(quads - first_quad(block), block_quads));
  }
};
// Bytes of one tile's codes for one pair of quads: 32 rows x 8 inputs x bits / 8.
constexpr int64_t pair_stride(int bits) { return 32 * bits; }
// 3 bits (op ABI 4): quartets of 4 quads, 16 inputs and 192 bytes per tile (dot4.h).
constexpr int kDot3Quads = 4;
constexpr int kDot3QuartetBytes = 192;
inline int64_t packed_bytes(const WeightFormat& f) {
  if (f.bits == 3 && !f.ternary) {
    return num_tiles(f.n) * ceil_div(f.k, kDot3Quads * kQuad) * kDot3QuartetBytes;
  }
  return num_tiles(f.n) * num_quads(f.k) / 2 * pair_stride(f.bits);
}
// Scales and zero points are tile-major, [tiles][groups][32] (rows past N are zero): one
// tile's are 64 contiguous bytes per group. Group-major [groups][N] put them N * 2 bytes
// apart, a separate page per group for wide layers, which a GEMV streaming weights from
// memory waited on.
inline int64_t scale_count(const WeightFormat& f) {
  return num_tiles(f.n) * num_groups(f) * kTileRows;
}

// Tables of one activation row.
struct Tables {
  const int8_t* entries;       // [quads][16]
  const float* block_scales;   // [blocks]: float value of one table step (see table_block);
                               // NaN for a block holding a NaN or an infinity
  const float* group_sums;     // [groups]: sum of the activations of each group
  const float* base_acc;       // [groups]: the group accumulator (sum over its blocks of
                               // plane sum x step, fused multiply-adds in block order) of
                               // a weight row whose codes in the group are all base_code;
                               // asymmetric and ternary formats only
};

// Activation rows one tile_dot call reads against the same weight codes: the
// unpacked indices are shared, which pays off in prefill (M > 1).
constexpr int kMaxRowsPerCall = 2;

// Scales and zero points are stored as IEEE fp16 (the bits, as uint16): at 2 bits and
// group 64 an fp32 scale would add half a bit per weight to every byte a GEMV reads.
using Half = uint16_t;

// fp16 -> fp32, exact (every fp16 value is a float). The portable form for the
// reference kernel; vector kernels convert 8 at a time (F16C, NEON fcvtl).
inline float half_to_float(Half h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1Fu;
  const uint32_t mantissa = h & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // inf, nan
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    uint32_t m = mantissa;
    do {
      ++e;
      m <<= 1;
    } while ((m & 0x400u) == 0);
    bits = sign | (static_cast<uint32_t>(112 - e) << 23) | ((m & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// fp32 -> fp16, rounded to nearest even (overflow to inf, NaN kept a NaN, subnormals
// rounded too): the portable form of F16C's vcvtps2ph and NEON's fcvtn, for the decoder's
// fp16 KV cache.
inline Half float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {  // inf or NaN (quiet, with the top mantissa bits)
    return static_cast<Half>(sign | 0x7C00u |
                             (magnitude > 0x7F800000u ? 0x200u | ((magnitude >> 13) & 0x3FFu)
                                                      : 0u));
  }
  if (magnitude >= 0x477FF000u) return static_cast<Half>(sign | 0x7C00u);  // rounds past 65504
  if (magnitude < 0x38800000u) {  // below the smallest normal half: a subnormal or zero
    if (magnitude < 0x33000000u) return static_cast<Half>(sign);  // below half the smallest
    const uint32_t shift = 126u - (magnitude >> 23);  // 14..24
    const uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    uint32_t h = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u), halfway = 1u << (shift - 1u);
    if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
    return static_cast<Half>(sign | h);
  }
  // Normal: rebias the exponent, keep 10 mantissa bits, round to nearest even (a carry into
  // the exponent is right, up to inf).
  uint32_t h = ((magnitude >> 13) - (112u << 10));
  const uint32_t rest = magnitude & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<Half>(sign | h);
}

// One tile (32 rows) of the weight, read against 1..kMaxRowsPerCall activation rows.
struct TileJob {
  WeightFormat format;
  const uint8_t* codes;        // the tile's packed codes: [quads / 2][pair_stride]
  const Half* scales;          // the tile's scales: [groups][32], contiguous
  const Half* zero_points;     // same layout, or null
  int rows;                    // activation rows in this call
  Tables tables[kMaxRowsPerCall];
  float* out[kMaxRowsPerCall]; // 32 outputs per activation row
};

struct Kernel {
  const char* name;
  // a: k floats. entries: num_quads(k)*16 bytes; block_scales and block_sums (the
  // activations' sum per block): num_blocks(k, block) each; block: 32 or 64. Every ISA's
  // is tables::build_tables (tables.h) with its own 8-entry arithmetic.
  void (*build_tables)(const float* a, int64_t k, int block, int8_t* entries,
                       float* block_scales, float* block_sums);
  void (*tile_dot)(const TileJob& job);
};

const Kernel& reference_kernel();
// Null where the CPU or the build lacks AVX2, FMA or F16C.
const Kernel* avx2_kernel();
// Null where the CPU or the build lacks AVX512F + AVX512BW + AVX512VL.
const Kernel* avx512_kernel();
// Null except in aarch64 builds (every aarch64 CPU has NEON).
const Kernel* neon_kernel();

// Epilogue constants of the code rule: y += sc * planesum + off * sum(a).
// sc = s (symmetric) or s/2; off = s * ((2^b - 1)/2 - z), z = 1 for ternary and
// 2^(b-1) for zero-level codes (so off = -s/2: y += s/2 (planesum - sum(a))).
struct GroupAffine {
  float sc;
  float off;
};
inline GroupAffine group_affine(const WeightFormat& f, float s, float z) {
  if (f.ternary) return {0.5f * s, 0.5f * s};
  if (f.zero_level) return {0.5f * s, -0.5f * s};
  if (f.symmetric) return {s, 0.0f};
  const float mid = 0.5f * static_cast<float>((1 << f.bits) - 1);
  return {0.5f * s, s * (mid - z)};
}

// Formats with an offset term (asymmetric, ternary) have a base code: asymmetric 0 (how
// quantize stores an all-zero or constant group: scale |c|, zero point -c/|c|), ternary 1
// (the zero weight). The offset term alone carries the rounding of the tables' quad sums,
// so a group whose codes are all the base code, computed by the rule above, would give
// that rounding instead of exactly s * (base - z) * sum(a). The kernels recognise such a
// group by its accumulator (it equals Tables::base_acc) and add the exact value instead.
// Zero-level codes have an offset term but no base code: a group whose codes are all
// 2^(b-1) gives that rounding times s, not 0. quantize stores a group of zeros with scale 0
// (its largest magnitude over -2^(b-1)), which gives 0 exactly.
inline bool has_base_code(const WeightFormat& f) { return f.ternary || !f.symmetric; }
inline int base_code(const WeightFormat& f) { return f.ternary ? 1 : 0; }
// The plane sum of a base-code row in units of the quads' int8 sums (entry 15):
// sum_i 2^i (2 bit_i - 1) for the bits of the base code.
inline int base_plane_factor(const WeightFormat& f) {
  return 2 * base_code(f) - ((1 << f.bits) - 1);
}

}  // namespace edgepet
