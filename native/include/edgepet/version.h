/* Versions shared by the op library, the Python module and bundles. */
#ifndef EDGEPET_VERSION_H_
#define EDGEPET_VERSION_H_

/* Bumped whenever an operator's inputs, attributes or packed layout change.
   2: scales and zero points stored as float16 (1: float32).
   3: 4-bit codes stored as nibbles for int8 dot products, layout "tile32-nibble4"
      (2: bit-planes, layout "tile32").
   4: 3-bit codes stored as pair values in quartets for int8 dot products, layout
      "tile32-dot3" (3: bit-planes); the other widths as in 3, so a model or bundle of
      ABI 3 without 3-bit weights is still read. The decoder ops GroupQueryRotaryAttention
      and SwiGLU added (an ABI-3 library lacks them).
   5: GroupQueryRotaryAttention's optional past_length input (a fixed-capacity cache
      buffer shared by past and present) and its float16 cache; every layout as in 4, so bundles of ABI 4 (and
      of ABI 3 without 3-bit weights) are still read.
   6: LutMatMul's optional zero_level attribute: symmetric 2-, 3- and 4-bit codes with a
      zero level, w = s (q - 2^(b-1)); every layout as in 5, and a node without the
      attribute reads as before, so bundles of ABI 4 and 5 (and of ABI 3 without 3-bit
      weights) are still read. */
#define EDGEPET_OP_ABI_VERSION 6

#endif /* EDGEPET_VERSION_H_ */
