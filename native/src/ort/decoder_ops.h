// The decoder graph's fused ops (decoder_ops.cc), registered beside LutMatMul.
#pragma once

#include <onnxruntime_c_api.h>

namespace edgepet {

// GroupQueryRotaryAttention with a float cache, and with a float16 cache (one op name,
// two registrations: ONNX Runtime picks the kernel by the cache's type).
const OrtCustomOp* group_query_rotary_attention_op();
const OrtCustomOp* group_query_rotary_attention_half_op();
const OrtCustomOp* swiglu_op();

}  // namespace edgepet
