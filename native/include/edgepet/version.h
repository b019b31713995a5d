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
      of ABI 3 without 3-bit weights) are still read. */
#define EDGEPET_OP_ABI_VERSION 5

#endif /* EDGEPET_VERSION_H_ */
