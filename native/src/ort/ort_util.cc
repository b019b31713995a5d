#include "ort/ort_util.h"

#include <atomic>

namespace edgepet {

namespace {
std::atomic<const OrtApi*> g_api{nullptr};
}

const OrtApi* ort_api() { return g_api.load(); }
void set_ort_api(const OrtApi* api) { g_api.store(api); }

OrtStatus* fail(const OrtApi* api, const std::string& message) {
  return api->CreateStatus(ORT_INVALID_ARGUMENT, message.c_str());
}

std::string node_name(const OrtApi* api, const OrtKernelInfo* info) {
  size_t size = 0;
  if (OrtStatus* s = api->KernelInfo_GetNodeName(info, nullptr, &size)) {
    api->ReleaseStatus(s);
    return "?";
  }
  std::string name(size, '\0');
  if (OrtStatus* s = api->KernelInfo_GetNodeName(info, name.data(), &size)) {
    api->ReleaseStatus(s);
    return "?";
  }
  if (!name.empty() && name.back() == '\0') name.pop_back();
  return name;
}

bool get_int(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t* out) {
  if (OrtStatus* s = api->KernelInfoGetAttribute_int64(info, name, out)) {
    api->ReleaseStatus(s);
    return false;
  }
  return true;
}

bool get_string(const OrtApi* api, const OrtKernelInfo* info, const char* name,
                std::string* out) {
  size_t size = 0;
  if (OrtStatus* s = api->KernelInfoGetAttribute_string(info, name, nullptr, &size)) {
    api->ReleaseStatus(s);
    return false;
  }
  out->assign(size, '\0');
  if (OrtStatus* s = api->KernelInfoGetAttribute_string(info, name, out->data(), &size)) {
    api->ReleaseStatus(s);
    return false;
  }
  if (!out->empty() && out->back() == '\0') out->pop_back();
  return true;
}

const char* attribute_kind(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  const auto ok = [api](OrtStatus* s) {
    if (!s) return true;
    api->ReleaseStatus(s);
    return false;
  };
  float f = 0.0f;
  int64_t i = 0;
  size_t size = 0;
  if (ok(api->KernelInfoGetAttribute_float(info, name, &f))) return "a float";
  if (ok(api->KernelInfoGetAttribute_int64(info, name, &i))) return "an int";
  if (ok(api->KernelInfoGetAttribute_string(info, name, nullptr, &size))) return "a string";
  size = 0;
  int64_t* no_ints = nullptr;
  if (ok(api->KernelInfoGetAttributeArray_int64(info, name, no_ints, &size))) {
    return "a list of ints";
  }
  size = 0;
  float* no_floats = nullptr;
  if (ok(api->KernelInfoGetAttributeArray_float(info, name, no_floats, &size))) {
    return "a list of floats";
  }
  return nullptr;
}

namespace {

OrtStatus* view_value(const OrtApi* api, const OrtValue* value, TensorView* out) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  if (OrtStatus* s = api->GetTensorTypeAndShape(value, &info)) return s;
  size_t rank = 0;
  OrtStatus* s = api->GetTensorElementType(info, &out->type);
  if (!s) s = api->GetDimensionsCount(info, &rank);
  if (!s) {
    out->shape.resize(rank);
    s = api->GetDimensions(info, out->shape.data(), rank);
  }
  api->ReleaseTensorTypeAndShapeInfo(info);
  if (s) return s;
  out->elements = 1;
  for (int64_t d : out->shape) out->elements *= d;
  void* data = nullptr;
  if (out->elements > 0) {
    if (OrtStatus* st = api->GetTensorMutableData(const_cast<OrtValue*>(value), &data)) return st;
  }
  out->data = data;
  out->present = true;
  return nullptr;
}

}  // namespace

OrtStatus* view_input(const OrtApi* api, OrtKernelContext* ctx, size_t i, TensorView* out) {
  const OrtValue* value = nullptr;
  if (OrtStatus* s = api->KernelContext_GetInput(ctx, i, &value)) return s;
  if (!value) return nullptr;
  return view_value(api, value, out);
}

OrtStatus* constant_input(const OrtApi* api, const OrtKernelInfo* info, size_t i,
                          TensorView* out) {
  size_t count = 0;
  if (OrtStatus* s = api->KernelInfo_GetInputCount(info, &count)) return s;
  if (i >= count) return nullptr;
  int is_constant = 0;
  const OrtValue* value = nullptr;
  if (OrtStatus* s = api->KernelInfoGetConstantInput_tensor(info, i, &is_constant, &value)) {
    api->ReleaseStatus(s);  // an absent optional input: not a constant
    return nullptr;
  }
  if (!is_constant || !value) return nullptr;
  // The value belongs to the session and outlives the kernel that asked for it.
  return view_value(api, value, out);
}

