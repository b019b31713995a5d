/* Versions shared by the op library, the Python module and bundles. */
#ifndef EDGEPET_VERSION_H_
#define EDGEPET_VERSION_H_

/* Bumped whenever an operator's inputs, attributes or packed layout change.
   2: scales and zero points stored as float16 (1: float32).
   3: 4-bit codes stored as nibbles for int8 dot products, layout "tile32-nibble4"
      (2: bit-planes, layout "tile32").
   4: the decoder ops GroupQueryRotaryAttention and SwiGLU added; LutMatMul and its
      storage unchanged, so a library of ABI 4 also runs ABI-3 bundles (the bundle reader
      knows which ABIs only added ops: edgepet/runtime/bundle.py, runs_bundle_abi). */
#define EDGEPET_OP_ABI_VERSION 4

#endif /* EDGEPET_VERSION_H_ */
