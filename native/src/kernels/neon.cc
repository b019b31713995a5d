// NEON kernel (aarch64): tbl looks up 16 table indices at once. Same tile32 layout as
// every other kernel, and tables built bit-identically to the reference kernel's (same
// additions, same rounding), so results match the reference to float rounding.
//
// Widening: a pair stream's lookups hold (plane p, plane p+1) of a row in adjacent
// bytes, so vpadalq_s8 widens and adds them (weights [1, 1]) in one instruction; a
// second vpadalq_s8 on the odd bytes alone makes the weights [1, 2]. A single-plane
// stream is blended so that a row's two quads sit in adjacent bytes (see below).
#include <arm_neon.h>

#include <algorithm>

#include "kernels/kernel.h"
#include "kernels/pack.h"
#include "kernels/tables.h"

namespace edgepet {
namespace {

// Entries 0..7 of one quad's table (bit 3 clear: a3 enters negated), summed in the
// reference order ((a0 a1) a2) a3, so that the rounded tables are bit-identical.
inline void half_table(const float* a4, float32x4_t out[2]) {
  // Sign bits to flip a_l for entry idx where bit l of idx is clear.
  static const uint32_t kFlip[3][8] = {
      {1u << 31, 0, 1u << 31, 0, 1u << 31, 0, 1u << 31, 0},
      {1u << 31, 1u << 31, 0, 0, 1u << 31, 1u << 31, 0, 0},
      {1u << 31, 1u << 31, 1u << 31, 1u << 31, 0, 0, 0, 0}};
  for (int h = 0; h < 2; ++h) {
    float32x4_t t = vreinterpretq_f32_u32(
        veorq_u32(vreinterpretq_u32_f32(vdupq_n_f32(a4[0])), vld1q_u32(kFlip[0] + 4 * h)));
    for (int l = 1; l < 3; ++l) {
      t = vaddq_f32(t, vreinterpretq_f32_u32(veorq_u32(
                           vreinterpretq_u32_f32(vdupq_n_f32(a4[l])), vld1q_u32(kFlip[l] + 4 * h))));
    }
    out[h] = vsubq_f32(t, vdupq_n_f32(a4[3]));
  }
}

// Tables (tables.h) with 8 entries in two vectors.
struct NeonTableOps {
  struct Half {
    float32x4_t v[2];
  };

  Half half_table(const float* a4) const {
    Half h;
    edgepet::half_table(a4, h.v);
    return h;
  }
  float entry0(const Half& h) const { return vgetq_lane_f32(h.v[0], 0); }
  float largest(const Half* h, int n) const {
    float32x4_t top = vdupq_n_f32(0.0f);
    for (int i = 0; i < n; ++i) {
      top = vmaxq_f32(top, vmaxq_f32(vabsq_f32(h[i].v[0]), vabsq_f32(h[i].v[1])));
    }
    return vmaxvq_f32(top);
  }
  void store(const Half& h, float inv, int8_t* out) const {
    const int16x8_t i16 = vcombine_s16(vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(h.v[0], inv))),
                                       vqmovn_s32(vcvtnq_s32_f32(vmulq_n_f32(h.v[1], inv))));
    const int8x8_t low = vqmovn_s16(i16);
    // Entry 15 - j is minus entry j.
    vst1q_s8(out, vcombine_s8(low, vrev64_s8(vneg_s8(low))));
  }
};

void build_tables(const float* a, int64_t k, int block, int8_t* entries, float* block_scales,
                  float* block_sums) {
  tables::build_tables(NeonTableOps(), a, k, block, entries, block_scales, block_sums);
}

// int16 sums of one block for the tile's 32 rows, per weight class c (planes 2c and
// 2c+1, scaled by 4^c at the flush) and per group of 8 rows.
template <int Bits>
inline void block_sums16(const uint8_t* codes, const int8_t* tables, int quads,
                         int16x8_t acc[2][4]) {
  static_assert(Bits >= 1 && Bits <= 2, "3- and 4-bit formats use the dot kernels (dot4.h)");
  constexpr int kPairs = Bits / 2;
  constexpr bool kSingle = Bits & 1;
  constexpr int kSingleClass = (Bits - 1) / 2;
  const uint8x16_t low4 = vdupq_n_u8(0x0F);
  const int8x16_t odd = vreinterpretq_s8_u16(vdupq_n_u16(0xFF00));
  for (int c = 0; c < 2; ++c)
    for (int g = 0; g < 4; ++g) acc[c][g] = vdupq_n_s16(0);
  for (int q = 0; q < quads; q += 2, codes += pair_stride(Bits)) {
    int8x16_t table[2];
    for (int p = 0; p < 2; ++p) {
      table[p] = vld1q_s8(tables + (q + p) * kTableSize);
      for (int s = 0; s < kPairs; ++s) {
        const uint8_t* c = codes + pair_stream_offset(Bits, p, s);
        const uint8x16_t x[2] = {vld1q_u8(c), vld1q_u8(c + 16)};
        for (int h = 0; h < 2; ++h) {
          // low nibbles: rows 8h..8h+7; high nibbles: rows 16+8h..16+8h+7
          const int8x16_t lo = vqtbl1q_s8(table[p], vandq_u8(x[h], low4));
          const int8x16_t hi = vqtbl1q_s8(table[p], vshrq_n_u8(x[h], 4));
          acc[s][h] = vpadalq_s8(vpadalq_s8(acc[s][h], lo), vandq_s8(lo, odd));
          acc[s][2 + h] = vpadalq_s8(vpadalq_s8(acc[s][2 + h], hi), vandq_s8(hi, odd));
        }
      }
    }
    if (kSingle) {
      // Even bytes of quad 0's lookups with odd bytes of quad 1's hold one row's two
      // quads side by side (the layout of pack.h): one vpadalq_s8 per 8 rows.
      const uint8_t* c = codes + single_stream_offset(Bits);
      for (int h = 0; h < 2; ++h) {
        const uint8x16_t x = vld1q_u8(c + 16 * h);
        const int8x16_t r0 = vqtbl1q_s8(table[0], vandq_u8(x, low4));
        const int8x16_t r1 = vqtbl1q_s8(table[1], vshrq_n_u8(x, 4));
        const uint8x16_t odd_bytes = vreinterpretq_u8_s8(odd);
        acc[kSingleClass][h] = vpadalq_s8(acc[kSingleClass][h], vbslq_s8(odd_bytes, r1, r0));
        acc[kSingleClass][2 + h] =
            vpadalq_s8(acc[kSingleClass][2 + h], vbslq_s8(odd_bytes, r0, r1));
      }
    }
  }
}

