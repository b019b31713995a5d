// ai.edgepet.LutMatMul v1 as an ONNX Runtime custom op (C API only, no exceptions
// cross the boundary). Contract: docs/operator.md.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "edgepet/edgepet_ort.h"
#include "edgepet/version.h"
#include "huge_pages.h"
#include "kernels/gemm.h"
#include "kernels/pack.h"
#include "ort/ort_util.h"

namespace edgepet {
namespace {

enum Input { kA = 0, kW, kScales, kZeroPoints, kBias, kInputCount };


struct LutMatMulKernel {
  const OrtApi* api;
  std::string node;
  WeightFormat format;
  const Kernel* kernel;
  // Inputs that are initializers, read and checked once at creation: a call then
  // fetches only A and the output.
  bool constant[kInputCount] = {};
  TensorView cached[kInputCount];
  bool weights_checked = false;  // W, scales, zero points: constant and checked
  bool codes_in_huge_pages = false;  // W, an initializer, in huge pages since creation
  // Initializers copied into huge pages (place_in_huge_pages): cached[i] points into them.
  std::shared_ptr<const void> copies[kInputCount];

  std::string where() const { return "LutMatMul '" + node + "': "; }
};

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    default: return "another type";
  }
}

// The element type each input must have; empty string when it has it.
std::string check_type(const TensorView& t, const char* name, ONNXTensorElementDataType type) {
  if (!t.present || t.type == type) return {};
  std::string msg =
      std::string(name) + " is " + type_name(t.type) + ", expected " + type_name(type);
  if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 &&
      t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    msg += ": the model was exported for LutMatMul ABI 1 (float32 scales and zero points); "
           "this library reads ABI " + std::to_string(EDGEPET_OP_ABI_VERSION) +
           " (float16) — re-export the model with this edgepet version";
  }
  return msg;
}

OperandShape shape_of(const TensorView& t) { return {t.present, t.shape}; }

