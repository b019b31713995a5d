/* An app without Python: plain ONNX Runtime C API + edgepet's op library.
 *
 *   run_model LIBEDGEPET_ORT MODEL.onnx DIM [DIM ...]
 *
 * Loads the op library into the session options, feeds the model's first input a
 * tensor of the given dimensions (float: x[i] = sin(i); int64: x[i] = i % 7), and
 * prints the first output's values, one per line.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include <onnxruntime_c_api.h>

static const OrtApi* api;

static int check(OrtStatus* status, const char* what) {
  if (!status) return 0;
  fprintf(stderr, "%s: %s\n", what, api->GetErrorMessage(status));
  api->ReleaseStatus(status);
  return 1;
}

/* The first input's element type. */
static int input_type(OrtSession* session, ONNXTensorElementDataType* type) {
  OrtTypeInfo* info = NULL;
  const OrtTensorTypeAndShapeInfo* tensor = NULL;
  int failed = check(api->SessionGetInputTypeInfo(session, 0, &info), "input type") ||
               check(api->CastTypeInfoToTensorInfo(info, &tensor), "input tensor type") ||
               check(api->GetTensorElementType(tensor, type), "input element type");
  if (info) api->ReleaseTypeInfo(info);
  return failed;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s LIBEDGEPET_ORT MODEL.onnx DIM [DIM ...]\n", argv[0]);
    return 2;
  }
  int64_t shape[8];
  size_t rank = 0;
  int64_t count = 1;
  for (int i = 3; i < argc && rank < 8; ++i) {
    shape[rank] = atoll(argv[i]);
    count *= shape[rank++];
  }
  api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (!api) {
    fprintf(stderr, "this ONNX Runtime is older than the headers\n");
    return 1;
  }
  OrtEnv* env = NULL;
  OrtSessionOptions* options = NULL;
  OrtSession* session = NULL;
  OrtAllocator* allocator = NULL;
  char* input_name = NULL;
  char* output_name = NULL;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (check(api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "edgepet-c-app", &env), "env") ||
      check(api->CreateSessionOptions(&options), "options") ||
      check(api->RegisterCustomOpsLibrary_V2(options, argv[1]), "loading the op library") ||
      check(api->CreateSession(env, argv[2], options, &session), "loading the model") ||
      check(api->GetAllocatorWithDefaultOptions(&allocator), "allocator") ||
      check(api->SessionGetInputName(session, 0, allocator, &input_name), "input name") ||
      check(api->SessionGetOutputName(session, 0, allocator, &output_name), "output name") ||
      input_type(session, &type)) {
    return 1;
  }
  size_t element_size = type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 ? 8 : 4;
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
    fprintf(stderr, "input '%s' is neither float nor int64\n", input_name);
    return 1;
  }
  void* data = malloc(element_size * (size_t)count);
  for (int64_t i = 0; i < count; ++i) {
    if (element_size == 8) {
      ((int64_t*)data)[i] = i % 7;
    } else {
      ((float*)data)[i] = (float)sin((double)i);
    }
  }
  OrtMemoryInfo* memory = NULL;
  OrtValue* input = NULL;
  OrtValue* output = NULL;
  if (check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "memory") ||
      check(api->CreateTensorWithDataAsOrtValue(memory, data, element_size * (size_t)count,
                                                shape, rank, type, &input),
            "input")) {
    return 1;
  }
  const char* input_names[] = {input_name};
  const char* output_names[] = {output_name};
  if (check(api->Run(session, NULL, input_names, (const OrtValue* const*)&input, 1, output_names,
                     1, &output),
            "run")) {
    return 1;
  }
  OrtTensorTypeAndShapeInfo* info = NULL;
  size_t values = 0;
  float* y = NULL;
  if (check(api->GetTensorTypeAndShape(output, &info), "output shape") ||
      check(api->GetTensorShapeElementCount(info, &values), "output size") ||
      check(api->GetTensorMutableData(output, (void**)&y), "output data")) {
    return 1;
  }
  for (size_t i = 0; i < values; ++i) printf("%.6g\n", y[i]);
  api->ReleaseTensorTypeAndShapeInfo(info);
  api->ReleaseValue(output);
  api->ReleaseValue(input);
  api->ReleaseMemoryInfo(memory);
  check(api->AllocatorFree(allocator, input_name), "free");
  check(api->AllocatorFree(allocator, output_name), "free");
  api->ReleaseSession(session);
  api->ReleaseSessionOptions(options);
  api->ReleaseEnv(env);
  free(data);
  return 0;
}
