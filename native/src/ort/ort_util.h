// Small helpers over ONNX Runtime's C API: attributes, tensors, statuses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <onnxruntime_c_api.h>

#include "kernels/gemm.h"

namespace edgepet {

// The API table obtained at registration.
const OrtApi* ort_api();
void set_ort_api(const OrtApi* api);

OrtStatus* fail(const OrtApi* api, const std::string& message);

std::string node_name(const OrtApi* api, const OrtKernelInfo* info);
bool get_int(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t* out);
bool get_string(const OrtApi* api, const OrtKernelInfo* info, const char* name, std::string* out);
// What attribute `name` is when it is not of the type asked for: "a float", "a string",
// "a list of ints", "a list of floats"; null when there is no such attribute (or it is of
// another kind).
const char* attribute_kind(const OrtApi* api, const OrtKernelInfo* info, const char* name);

struct TensorView {
  bool present = false;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  int64_t elements = 0;
  const void* data = nullptr;
};

// Fills `out` for input i; an absent optional input leaves present = false.
OrtStatus* view_input(const OrtApi* api, OrtKernelContext* ctx, size_t i, TensorView* out);
// Fills `out` for input i when it is a constant (an initializer); present = false when it
// is not, or absent.
OrtStatus* constant_input(const OrtApi* api, const OrtKernelInfo* info, size_t i,
                          TensorView* out);
// Output i of `shape` (of the type the op declares for it): its data.
OrtStatus* output_data(const OrtApi* api, OrtKernelContext* ctx, size_t i,
                       const std::vector<int64_t>& shape, void** data);
OrtStatus* output_float(const OrtApi* api, OrtKernelContext* ctx, size_t i,
                        const std::vector<int64_t>& shape, float** data);

// "[2, 3, 4]": a shape for error messages.
std::string shape_str(const std::vector<int64_t>& shape);

// ONNX Runtime's intra-op pool as a Parallel (an op's threads are the session's); runs the
// tasks on the calling thread when there is one task or no pool.
class OrtParallel final : public Parallel {
 public:
  OrtParallel(const OrtApi* api, OrtKernelContext* ctx) : api_(api), ctx_(ctx) {}
  void run(int64_t total, void (*fn)(void*, int64_t), void* ctx) const override;

 private:
  const OrtApi* api_;
  OrtKernelContext* ctx_;
};

// Shape inference: output 0 is input 0's shape with the last dimension set to n.
OrtStatus* set_output_last_dim(const OrtApi* api, OrtShapeInferContext* ctx, int64_t n);

// The op-set version of ai.edgepet this library implements, for every op (start = end).
// ONNX Runtime (1.32) gives a custom domain one schema per op name, since the first op's
// start version, and never compares a model's op-set import with the end version: a model
// importing version 2 reaches a kernel unrefused, and the kernel is not told the import.
// The bundle reader refuses such a model instead (edgepet/runtime/bundle.py,
// docs/operator.md).
constexpr int kOpVersion = 1;

// The OrtCustomOp fields every op of the library shares: the API version it was built
// against, the CPU provider, inputs in default memory, required outputs, variadic arity 1
// (unused), and op-set version kOpVersion. Ops set their names, types and functions after.
void init_cpu_op(OrtCustomOp* op);

const OrtCustomOp* lut_matmul_op();

}  // namespace edgepet
