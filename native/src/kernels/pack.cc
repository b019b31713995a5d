#include "kernels/pack.h"

#include <cstring>

namespace edgepet {

void pack_codes(const uint8_t* codes, int64_t n, int64_t k, int bits, uint8_t* out) {
  const int64_t quads = num_quads(k);
  const int64_t stride = pair_stride(bits);
  WeightFormat f;
  f.n = n;
  f.k = k;
  f.bits = bits;
  std::memset(out, 0, static_cast<size_t>(packed_bytes(f)));
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