// W, scales, zero points and bias: types here, shapes by the kernel library's one
// check (gemm.h, check_operands). Empty when right, else what is wrong.
std::string check_weights(const WeightFormat& f, const TensorView in[kInputCount]) {
  std::string bad = check_type(in[kW], "W", ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8);
  if (bad.empty()) bad = check_type(in[kScales], "scales", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  if (bad.empty()) {
    bad = check_type(in[kZeroPoints], "zero_points", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  }
  if (bad.empty()) bad = check_type(in[kBias], "bias", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (!bad.empty()) return bad;
  return check_operands(f, {shape_of(in[kW]), shape_of(in[kScales]), shape_of(in[kZeroPoints]),
                            shape_of(in[kBias])});
}

// What is wrong with the attributes, collected: the missing ones, and those of a wrong type.
struct AttributeErrors {
  std::string missing, mistyped;

  void note(const OrtApi* api, const OrtKernelInfo* info, const char* name, const char* want) {
    const char* kind = attribute_kind(api, info, name);
    if (!kind) {
      missing += std::string(" ") + name;
    } else {
      mistyped += std::string(mistyped.empty() ? "" : "; ") + "attribute " + name + " is " +
                  kind + ", expected " + want;
    }
  }
  std::string message() const {
    std::string msg = missing.empty() ? "" : "missing attribute(s):" + missing;
    if (!mistyped.empty()) msg += (msg.empty() ? "" : "; ") + mistyped;
    return msg;
  }
};

OrtStatus* create_kernel(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                         void** out) {
  auto k = std::make_unique<LutMatMulKernel>();
  k->api = api;
  k->node = node_name(api, info);
  // Every attribute is required and must have its type: a missing or float `ternary`
  // must not run as plain 2-bit codes.
  int64_t bits = 0, ternary = 0, symmetric = 0;
  std::string layout;
  AttributeErrors errors;
  const std::pair<const char*, int64_t*> ints[] = {
      {"K", &k->format.k}, {"N", &k->format.n}, {"bits", &bits}, {"ternary", &ternary},
      {"group_size", &k->format.group_size}, {"symmetric", &symmetric}};
  for (const auto& [name, value] : ints) {
    if (!get_int(api, info, name, value)) errors.note(api, info, name, "an int");
  }
  if (!get_string(api, info, "layout", &layout)) errors.note(api, info, "layout", "a string");
  if (!errors.message().empty()) return fail(api, k->where() + errors.message());
  // zero_level (ABI 6) is optional: absent, the codes are those of ABI 5 and before.
  int64_t zero_level = 0;
  if (attribute_kind(api, info, "zero_level") && !get_int(api, info, "zero_level", &zero_level)) {
    errors.note(api, info, "zero_level", "an int");
    return fail(api, k->where() + errors.message());
  }
  for (const auto& [name, value] : {std::pair<const char*, int64_t>{"ternary", ternary},
                                    {"symmetric", symmetric}, {"zero_level", zero_level}}) {
    if (value != 0 && value != 1) {
      return fail(api, k->where() + name + "=" + std::to_string(value) + " must be 0 or 1");
    }
  }
  // check_format judges bits; a value beyond int reaches it clamped (still refused).
  k->format.bits = static_cast<int>(std::clamp<int64_t>(bits, INT32_MIN, INT32_MAX));
  k->format.ternary = ternary != 0;
  k->format.symmetric = symmetric != 0 || k->format.ternary;
  k->format.zero_level = zero_level != 0;
  const std::string bad = check_format(k->format);
  if (!bad.empty()) return fail(api, k->where() + bad);
  // ABI 3's layout differs from this one only at 3 bits (pack.h): its other widths read
  // as they are.
  const bool abi3_as_is = layout == kAbi3LayoutName && !(k->format.bits == 3 && !k->format.ternary);
  if (layout != kLayoutName && !abi3_as_is) {
    // ABI 2's "tile32" stored 4-bit codes as bit-planes, ABI 3's "tile32-nibble4" 3-bit
    // codes, which this library's dot kernels would misread: refused, and said so.
    const std::string old =
        layout == "tile32"           ? " (LutMatMul ABI 2; 4-bit codes were bit-planes)"
        : layout == kAbi3LayoutName ? " (LutMatMul ABI 3; 3-bit codes were bit-planes)"
                                    : "";
    return fail(api, k->where() + "layout '" + layout + "'" + old +
                         " is not known to this library (it reads '" + kLayoutName + "', ABI " +
                         std::to_string(EDGEPET_OP_ABI_VERSION) +
                         ") — re-export the model with this edgepet version");
  }
  k->kernel = select_kernel("auto");
  if (!k->kernel) return fail(api, k->where() + "EDGEPET_KERNEL names no kernel usable here");
  // Initializers: view and check them now, once. An input given at run time is looked
  // at (and checked) per call instead.
  for (size_t i = kW; i < kInputCount; ++i) {
    if (OrtStatus* s = constant_input(api, info, i, &k->cached[i])) return s;
    k->constant[i] = k->cached[i].present;
  }
  // Weight inputs that are initializers (every exported model) are checked here, once;
  // an absent optional input is not a constant either, so a call checks again only when
  // it sees a non-constant one present (compute).
  k->weights_checked = k->constant[kW] && k->constant[kScales] &&
                       (k->format.symmetric || k->constant[kZeroPoints]);
  if (k->weights_checked) {
    const std::string weights = check_weights(k->format, k->cached);
    if (!weights.empty()) return fail(api, k->where() + weights);
    // Weights a decode step streams from memory read faster from huge pages (huge_pages.h):
    // the codes, and the scales and zero points (each a quarter of the codes' bytes at 1
    // bit, a sixteenth at 4 with group 64) beside them. Mapped from a bundle's data file,
    // they are copied (place_in_huge_pages).
    if (huge_pages_wanted()) {
      const size_t scale_bytes = static_cast<size_t>(scale_count(k->format)) * sizeof(Half);
      for (const auto& [input, bytes] :
           {std::pair<Input, size_t>{kW, static_cast<size_t>(packed_bytes(k->format))},
            {kScales, scale_bytes}, {kZeroPoints, scale_bytes}}) {
        if (!k->constant[input]) continue;
        HugePagePlacement placed = place_in_huge_pages(k->cached[input].data, bytes);
        k->cached[input].data = placed.data;
        k->copies[input] = std::move(placed.copy);
        if (input == kW) k->codes_in_huge_pages = placed.in_huge_pages;
      }
    }
  }
  *out = k.release();
  return nullptr;
}

OrtStatus* compute(void* op_kernel, OrtKernelContext* ctx) {
  const auto& k = *static_cast<LutMatMulKernel*>(op_kernel);
  const OrtApi* api = k.api;
  const WeightFormat& f = k.format;
  TensorView in[kInputCount];
  size_t count = 0;
  if (OrtStatus* s = api->KernelContext_GetInputCount(ctx, &count)) return s;
  for (size_t i = 0; i < count && i < kInputCount; ++i) {
    if (k.constant[i]) {
      in[i] = k.cached[i];
    } else if (OrtStatus* s = view_input(api, ctx, i, &in[i])) {
      return s;
    }
  }
  const TensorView& a = in[kA];
  if (a.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return fail(api, k.where() + "A must be float32");
  if (a.shape.empty() || a.shape.back() != f.k) {
    return fail(api, k.where() + "A has shape " + shape_str(a.shape) +
                         ", its last dimension must be K=" + std::to_string(f.k));
  }
  const bool runtime_extra = (in[kZeroPoints].present && !k.constant[kZeroPoints]) ||
                             (in[kBias].present && !k.constant[kBias]);
  if (!k.weights_checked || runtime_extra) {
    const std::string bad = check_weights(f, in);
    if (!bad.empty()) return fail(api, k.where() + bad);
  }

  std::vector<int64_t>& out_shape = in[kA].shape;  // A's shape, last dimension N
  out_shape.back() = f.n;
  float* y = nullptr;
  if (OrtStatus* s = output_float(api, ctx, 0, out_shape, &y)) return s;
  GemmArgs args;
  args.format = f;
  args.a = static_cast<const float*>(a.data);
  args.m = a.elements / f.k;
  args.codes = static_cast<const uint8_t*>(in[kW].data);
  args.scales = static_cast<const Half*>(in[kScales].data);
  args.zero_points = f.symmetric ? nullptr : static_cast<const Half*>(in[kZeroPoints].data);
  args.bias = in[kBias].present ? static_cast<const float*>(in[kBias].data) : nullptr;
  args.y = y;
  args.codes_in_huge_pages = k.codes_in_huge_pages;
  // A product too small for two threads runs on this one (lut_gemm decides by work size).
  lut_gemm(*k.kernel, args, OrtParallel(api, ctx));
  return nullptr;
}

OrtStatus* infer_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi* api = ort_api();
  const OrtOpAttr* attr = nullptr;
  if (OrtStatus* s = api->ShapeInferContext_GetAttribute(ctx, "N", &attr)) return s;
  int64_t n = 0;
  size_t size = 0;
  if (!attr) return fail(api, "LutMatMul: missing attribute N");
  if (OrtStatus* s = api->ReadOpAttr(attr, ORT_OP_ATTR_INT, &n, sizeof(n), &size)) return s;
  return set_output_last_dim(api, ctx, n);
}

struct LutMatMulOp : OrtCustomOp {
  LutMatMulOp() : OrtCustomOp{} {
    init_cpu_op(this);
    GetName = [](const OrtCustomOp*) { return "LutMatMul"; };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return kInputCount; };
    // Scales and zero points accept any type here, so that an ABI-1 model (float32)
    // gets our "re-export" message rather than a bare type error.
    GetInputType = [](const OrtCustomOp*, size_t i) {
      if (i == kW) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
      if (i == kScales || i == kZeroPoints) return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
      return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
    GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
      return i >= kZeroPoints ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    CreateKernelV2 = create_kernel;
    KernelComputeV2 = compute;
    KernelDestroy = [](void* k) { delete static_cast<LutMatMulKernel*>(k); };
    InferOutputShapeFn = infer_shape;
  }
};

}  // namespace

const OrtCustomOp* lut_matmul_op() {
  static const LutMatMulOp op;
  return &op;
}

}  // namespace edgepet
