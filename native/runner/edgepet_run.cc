// edgepet-run: run an edgepet bundle without Python.
//
//   edgepet-run BUNDLE [--adapter NAME] [--threads N] [--runs N] [--warmup N]
//               [--batch 1|full] [--op-library PATH] [--onnxruntime PATH]
//
// Reads BUNDLE/manifest.json, loads ONNX Runtime (dlopen: the device's
// libonnxruntime.so.1, or --onnxruntime) and the op library (the bundle's lib/ when it
// ships one, or --op-library), optionally activates a task adapter, times the reference
// inputs (load, first run, warm-up, N runs), checks every task's outputs against
// reference/ and prints one JSON object: timings, percentiles, peak RSS and errors.
// Exit codes: 0 within tolerance, 3 an error beyond the manifest's tolerance (as
// `edgepet verify`), 2 bad input.
#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <onnxruntime_c_api.h>

#include "json.h"
#include "npz.h"

namespace {

struct BadInput : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string bundle, adapter, op_library, onnxruntime, batch = "1";
  int threads = 0, runs = 20, warmup = 3;
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw BadInput(a + " needs a value");
      return argv[++i];
    };
    auto number = [&]() -> int {
      std::string v = value();
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (*end || n < 0) throw BadInput(a + " " + v + ": give a whole number");
      return static_cast<int>(n);
    };
    if (a == "--adapter") o.adapter = value();
    else if (a == "--threads") o.threads = number();
    else if (a == "--runs") o.runs = std::max(1, number());
    else if (a == "--warmup") o.warmup = number();
    else if (a == "--batch") o.batch = value();
    else if (a == "--op-library") o.op_library = value();
    else if (a == "--onnxruntime") o.onnxruntime = value();
    else if (!a.empty() && a[0] == '-') throw BadInput("unknown option " + a);
    else if (o.bundle.empty()) o.bundle = a;
    else throw BadInput("one bundle folder only, got " + o.bundle + " and " + a);
  }
  if (o.bundle.empty()) throw BadInput("usage: edgepet-run BUNDLE [--adapter NAME] [--threads N] "
                                       "[--runs N] [--warmup N] [--batch 1|full] "
                                       "[--op-library PATH] [--onnxruntime PATH]");
  if (o.batch != "1" && o.batch != "full") throw BadInput("--batch: 1 or full");
  return o;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw BadInput("cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// --- ONNX Runtime, loaded at run time --------------------------------------------------------

class Ort {
 public:
  explicit Ort(const std::string& path) {
    std::vector<std::string> names;
    if (!path.empty()) names.push_back(path);
    names.insert(names.end(), {"libonnxruntime.so.1", "libonnxruntime.so",
                               "libonnxruntime.dylib"});
    std::string errors;
    for (const auto& name : names) {
      handle_ = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle_) break;
      errors += std::string("\n  ") + dlerror();
    }
    if (!handle_) throw BadInput("ONNX Runtime's shared library was not found:" + errors +
                                 "\n  install it, set LD_LIBRARY_PATH, or give --onnxruntime");
    using GetBase = const OrtApiBase* (*)();
    auto get_base = reinterpret_cast<GetBase>(dlsym(handle_, "OrtGetApiBase"));
    if (!get_base) throw BadInput("the ONNX Runtime library has no OrtGetApiBase");
    version = get_base()->GetVersionString();
    api = get_base()->GetApi(ORT_API_VERSION);
    if (!api) throw BadInput("ONNX Runtime " + version + " is older than the API this runner "
                             "was built for (" + std::to_string(ORT_API_VERSION) + ")");
  }
  void check(OrtStatus* status, const std::string& what) const {
    if (!status) return;
    std::string message = api->GetErrorMessage(status);
    api->ReleaseStatus(status);
    throw BadInput(what + ": " + message);
  }
  const OrtApi* api = nullptr;
  std::string version;

 private:
  void* handle_ = nullptr;
};

// --- tensors ---------------------------------------------------------------------------------

ONNXTensorElementDataType element_type(const std::string& descr) {
  if (descr == "<f4") return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  if (descr == "<i8") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  if (descr == "<i4") return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  throw BadInput("reference arrays of dtype " + descr + " are not supported (float32, int64, "
                 "int32 are)");
}

// The first item along the batch axis (what the Python harness times by default).
edgepet::Array first_item(const edgepet::Array& a) {
  if (a.shape.empty() || a.shape[0] <= 1) return a;
  edgepet::Array one = a;
  one.shape[0] = 1;
  one.data.resize(a.data.size() / static_cast<size_t>(a.shape[0]));
  return one;
}

