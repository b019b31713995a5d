/* edgepet's ONNX Runtime op library, for apps that load it without Python.
 *
 * Load it with OrtApi::RegisterCustomOpsLibrary (or the session option
 * "session.custom_ops_library"), or link it and call RegisterCustomOps yourself.
 * It registers the domain "ai.edgepet" with LutMatMul version 1.
 */
#ifndef EDGEPET_EDGEPET_ORT_H_
#define EDGEPET_EDGEPET_ORT_H_

#include <onnxruntime_c_api.h>

#include "edgepet/version.h"

#if defined(_WIN32)
#define EDGEPET_EXPORT __declspec(dllexport)
#else
#define EDGEPET_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Adds the ai.edgepet operators to `options`. Returns null on success, else an
 * OrtStatus the caller releases. Needs an ONNX Runtime whose API version is at least
 * the one the library was built against (edgepet_ort_api_version()). */
EDGEPET_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                     const OrtApiBase* api);

/* The ABI version above, as built. */
EDGEPET_EXPORT int edgepet_op_abi_version(void);

/* The ONNX Runtime API version the library asks for. */
EDGEPET_EXPORT int edgepet_ort_api_version(void);

/* The packed weight layout the library reads ("tile32-nibble4"), the LutMatMul `layout`
 * attribute and a bundle manifest's operator.layout. */
EDGEPET_EXPORT const char* edgepet_op_layout(void);

#ifdef __cplusplus
}
#endif

#endif /* EDGEPET_EDGEPET_ORT_H_ */