OrtStatus* output_data(const OrtApi* api, OrtKernelContext* ctx, size_t i,
                       const std::vector<int64_t>& shape, void** data) {
  OrtValue* value = nullptr;
  if (OrtStatus* s = api->KernelContext_GetOutput(ctx, i, shape.data(), shape.size(), &value)) {
    return s;
  }
  return api->GetTensorMutableData(value, data);
}

OrtStatus* output_float(const OrtApi* api, OrtKernelContext* ctx, size_t i,
                        const std::vector<int64_t>& shape, float** data) {
  void* raw = nullptr;
  if (OrtStatus* s = output_data(api, ctx, i, shape, &raw)) return s;
  *data = static_cast<float*>(raw);
  return nullptr;
}

OrtStatus* set_output_last_dim(const OrtApi* api, OrtShapeInferContext* ctx, int64_t n) {
  OrtTensorTypeAndShapeInfo* in = nullptr;
  // `in` belongs to the context: releasing it here frees it twice (seen with ORT 1.32).
  if (OrtStatus* s = api->ShapeInferContext_GetInputTypeShape(ctx, 0, &in)) return s;
  size_t rank = 0;
  OrtStatus* s = api->GetDimensionsCount(in, &rank);
  std::vector<int64_t> dims(rank);
  std::vector<const char*> symbols(rank, "");
  if (!s) s = api->GetDimensions(in, dims.data(), rank);
  if (!s) s = api->GetSymbolicDimensions(in, symbols.data(), rank);
  if (!s && rank == 0) s = fail(api, "LutMatMul: input A must have rank >= 1");
  if (s) return s;
  dims.back() = n;
  symbols.back() = "";
  // An unknown dimension without a name must get one: given as -1 with an empty name,
  // ONNX Runtime takes it for a fixed -1 and folds Shape() of the output into a wrong
  // constant. A fresh name per dimension claims no equality with any other tensor.
  std::vector<std::string> fresh(rank);
  static std::atomic<uint64_t> counter{0};
  for (size_t i = 0; i + 1 < rank; ++i) {
    if (dims[i] < 0 && (symbols[i] == nullptr || symbols[i][0] == '\0')) {
      fresh[i] = "edgepet_lutmatmul_dim_" + std::to_string(counter.fetch_add(1));
      symbols[i] = fresh[i].c_str();
    }
  }
  OrtTensorTypeAndShapeInfo* out = nullptr;
  s = api->CreateTensorTypeAndShapeInfo(&out);
  if (!s) s = api->SetTensorElementType(out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (!s) s = api->SetDimensions(out, dims.data(), rank);
  if (!s) s = api->SetSymbolicDimensions(out, symbols.data(), rank);
  if (!s) s = api->ShapeInferContext_SetOutputTypeShape(ctx, 0, out);
  if (out) api->ReleaseTensorTypeAndShapeInfo(out);
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

namespace {

struct ParallelCall {
  void (*fn)(void*, int64_t);
  void* ctx;
};

void parallel_trampoline(void* data, size_t i) {
  auto* call = static_cast<ParallelCall*>(data);
  call->fn(call->ctx, static_cast<int64_t>(i));
}

}  // namespace

void OrtParallel::run(int64_t total, void (*fn)(void*, int64_t), void* ctx) const {
  if (total <= 1) {
    for (int64_t i = 0; i < total; ++i) fn(ctx, i);
    return;
  }
  ParallelCall call{fn, ctx};
  OrtStatus* status = api_->KernelContext_ParallelFor(ctx_, &parallel_trampoline,
                                                      static_cast<size_t>(total), 0, &call);
  if (status) {  // no pool: run here
    api_->ReleaseStatus(status);
    for (int64_t i = 0; i < total; ++i) fn(ctx, i);
  }
}

void init_cpu_op(OrtCustomOp* op) {
  op->version = ORT_API_VERSION;
  op->GetExecutionProviderType = [](const OrtCustomOp*) { return "CPUExecutionProvider"; };
  op->GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op->GetOutputCharacteristic = [](const OrtCustomOp*, size_t) {
    return INPUT_OUTPUT_REQUIRED;
  };
  op->GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op->GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op->GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op->GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op->GetStartVersion = [](const OrtCustomOp*) { return kOpVersion; };
  op->GetEndVersion = [](const OrtCustomOp*) { return kOpVersion; };
}

}  // namespace edgepet