struct Feeds {
  std::vector<std::string> names;
  std::vector<OrtValue*> values;
  std::vector<edgepet::Array> arrays;  // owns the data the values point into
};

Feeds make_feeds(const Ort& ort, const std::vector<std::string>& names,
                 const std::map<std::string, edgepet::Array>& npz, bool first) {
  Feeds f;
  OrtMemoryInfo* memory = nullptr;
  ort.check(ort.api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory),
            "memory info");
  f.arrays.reserve(names.size());
  for (const auto& name : names) {
    auto it = npz.find(name);
    if (it == npz.end()) throw BadInput("reference inputs have no array '" + name + "'");
    f.arrays.push_back(first ? first_item(it->second) : it->second);
    auto& a = f.arrays.back();
    OrtValue* value = nullptr;
    ort.check(ort.api->CreateTensorWithDataAsOrtValue(
                  memory, a.data.data(), a.data.size(), a.shape.data(), a.shape.size(),
                  element_type(a.descr), &value),
              "input " + name);
    f.names.push_back(name);
    f.values.push_back(value);
  }
  ort.api->ReleaseMemoryInfo(memory);
  return f;
}

// --- errors against the reference ------------------------------------------------------------

struct Error {
  double sq = 0, ref_sq = 0, dot = 0, y_sq = 0, max_abs = 0;
  void add(const float* y, const edgepet::Array& ref) {
    if (ref.descr != "<f4") throw BadInput("reference outputs must be float32");
    const float* r = reinterpret_cast<const float*>(ref.data.data());
    size_t n = ref.data.size() / 4;
    for (size_t i = 0; i < n; ++i) {
      double d = static_cast<double>(y[i]) - r[i];
      sq += d * d;
      ref_sq += static_cast<double>(r[i]) * r[i];
      y_sq += static_cast<double>(y[i]) * y[i];
      dot += static_cast<double>(y[i]) * r[i];
      max_abs = std::max(max_abs, std::fabs(d));
    }
  }
  double relative() const { return ref_sq > 0 ? std::sqrt(sq / ref_sq) : std::sqrt(sq); }
  double cosine() const { return y_sq > 0 && ref_sq > 0 ? dot / std::sqrt(y_sq * ref_sq) : 0; }
};

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  double pos = (v.size() - 1) * q;
  size_t lo = static_cast<size_t>(std::floor(pos)), hi = static_cast<size_t>(std::ceil(pos));
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

// This process's peak resident memory. On Linux from /proc/self/status's VmHWM, the high
// water mark of this program's own address space: getrusage's ru_maxrss keeps the peak
// from before exec, i.e. that of the process that forked us (a Python process of some GB
// launching the runner would be reported instead).
long peak_rss_bytes() {
#ifndef __APPLE__
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10) * 1024L;
  }
#endif
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
#ifdef __APPLE__
  return usage.ru_maxrss;
#else
  return usage.ru_maxrss * 1024L;
#endif
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

using Clock = std::chrono::steady_clock;
double since_ns(Clock::time_point t) {
  return std::chrono::duration<double, std::nano>(Clock::now() - t).count();
}

// Before anything is loaded: a bundle made for a platform its exporter could not build
// the op library for says so (operator.missing); without --op-library, stop with that.
void check_op_library(const edgepet::json::Value& manifest, const Options& o) {
  const auto& op = manifest["operator"];
  if (!o.op_library.empty() || op["library"].is_string()) return;
  for (const auto& m : op["missing"].array())
    if (m["what"].is_string() && m["what"].str() == "op library")
      throw BadInput("the bundle carries no op library for " + manifest["target"]["name"].str() +
                     ": " + m["why"].str() + " — " + m["how"].str() +
                     " (or give --op-library PATH)");
}

class Runner {
 public:
  Runner(const Options& o, const Ort& ort, edgepet::json::Value manifest)
      : o_(o), ort_(ort), api_(ort.api), manifest_(std::move(manifest)) {
    for (const auto& v : manifest_["inputs"].array()) inputs_.push_back(v["name"].str());
    for (const auto& v : manifest_["outputs"].array()) outputs_.push_back(v["name"].str());
  }

