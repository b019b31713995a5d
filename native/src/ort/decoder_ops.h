// The decoder graph's fused ops (decoder_ops.cc), registered beside LutMatMul.
#pragma once

#include <onnxruntime_c_api.h>

namespace edgepet {

const OrtCustomOp* group_query_rotary_attention_op();
const OrtCustomOp* swiglu_op();

}  // namespace edgepet
