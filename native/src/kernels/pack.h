// The "tile32" weight layout: the one place that knows where a code's bits live.
#pragma once

#include <cstdint>

#include "kernels/kernel.h"

namespace edgepet {

// Name recorded in the LutMatMul `layout` attribute: tile32 bit-plane indices for 1-2 bits
// and ternary, nibble codes for 4 bits and pair values in quartets for 3 bits (dot4.h).
// Op ABI 3's "tile32-nibble4" stored 3 bits as bit-planes; its other widths are these, so
// the op still reads an ABI-3 model without 3-bit weights (kAbi3LayoutName). Plain
// "tile32" (ABI 2) stored 4 bits as bit-planes too; the op refuses it.
constexpr const char* kLayoutName = "tile32-dot3";
constexpr const char* kAbi3LayoutName = "tile32-nibble4";

// Where the 4-bit table index of (row in tile, plane, quad) sits inside the bytes
// of its pair of quads (32 * bits of them).
struct NibbleAddress {
  int byte;   // offset from the start of the quad pair's bytes
  int shift;  // 0: low nibble, 4: high nibble
};

// The streams of a quad pair's bytes, for the vector kernels, which read them 32 bytes
// at a time. Pair stream s of quad `parity` (0 or 1) holds planes (2s, 2s+1) of all 32
// rows; odd widths end with one single-plane stream shared by both quads.
constexpr int kStreamBytes = 32;
constexpr int pair_stream_offset(int bits, int parity, int s) {
  return kStreamBytes * ((bits / 2) * parity + s);
}
constexpr int single_stream_offset(int bits) { return pair_stream_offset(bits, 2, 0); }

// parity: 0 for the first quad of the pair, 1 for the second.
inline NibbleAddress nibble_address(int bits, int row, int plane, int parity) {
  if (plane < 2 * (bits / 2)) {
    // Pair streams, first all of quad 0's, then quad 1's: byte c holds planes
    // (2s, 2s+1) of row c/2 (low nibble) and of row 16 + c/2 (high nibble).
    return {pair_stream_offset(bits, parity, plane / 2) + 2 * (row % 16) + plane % 2,
            4 * (row / 16)};
  }
  // Single stream, 32 bytes shared by both quads (low nibbles: quad 0, high: quad 1).
  // Quad 0: byte u holds row u/2 for even u and row 16 + u/2 for odd u; quad 1 the
  // other way round, so that a byte blend of the two lookups puts one row's two quads
  // side by side (rows 0..15 in one blend, 16..31 in the other).
  const bool low_rows = row < 16;
  const int r = row % 16;
  const int u = (low_rows == (parity == 0)) ? 2 * r : 2 * r + 1;
  return {single_stream_offset(bits) + u, 4 * parity};
}

inline int packed_index(const uint8_t* pair_codes, int bits, int row, int plane, int parity) {
  const NibbleAddress at = nibble_address(bits, row, plane, parity);
  return (pair_codes[at.byte] >> at.shift) & 0xF;
}

// codes: [n][k] row-major, each < 2^bits. out: packed_bytes() bytes. 4-bit codes are
// written as nibbles, 3-bit as quartets (dot4.h), the other widths as bit-plane indices
// (above).
void pack_codes(const uint8_t* codes, int64_t n, int64_t k, int bits, uint8_t* out);

}  // namespace edgepet