// Four fp16 scales or zero points as floats (fcvtl).
inline float32x4_t load_halves(const Half* p) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

template <int Bits>
void tile_dot_one(const TileJob& job, const Tables& tables, float* out) {
  const WeightFormat& f = job.format;
  const BlockPlan plan(f);
  const float mid = 0.5f * static_cast<float>((1 << Bits) - 1);
  float32x4_t y[8];
  for (auto& v : y) v = vdupq_n_f32(0.0f);
  for (int64_t g = 0; g < plan.groups; ++g) {
    float32x4_t acc[8];
    for (auto& v : acc) v = vdupq_n_f32(0.0f);
    for (int64_t b = plan.first_block(g); b < plan.end_block(g); ++b) {
      const int64_t q0 = plan.first_quad(b);
      const int n = plan.quads_in(b);
      int16x8_t sums[2][4];
      block_sums16<Bits>(job.codes + q0 / 2 * pair_stride(Bits), tables.entries + q0 * kTableSize, n,
                         sums);
      const float step = tables.block_scales[b];
      for (int h = 0; h < 4; ++h) {
        int32x4_t lo = vmovl_s16(vget_low_s16(sums[0][h]));
        int32x4_t hi = vmovl_high_s16(sums[0][h]);
        if (Bits > 2) {
          lo = vmlal_n_s16(lo, vget_low_s16(sums[1][h]), 4);
          hi = vmlal_high_n_s16(hi, sums[1][h], 4);
        }
        acc[2 * h] = vfmaq_n_f32(acc[2 * h], vcvtq_f32_s32(lo), step);
        acc[2 * h + 1] = vfmaq_n_f32(acc[2 * h + 1], vcvtq_f32_s32(hi), step);
      }
    }
    const Half* s = job.scales + g * kTileRows;
    const float group_sum = tables.group_sums[g];
    for (int i = 0; i < 8; ++i) {
      const float32x4_t scale = load_halves(s + 4 * i);
      // Rows whose codes are all the base code add their exact value (kernel.h).
      const auto is_base = [&] { return vceqq_f32(acc[i], vdupq_n_f32(tables.base_acc[g])); };
      if (f.ternary) {  // the base code is the zero weight
        const float32x4_t sc = vmulq_n_f32(scale, 0.5f);
        const float32x4_t rule = vaddq_f32(vmulq_f32(sc, acc[i]), vmulq_n_f32(sc, group_sum));
        y[i] = vaddq_f32(y[i], vbslq_f32(is_base(), vdupq_n_f32(0.0f), rule));
      } else if (f.zero_level) {  // sc = s/2, off = -s/2 (kernel.h); no base code
        const float32x4_t sc = vmulq_n_f32(scale, 0.5f);
        y[i] = vfmaq_f32(y[i], sc, vsubq_f32(acc[i], vdupq_n_f32(group_sum)));
      } else if (f.symmetric) {
        y[i] = vfmaq_f32(y[i], scale, acc[i]);
      } else {
        const float32x4_t z = load_halves(job.zero_points + g * kTileRows + 4 * i);
        const float32x4_t off = vmulq_f32(scale, vsubq_f32(vdupq_n_f32(mid), z));
        const float32x4_t sc = vmulq_n_f32(scale, 0.5f);
        const float32x4_t rule = vaddq_f32(vmulq_f32(sc, acc[i]), vmulq_n_f32(off, group_sum));
        const uint32x4_t base = is_base();
        if (vmaxvq_u32(base) == 0) {  // the common case: no base-code row
          y[i] = vaddq_f32(y[i], rule);
        } else {
          const float32x4_t exact = vmulq_n_f32(vmulq_f32(scale, z), -group_sum);
          y[i] = vaddq_f32(y[i], vbslq_f32(base, exact, rule));
        }
      }
    }
  }
  for (int i = 0; i < 8; ++i) vst1q_f32(out + 4 * i, y[i]);
}

template <int Bits>
void tile_dot_bits(const TileJob& job) {
  for (int m = 0; m < job.rows; ++m) tile_dot_one<Bits>(job, job.tables[m], job.out[m]);
}

// 1 and 2 bits and ternary: lut_gemm hands 3- and 4-bit formats to dot4_gemm (dot4.h).
void tile_dot(const TileJob& job) {
  return job.format.bits == 1 ? tile_dot_bits<1>(job) : tile_dot_bits<2>(job);
}

}  // namespace

const Kernel* neon_kernel() {
  static const Kernel kernel{"neon", build_tables, tile_dot};
  return &kernel;
}

}  // namespace edgepet