  int run() {
    auto t0 = Clock::now();
    create_session();
    double load_ns = since_ns(t0);
    OrtRunOptions* run_options = nullptr;
    ort_.check(api_->CreateRunOptions(&run_options), "run options");
    if (!o_.adapter.empty()) activate(run_options, o_.adapter);
    auto ref_inputs = edgepet::read_npz(o_.bundle + "/" +
                                        manifest_["reference"]["inputs"].str());
    bool dynamic = !manifest_["inputs"].array().empty() &&
                   manifest_["inputs"].array()[0]["shape"].array()[0].is_string();
    Feeds timed = make_feeds(ort_, inputs_, ref_inputs, o_.batch == "1" && dynamic);
    int64_t batch = timed.arrays.empty() || timed.arrays[0].shape.empty()
                        ? 1 : timed.arrays[0].shape[0];

    t0 = Clock::now();
    release(run_once(run_options, timed));
    double first_ns = since_ns(t0);
    for (int i = 0; i < o_.warmup; ++i) release(run_once(run_options, timed));
    std::vector<double> samples;
    for (int i = 0; i < o_.runs; ++i) {
      t0 = Clock::now();
      auto out = run_once(run_options, timed);
      samples.push_back(since_ns(t0));
      release(out);
    }
    std::string accuracy = check_accuracy(ref_inputs);
    api_->ReleaseRunOptions(run_options);

    double mean = 0, var = 0;
    for (double s : samples) mean += s / samples.size();
    for (double s : samples) var += (s - mean) * (s - mean) / std::max<size_t>(1, samples.size() - 1);
    std::printf("{\"runner\": \"edgepet-run\", \"onnxruntime\": %s, \"op_library\": %s, "
                "\"bundle\": %s, \"adapter\": %s, \"n_threads\": %d, \"batch\": %lld, "
                "\"warmup\": %d, \"load_ns\": %.0f, \"first_run_ns\": %.0f, \"n_runs\": %zu, "
                "\"median_ns\": %.0f, \"p90_ns\": %.0f, \"p99_ns\": %.0f, \"avg_ns\": %.0f, "
                "\"stddev_ns\": %.0f, \"avg_ts\": %.3f, \"peak_rss_bytes\": %ld, "
                "\"samples_ns\": [",
                json_string(ort_.version).c_str(), json_string(library_).c_str(),
                json_string(o_.bundle).c_str(),
                o_.adapter.empty() ? "null" : json_string(o_.adapter).c_str(), o_.threads,
                static_cast<long long>(batch), o_.warmup, load_ns, first_ns, samples.size(),
                percentile(samples, 0.5), percentile(samples, 0.9), percentile(samples, 0.99),
                mean, std::sqrt(var), batch * 1e9 / mean, peak_rss_bytes());
    for (size_t i = 0; i < samples.size(); ++i)
      std::printf("%s%.0f", i ? ", " : "", samples[i]);
    std::printf("], \"accuracy\": [%s], \"ok\": %s}\n", accuracy.c_str(), ok_ ? "true" : "false");
    return ok_ ? 0 : 3;
  }

  ~Runner() {
    for (auto& a : adapters_) api_->ReleaseLoraAdapter(a.second);
    if (session_) api_->ReleaseSession(session_);
    if (env_) api_->ReleaseEnv(env_);
  }

 private:
  void create_session() {
    ort_.check(api_->CreateEnv(ORT_LOGGING_LEVEL_ERROR, "edgepet-run", &env_), "env");
    OrtSessionOptions* options = nullptr;
    ort_.check(api_->CreateSessionOptions(&options), "session options");
    if (o_.threads > 0) {
      ort_.check(api_->SetIntraOpNumThreads(options, o_.threads), "threads");
      ort_.check(api_->SetInterOpNumThreads(options, 1), "threads");
    }
    library_ = o_.op_library;
    const auto& shipped = manifest_["operator"]["library"];
    if (library_.empty() && shipped.is_string()) library_ = o_.bundle + "/" + shipped.str();
    if (library_.empty()) library_ = "libedgepet_ort.so";
    ort_.check(api_->RegisterCustomOpsLibrary_V2(options, library_.c_str()),
               "loading the op library " + library_ + " (give --op-library PATH)");
    std::string model = o_.bundle + "/" + manifest_["model"]["file"].str();
    ort_.check(api_->CreateSession(env_, model.c_str(), options, &session_), "loading " + model);
    api_->ReleaseSessionOptions(options);
  }

  void activate(OrtRunOptions* run_options, const std::string& name) {
    if (!adapters_.count(name)) {
      std::string file;
      for (const auto& a : manifest_["adapters"].array())
        if (a["name"].str() == name) file = o_.bundle + "/" + a["file"].str();
      if (file.empty()) throw BadInput("the bundle has no adapter '" + name + "'");
      OrtLoraAdapter* adapter = nullptr;
      ort_.check(api_->CreateLoraAdapter(file.c_str(), nullptr, &adapter), "adapter " + file);
      adapters_[name] = adapter;
    }
    ort_.check(api_->RunOptionsAddActiveLoraAdapter(run_options, adapters_[name]),
               "activating adapter " + name);
  }

