// The "tile32" weight layout: the one place that knows where a code's bits live.
#pragma once

#include <cstdint>

#include "kernels/kernel.h"

namespace edgepet {

// Name recorded in the LutMatMul `layout` attribute.
constexpr const char* kLayoutName = "tile32";

// Where the 4-bit table index of (row in tile, plane) sits inside one quad's bytes.
struct NibbleAddress {
  int byte;   // offset from the start of the quad's 16*bits bytes
  int shift;  // 0: low nibble, 4: high nibble
};

inline NibbleAddress nibble_address(int bits, int row, int plane) {
  const int pairs = bits / 2;
  if (plane < 2 * pairs) {
    // Pair stream: byte c holds planes (2s, 2s+1) of row c/2 (low) and 16 + c/2 (high).
    const int stream = plane / 2;
    return {32 * stream + 2 * (row % 16) + plane % 2, 4 * (row / 16)};
  }
  // Single stream: unpacked position u holds row u/2 (u even) or 16 + u/2 (u odd);
  // positions 0..15 are low nibbles of bytes 0..15, 16..31 their high nibbles.
  const int u = row < 16 ? 2 * row : 2 * (row - 16) + 1;
  return {32 * pairs + (u & 15), 4 * (u >> 4)};
}

inline int packed_index(const uint8_t* quad_codes, int bits, int row, int plane) {
  const NibbleAddress at = nibble_address(bits, row, plane);
  return (quad_codes[at.byte] >> at.shift) & 0xF;
}

// codes: [n][k] row-major, each < 2^bits. out: packed_bytes() bytes.
void pack_codes(const uint8_t* codes, int64_t n, int64_t k, int bits, uint8_t* out);

}  // namespace edgepet
