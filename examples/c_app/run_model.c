/* An app without Python: plain ONNX Runtime C API + edgepet's op library.
 *
 *   run_model LIBEDGEPET_ORT MODEL.onnx K [M]
 *
 * Loads the op library into the session options, runs the model on an input of
 * M x K values (x[i] = sin(i)), and prints the outputs, one per line.
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

int main(int argc, char** argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: %s LIBEDGEPET_ORT MODEL.onnx K [M]\n", argv[0]);
    return 2;
  }
  const int64_t k = atoll(argv[3]);
  const int64_t m = argc > 4 ? atoll(argv[4]) : 1;
  api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (!api) {
    fprintf(stderr, "this ONNX Runtime is older than the headers\n");
    return 1;
  }
  OrtEnv* env = NULL;
  OrtSessionOptions* options = NULL;
  OrtSession* session = NULL;
  if (check(api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "edgepet-c-app", &env), "env") ||
      check(api->CreateSessionOptions(&options), "options") ||
      check(api->RegisterCustomOpsLibrary_V2(options, argv[1]), "loading the op library") ||
      check(api->CreateSession(env, argv[2], options, &session), "loading the model")) {
    return 1;
  }
  float* x = malloc(sizeof(float) * (size_t)(m * k));
  for (int64_t i = 0; i < m * k; ++i) x[i] = (float)sin((double)i);
  OrtMemoryInfo* memory = NULL;
  OrtValue* input = NULL;
  OrtValue* output = NULL;
  const int64_t shape[2] = {m, k};
  if (check(api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "memory") ||
      check(api->CreateTensorWithDataAsOrtValue(memory, x, sizeof(float) * (size_t)(m * k), shape,
                                                2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &input),
            "input")) {
    return 1;
  }
  const char* input_names[] = {"x"};
  const char* output_names[] = {"y"};
  if (check(api->Run(session, NULL, input_names, (const OrtValue* const*)&input, 1, output_names,
                     1, &output),
            "run")) {
    return 1;
  }
  OrtTensorTypeAndShapeInfo* info = NULL;
  size_t count = 0;
  float* y = NULL;
  if (check(api->GetTensorTypeAndShape(output, &info), "output shape") ||
      check(api->GetTensorShapeElementCount(info, &count), "output size") ||
      check(api->GetTensorMutableData(output, (void**)&y), "output data")) {
    return 1;
  }
  for (size_t i = 0; i < count; ++i) printf("%.6g\n", y[i]);
  api->ReleaseTensorTypeAndShapeInfo(info);
  api->ReleaseValue(output);
  api->ReleaseValue(input);
  api->ReleaseMemoryInfo(memory);
  api->ReleaseSession(session);
  api->ReleaseSessionOptions(options);
  api->ReleaseEnv(env);
  free(x);
  return 0;
}
