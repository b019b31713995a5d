#include "kernels/pack.h"

#include <cstring>

#include "kernels/dot4.h"

namespace edgepet {

namespace {

// 4 bits: nibble codes for the dot kernels (dot4.h, dot4_address).
void pack_nibbles(const uint8_t* codes, int64_t n, int64_t k, uint8_t* out) {
  const int64_t tile_bytes = num_quads(k) * kDot4QuadBytes;
  for (int64_t r = 0; r < n; ++r) {
    uint8_t* tile = out + r / kTileRows * tile_bytes;
    const int row = static_cast<int>(r % kTileRows);
    for (int64_t col = 0; col < k; ++col) {
      const Dot4Address at = dot4_address(row, col);
      tile[at.byte] |= static_cast<uint8_t>((codes[r * k + col] & 0xF) << at.shift);
    }
  }
}

// 3 bits: pair values in quartets for the dot kernels (dot4.h, dot3_bit).
void pack_triples(const uint8_t* codes, int64_t n, int64_t k, uint8_t* out) {
  const WeightFormat f{n, k, 3, false, true, k};
  const int64_t tile_bytes = dot_tile_bytes(f);
  for (int64_t r = 0; r < n; ++r) {
    uint8_t* tile = out + r / kTileRows * tile_bytes;
    const int row = static_cast<int>(r % kTileRows);
    for (int64_t col = 0; col < k; ++col)
      for (int e = 0; e < 3; ++e) {
        const Dot3Bit at = dot3_bit(row, col, e);
        tile[at.byte] |= static_cast<uint8_t>(((codes[r * k + col] >> e) & 1) << at.bit);
      }
  }
}

}  // namespace

void pack_codes(const uint8_t* codes, int64_t n, int64_t k, int bits, uint8_t* out) {
  const int64_t quads = num_quads(k);
  const int64_t stride = pair_stride(bits);
  WeightFormat f;
  f.n = n;
  f.k = k;
  f.bits = bits;
  std::memset(out, 0, static_cast<size_t>(packed_bytes(f)));
  if (bits == 4) return pack_nibbles(codes, n, k, out);
  if (bits == 3) return pack_triples(codes, n, k, out);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t tile = r / kTileRows;
    const int row = static_cast<int>(r % kTileRows);
    const uint8_t* code_row = codes + r * k;
    for (int64_t j = 0; j < quads; ++j) {
      uint8_t* pair = out + (tile * quads / 2 + j / 2) * stride;
      for (int plane = 0; plane < bits; ++plane) {
        int index = 0;
        for (int l = 0; l < kQuad; ++l) {
          const int64_t col = j * kQuad + l;
          if (col < k) index |= ((code_row[col] >> plane) & 1) << l;
        }
        const NibbleAddress at = nibble_address(bits, row, plane, static_cast<int>(j % 2));
        pair[at.byte] |= static_cast<uint8_t>(index << at.shift);
      }
    }
  }
}

}  // namespace edgepet
