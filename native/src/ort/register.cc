// RegisterCustomOps: the library's entry point for ONNX Runtime.
#include <mutex>

#include "edgepet/edgepet_ort.h"
#include "kernels/pack.h"
#include "ort/decoder_ops.h"
#include "ort/ort_util.h"

using edgepet::fail;

extern "C" {

EDGEPET_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                     const OrtApiBase* base) {
  // Ask for the API version we were built against: every ORT from that one on has it.
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api) {
    const OrtApi* oldest = base->GetApi(1);
    const std::string msg = std::string("edgepet's op library needs ONNX Runtime API version ") +
                            std::to_string(ORT_API_VERSION) + " or newer; this runtime is " +
                            base->GetVersionString();
    return oldest ? oldest->CreateStatus(ORT_FAIL, msg.c_str()) : nullptr;
  }
  edgepet::set_ort_api(api);
  // One domain for the process, kept alive for every session that uses it.
  static OrtCustomOpDomain* domain = nullptr;
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  if (!domain) {
    if (OrtStatus* s = api->CreateCustomOpDomain("ai.edgepet", &domain)) return s;
    for (const OrtCustomOp* op : {edgepet::lut_matmul_op(),
                                  edgepet::group_query_rotary_attention_op(),
                                  edgepet::group_query_rotary_attention_half_op(),
                                  edgepet::swiglu_op()}) {
      if (OrtStatus* s = api->CustomOpDomain_Add(domain, const_cast<OrtCustomOp*>(op))) return s;
    }
  }
  return api->AddCustomOpDomain(options, domain);
}

EDGEPET_EXPORT int edgepet_op_abi_version(void) { return EDGEPET_OP_ABI_VERSION; }

EDGEPET_EXPORT int edgepet_ort_api_version(void) { return ORT_API_VERSION; }

EDGEPET_EXPORT const char* edgepet_op_layout(void) { return edgepet::kLayoutName; }

}  // extern "C"