  std::vector<OrtValue*> run_once(OrtRunOptions* run_options, const Feeds& f) {
    std::vector<const char*> in, out;
    for (const auto& n : f.names) in.push_back(n.c_str());
    for (const auto& n : outputs_) out.push_back(n.c_str());
    std::vector<OrtValue*> values(outputs_.size(), nullptr);
    ort_.check(api_->Run(session_, run_options, in.data(), f.values.data(), in.size(),
                         out.data(), out.size(), values.data()),
               "running the model");
    return values;
  }

  void release(const std::vector<OrtValue*>& values) {
    for (auto* v : values) api_->ReleaseValue(v);
  }

  // Every task (or the default graph) against reference/: fp32 PyTorch and dequantized graph.
  std::string check_accuracy(const std::map<std::string, edgepet::Array>& ref_inputs) {
    Feeds all = make_feeds(ort_, inputs_, ref_inputs, false);
    const auto& ref = manifest_["reference"];
    double tolerance = ref["tolerance"]["vs_pytorch"].number();
    std::vector<std::pair<std::string, const edgepet::json::Value*>> tasks;
    for (const auto& a : manifest_["adapters"].array()) tasks.push_back({a["name"].str(), &a});
    if (tasks.empty()) tasks.push_back({"", nullptr});
    std::string json;
    for (const auto& task : tasks) {
      const std::string& name = task.first;
      const edgepet::json::Value* entry = task.second;
      OrtRunOptions* run_options = nullptr;
      ort_.check(api_->CreateRunOptions(&run_options), "run options");
      if (!name.empty()) activate(run_options, name);
      auto got = run_once(run_options, all);
      auto file = [&](const char* key, const char* fallback) {
        if (entry && (*entry)[key].is_string()) return (*entry)[key].str();
        return ref[fallback].str();
      };
      auto fp32 = edgepet::read_npz(o_.bundle + "/" + file("reference_outputs", "outputs"));
      auto quant = edgepet::read_npz(o_.bundle + "/" +
                                     file("quantized_outputs", "quantized_outputs"));
      Error vs_fp32, vs_quant;
      for (size_t i = 0; i < outputs_.size(); ++i) {
        float* y = nullptr;
        ort_.check(api_->GetTensorMutableData(got[i], reinterpret_cast<void**>(&y)), "output");
        vs_fp32.add(y, fp32.at(outputs_[i]));
        vs_quant.add(y, quant.at(outputs_[i]));
      }
      release(got);
      api_->ReleaseRunOptions(run_options);
      bool ok = vs_fp32.relative() <= tolerance;
      ok_ = ok_ && ok;
      char line[1024];
      std::snprintf(line, sizeof line,
                    "%s{\"adapter\": %s, \"vs_pytorch\": {\"relative_error\": %.6g, "
                    "\"max_abs_error\": %.6g, \"cosine\": %.8g, \"top1_agreement\": null}, "
                    "\"vs_dequantized\": {\"relative_error\": %.6g, \"max_abs_error\": %.6g, "
                    "\"cosine\": %.8g, \"top1_agreement\": null}, "
                    "\"tolerance_vs_pytorch\": %g, \"ok\": %s}",
                    json.empty() ? "" : ", ", name.empty() ? "null" : json_string(name).c_str(),
                    vs_fp32.relative(), vs_fp32.max_abs, vs_fp32.cosine(), vs_quant.relative(),
                    vs_quant.max_abs, vs_quant.cosine(), tolerance, ok ? "true" : "false");
      json += line;
    }
    for (auto* v : all.values) api_->ReleaseValue(v);
    return json;
  }

  const Options& o_;
  const Ort& ort_;
  const OrtApi* api_;
  edgepet::json::Value manifest_;
  std::vector<std::string> inputs_, outputs_;
  std::map<std::string, OrtLoraAdapter*> adapters_;
  std::string library_;
  OrtEnv* env_ = nullptr;
  OrtSession* session_ = nullptr;
  bool ok_ = true;
};

}  // namespace

int main(int argc, char** argv) {
  try {
    Options options = parse_args(argc, argv);
    if (!file_exists(options.bundle + "/manifest.json"))
      throw BadInput(options.bundle + " is not a bundle folder (no manifest.json)");
    auto manifest = edgepet::json::parse(read_file(options.bundle + "/manifest.json"));
    if (manifest["schema"].str() != "edgepet.bundle")
      throw BadInput(options.bundle + "/manifest.json is not an edgepet bundle manifest");
    check_op_library(manifest, options);
    Ort ort(options.onnxruntime);
    Runner runner(options, ort, std::move(manifest));
    return runner.run();
  } catch (const BadInput& e) {
    std::fprintf(stderr, "edgepet-run: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edgepet-run: error: %s\n", e.what());
    return 2;
  }
}
