// ai.edgepet.GroupQueryRotaryAttention and ai.edgepet.SwiGLU: the decoder graph's
// attention block and gated-MLP activation as one node each (docs/llm.md, "Fused
// decoder ops"). The math is in kernels/attention.cc; this file checks what ONNX Runtime
// hands over and says clearly what is wrong.
#include <atomic>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "ort/ort_util.h"

namespace edgepet {
namespace {

bool is_float(const TensorView& t) { return t.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

// Shape inference helper: a fresh symbolic name for an unknown dimension (see
// set_output_last_dim in ort_util.cc for why an unnamed -1 must not be passed on).
std::string fresh_dim(const char* stem) {
  static std::atomic<uint64_t> counter{0};
  return std::string("edgepet_") + stem + "_" + std::to_string(counter.fetch_add(1));
}

struct Dims {
  std::vector<int64_t> values;
  std::vector<std::string> symbols;
};

OrtStatus* input_dims(const OrtApi* api, OrtShapeInferContext* ctx, size_t i, Dims* out) {
  OrtTensorTypeAndShapeInfo* in = nullptr;  // owned by the context: not released
  if (OrtStatus* s = api->ShapeInferContext_GetInputTypeShape(ctx, i, &in)) return s;
  size_t rank = 0;
  if (OrtStatus* s = api->GetDimensionsCount(in, &rank)) return s;
  out->values.assign(rank, -1);
  std::vector<const char*> symbols(rank, "");
  if (OrtStatus* s = api->GetDimensions(in, out->values.data(), rank)) return s;
  if (OrtStatus* s = api->GetSymbolicDimensions(in, symbols.data(), rank)) return s;
  out->symbols.assign(rank, "");
  for (size_t d = 0; d < rank; ++d) {
    out->symbols[d] = symbols[d] ? symbols[d] : "";
    if (out->values[d] < 0 && out->symbols[d].empty()) out->symbols[d] = fresh_dim("dim");
  }
  return nullptr;
}

OrtStatus* set_output(const OrtApi* api, OrtShapeInferContext* ctx, size_t i, const Dims& d,
                      ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
  const size_t rank = d.values.size();
  std::vector<const char*> symbols(rank);
  for (size_t j = 0; j < rank; ++j) symbols[j] = d.values[j] >= 0 ? "" : d.symbols[j].c_str();
  OrtTensorTypeAndShapeInfo* out = nullptr;
  OrtStatus* s = api->CreateTensorTypeAndShapeInfo(&out);
  if (!s) s = api->SetTensorElementType(out, type);
  if (!s) s = api->SetDimensions(out, d.values.data(), rank);
  if (!s) s = api->SetSymbolicDimensions(out, symbols.data(), rank);
  if (!s) s = api->ShapeInferContext_SetOutputTypeShape(ctx, i, out);
  if (out) api->ReleaseTensorTypeAndShapeInfo(out);
  return s;
}

OrtStatus* read_int_attr(const OrtApi* api, OrtShapeInferContext* ctx, const char* name,
                         int64_t* value) {
  const OrtOpAttr* attr = nullptr;
  if (OrtStatus* s = api->ShapeInferContext_GetAttribute(ctx, name, &attr)) return s;
  if (!attr) return fail(api, std::string("GroupQueryRotaryAttention: missing attribute ") + name);
  size_t size = 0;
  return api->ReadOpAttr(attr, ORT_OP_ATTR_INT, value, sizeof(*value), &size);
}

// Common OrtCustomOp fields of the two ops.
template <typename Derived>
struct FloatOp : OrtCustomOp {
  FloatOp() : OrtCustomOp{} {
    init_cpu_op(this);
    GetInputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetOutputType = [](const OrtCustomOp*, size_t) { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
    KernelDestroy = [](void* k) { delete static_cast<typename Derived::Kernel*>(k); };
  }
};

// ---------------------------------------------------------------- attention

// past_length (optional, int64 [1]) selects the shared-buffer cache: past and present are
// buffers of a fixed capacity, past_length of whose rows are valid (attention.h). The cache
// (past and present) is float or float16: one registration of the op for each.
enum AttentionInput { kQkv = 0, kPastKey, kPastValue, kCos, kSin, kPastLength, kAttentionInputs };

struct AttentionKernel {
  const OrtApi* api;
  std::string node;
  int64_t heads = 0, kv_heads = 0;
  float scale = 0.0f;
  const VectorOps* ops = nullptr;
  TensorView tables[2];  // cos, sin when initializers (checked once)
  bool constant_tables = false;
  bool shared_buffer = false;  // the node has a past_length input

  std::string where() const { return "GroupQueryRotaryAttention '" + node + "': "; }
};

std::string check_tables(const TensorView& cos, const TensorView& sin) {
  if (!is_float(cos) || !is_float(sin)) return "cos_cache and sin_cache must be float32";
  if (cos.shape.size() != 2 || cos.shape != sin.shape) {
    return "cos_cache " + shape_str(cos.shape) + " and sin_cache " + shape_str(sin.shape) +
           " must both be [positions, head_size / 2]";
  }
  return {};
}

OrtStatus* create_attention(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                            void** out) {
  auto k = std::make_unique<AttentionKernel>();
  k->api = api;
  k->node = node_name(api, info);
  std::string missing;
  if (!get_int(api, info, "num_heads", &k->heads)) missing += " num_heads (int)";
  if (!get_int(api, info, "kv_num_heads", &k->kv_heads)) missing += " kv_num_heads (int)";
  if (OrtStatus* s = api->KernelInfoGetAttribute_float(info, "scale", &k->scale)) {
    api->ReleaseStatus(s);
    missing += " scale (float)";
  }
  if (!missing.empty()) return fail(api, k->where() + "missing or mistyped attribute(s):" + missing);
  // The bound keeps (num_heads + 2 kv_num_heads) x head size far from int64's range.
  constexpr int64_t kMaxHeads = int64_t{1} << 20;
  if (k->heads <= 0 || k->kv_heads <= 0 || k->heads > kMaxHeads || k->kv_heads > kMaxHeads ||
      k->heads % k->kv_heads != 0) {
    return fail(api, k->where() + "num_heads=" + std::to_string(k->heads) + ", kv_num_heads=" +
                         std::to_string(k->kv_heads) +
                         ": both must be in 1.." + std::to_string(kMaxHeads) +
                         " and num_heads a multiple of kv_num_heads");
  }
  if (!std::isfinite(k->scale) || k->scale <= 0.0f) {
    return fail(api, k->where() + "scale=" + std::to_string(k->scale) +
                         " must be a positive finite number");
  }
  k->ops = &vector_ops();
  size_t inputs = 0;
  if (OrtStatus* s = api->KernelInfo_GetInputCount(info, &inputs)) return s;
  k->shared_buffer = inputs > kPastLength;
  if (OrtStatus* s = constant_input(api, info, kCos, &k->tables[0])) return s;
  if (OrtStatus* s = constant_input(api, info, kSin, &k->tables[1])) return s;
  k->constant_tables = k->tables[0].present && k->tables[1].present;
  if (k->constant_tables) {
    const std::string bad = check_tables(k->tables[0], k->tables[1]);
    if (!bad.empty()) return fail(api, k->where() + bad);
  }
  *out = k.release();
  return nullptr;
}

OrtStatus* compute_attention(void* op_kernel, OrtKernelContext* ctx) {
  const auto& k = *static_cast<AttentionKernel*>(op_kernel);
  const OrtApi* api = k.api;
  TensorView in[kAttentionInputs];
  const size_t inputs = k.shared_buffer ? kAttentionInputs : kPastLength;
  for (size_t i = 0; i < inputs; ++i) {
    if (k.constant_tables && (i == kCos || i == kSin)) {
      in[i] = k.tables[i - kCos];
    } else if (OrtStatus* s = view_input(api, ctx, i, &in[i])) {
      return s;
    }
  }
  if (!k.constant_tables) {
    const std::string bad = check_tables(in[kCos], in[kSin]);
    if (!bad.empty()) return fail(api, k.where() + bad);
  }
  const TensorView &qkv = in[kQkv], &pk = in[kPastKey], &pv = in[kPastValue];
  const bool half_cache = pk.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  if (!is_float(qkv) || (!is_float(pk) && !half_cache) || pv.type != pk.type) {
    return fail(api, k.where() + "qkv must be float32, and past_key and past_value both "
                                 "float32 or both float16");
  }
  const int64_t half = in[kCos].shape[1], d = 2 * half;
  const int64_t width = (k.heads + 2 * k.kv_heads) * d;
  if (qkv.shape.size() != 3 || qkv.shape[2] != width) {
    return fail(api, k.where() + "qkv has shape " + shape_str(qkv.shape) +
                         ", expected [batch, seq, " + std::to_string(width) + "] ((num_heads " +
                         std::to_string(k.heads) + " + 2 x kv_num_heads " +
                         std::to_string(k.kv_heads) + ") x head size " + std::to_string(d) +
                         " from the RoPE tables)");
  }
  if (pk.shape.size() != 4 || pk.shape != pv.shape || pk.shape[0] != qkv.shape[0] ||
      pk.shape[1] != k.kv_heads || pk.shape[3] != d) {
    return fail(api, k.where() + "past_key " + shape_str(pk.shape) + " and past_value " +
                         shape_str(pv.shape) + " must both be [batch " + std::to_string(qkv.shape[0]) +
                         ", kv_num_heads " + std::to_string(k.kv_heads) + ", past, head size " +
                         std::to_string(d) + "]");
  }
  AttentionArgs args;
  AttentionShape& s = args.shape;
  s.batch = qkv.shape[0];
  s.seq = qkv.shape[1];
  s.past = pk.shape[2];
  if (k.shared_buffer) {
    const TensorView& length = in[kPastLength];
    if (!length.present || length.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ||
        length.elements != 1) {
      return fail(api, k.where() + "past_length must be one int64 (the valid rows of the "
                                   "cache buffers), got " +
                           (length.present ? shape_str(length.shape) : std::string("nothing")));
    }
    s.past = *static_cast<const int64_t*>(length.data);
    s.past_rows = s.cache_rows = pk.shape[2];
    if (s.past < 0 || s.past + s.seq > s.cache_rows) {
      return fail(api, k.where() + "past_length " + std::to_string(s.past) + " + " +
                           std::to_string(s.seq) + " new tokens do not fit the cache buffers' " +
                           std::to_string(s.cache_rows) + " positions");
    }
  }
  s.heads = k.heads;
  s.kv_heads = k.kv_heads;
  s.head_dim = d;
  s.rope_positions = in[kCos].shape[0];
  const std::string bad = check_attention(s);
  if (!bad.empty()) return fail(api, k.where() + bad);
  args.qkv = static_cast<const float*>(qkv.data);
  args.half_cache = half_cache;
  args.past_key = pk.data;
  args.past_value = pv.data;
  args.cos = static_cast<const float*>(in[kCos].data);
  args.sin = static_cast<const float*>(in[kSin].data);
  args.scale = k.scale;
  if (OrtStatus* st = output_float(api, ctx, 0, {s.batch, s.seq, s.heads * d}, &args.out)) {
    return st;
  }
  const std::vector<int64_t> cache{s.batch, s.kv_heads, s.cache_stride(), d};
  if (OrtStatus* st = output_data(api, ctx, 1, cache, &args.present_key)) return st;
  if (OrtStatus* st = output_data(api, ctx, 2, cache, &args.present_value)) return st;
  decoder_attention(*k.ops, args, OrtParallel(api, ctx));
  return nullptr;
}

// out: [batch, seq, num_heads * head size]; present: [batch, kv_heads, past + seq, head size],
// or past's shape with a past_length input (a shared buffer).
OrtStatus* infer_attention(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi* api = ort_api();
  int64_t heads = 0, kv_heads = 0;
  if (OrtStatus* s = read_int_attr(api, ctx, "num_heads", &heads)) return s;
  if (OrtStatus* s = read_int_attr(api, ctx, "kv_num_heads", &kv_heads)) return s;
  Dims qkv, past, cos;
  OrtTensorTypeAndShapeInfo* past_info = nullptr;  // owned by the context
  ONNXTensorElementDataType cache_type = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (OrtStatus* s = api->ShapeInferContext_GetInputTypeShape(ctx, kPastKey, &past_info)) return s;
  if (OrtStatus* s = api->GetTensorElementType(past_info, &cache_type)) return s;
  if (OrtStatus* s = input_dims(api, ctx, kQkv, &qkv)) return s;
  if (OrtStatus* s = input_dims(api, ctx, kPastKey, &past)) return s;
  if (OrtStatus* s = input_dims(api, ctx, kCos, &cos)) return s;
  if (qkv.values.size() != 3 || past.values.size() != 4) {
    return fail(api, "GroupQueryRotaryAttention: qkv must have rank 3 and past_key rank 4");
  }
  int64_t d = past.values[3];
  if (d < 0 && cos.values.size() == 2 && cos.values[1] >= 0) d = 2 * cos.values[1];
  Dims out = qkv;
  // Out-of-range attributes are refused when the kernel is made; here they only must not
  // overflow.
  const bool sane = heads > 0 && heads <= (int64_t{1} << 20) && d >= 0 && d <= (int64_t{1} << 30);
  out.values[2] = sane ? heads * d : -1;
  out.symbols[2] = fresh_dim("attention_width");
  size_t inputs = 0;
  if (OrtStatus* s = api->ShapeInferContext_GetInputCount(ctx, &inputs)) return s;
  Dims present = past;
  present.values[0] = qkv.values[0];
  present.symbols[0] = qkv.symbols[0];
  present.values[1] = kv_heads;
  if (inputs <= kPastLength) {
    present.values[2] = past.values[2] >= 0 && qkv.values[1] >= 0
                            ? past.values[2] + qkv.values[1] : -1;
    present.symbols[2] = fresh_dim("total");
  }
  present.values[3] = d;
  present.symbols[3] = fresh_dim("head_size");
  if (OrtStatus* s = set_output(api, ctx, 0, out)) return s;
  if (OrtStatus* s = set_output(api, ctx, 1, present, cache_type)) return s;
  return set_output(api, ctx, 2, present, cache_type);
}

struct AttentionOp : FloatOp<AttentionOp> {
  using Kernel = AttentionKernel;
  ONNXTensorElementDataType cache;  // of past_key/value and present_key/value

  static ONNXTensorElementDataType cache_type(const OrtCustomOp* op) {
    return static_cast<const AttentionOp*>(op)->cache;
  }

  explicit AttentionOp(ONNXTensorElementDataType cache_type_) : cache(cache_type_) {
    GetName = [](const OrtCustomOp*) { return "GroupQueryRotaryAttention"; };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return kAttentionInputs; };
    GetInputType = [](const OrtCustomOp* op, size_t i) {
      if (i == kPastKey || i == kPastValue) return cache_type(op);
      return i == kPastLength ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64
                              : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
    };
    GetOutputType = [](const OrtCustomOp* op, size_t i) {
      return i == 0 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : cache_type(op);
    };
    GetInputCharacteristic = [](const OrtCustomOp*, size_t i) {
      return i == kPastLength ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
    };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 3; };
    CreateKernelV2 = create_attention;
    KernelComputeV2 = compute_attention;
    InferOutputShapeFn = infer_attention;
  }
};

// ---------------------------------------------------------------- SwiGLU

struct SwigluKernel {
  const OrtApi* api;
  std::string node;
  const VectorOps* ops = nullptr;
  std::string where() const { return "SwiGLU '" + node + "': "; }
};

OrtStatus* create_swiglu(const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                         void** out) {
  auto k = std::make_unique<SwigluKernel>();
  k->api = api;
  k->node = node_name(api, info);
  k->ops = &vector_ops();
  *out = k.release();
  return nullptr;
}

OrtStatus* compute_swiglu(void* op_kernel, OrtKernelContext* ctx) {
  const auto& k = *static_cast<SwigluKernel*>(op_kernel);
  const OrtApi* api = k.api;
  TensorView x;
  if (OrtStatus* s = view_input(api, ctx, 0, &x)) return s;
  if (!is_float(x)) return fail(api, k.where() + "gate_up must be float32");
  if (x.shape.empty() || x.shape.back() % 2 != 0) {
    return fail(api, k.where() + "gate_up has shape " + shape_str(x.shape) +
                         ", its last dimension must be even (gate, then up)");
  }
  std::vector<int64_t> shape = x.shape;
  const int64_t inner = shape.back() / 2;
  shape.back() = inner;
  float* y = nullptr;
  if (OrtStatus* s = output_float(api, ctx, 0, shape, &y)) return s;
  const int64_t rows = inner ? x.elements / (2 * inner) : 0;
  swiglu(*k.ops, static_cast<const float*>(x.data), y, rows, inner, OrtParallel(api, ctx));
  return nullptr;
}

OrtStatus* infer_swiglu(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi* api = ort_api();
  Dims x;
  if (OrtStatus* s = input_dims(api, ctx, 0, &x)) return s;
  if (x.values.empty()) return fail(api, "SwiGLU: gate_up must have rank >= 1");
  int64_t& last = x.values.back();
  if (last >= 0 && last % 2 != 0) {
    return fail(api, "SwiGLU: gate_up's last dimension " + std::to_string(last) +
                         " must be even (gate, then up)");
  }
  last = last >= 0 ? last / 2 : -1;
  x.symbols.back() = fresh_dim("swiglu_width");
  return set_output(api, ctx, 0, x);
}

struct SwigluOp : FloatOp<SwigluOp> {
  using Kernel = SwigluKernel;
  SwigluOp() {
    GetName = [](const OrtCustomOp*) { return "SwiGLU"; };
    GetInputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
    GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
    CreateKernelV2 = create_swiglu;
    KernelComputeV2 = compute_swiglu;
    InferOutputShapeFn = infer_swiglu;
  }
};

}  // namespace

const OrtCustomOp* group_query_rotary_attention_op() {
  static const AttentionOp op(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  return &op;
}

const OrtCustomOp* group_query_rotary_attention_half_op() {
  static const AttentionOp op(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16);
  return &op;
}

const OrtCustomOp* swiglu_op() {
  static const SwigluOp op;
  return &op;
}

}  // namespace edgepet
