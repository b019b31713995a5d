// edgepet._native: the kernels from Python (nanobind). The only file here that
// knows Python.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "edgepet/version.h"
#include "kernels/gemm.h"
#include "kernels/pack.h"
#include "thread_pool.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace edgepet {
namespace {

using CodesIn = nb::ndarray<const uint8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using BytesIn = nb::ndarray<const uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Floats2 = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Floats1 = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
// fp16 scales and zero points, passed as their bits (numpy: .view(np.uint16)).
using Halves3 = nb::ndarray<const uint16_t, nb::ndim<3>, nb::c_contig, nb::device::cpu>;

template <typename T>
nb::ndarray<nb::numpy, T> owned_array(std::vector<size_t> shape) {
  size_t count = 1;
  for (size_t d : shape) count *= d;
  T* data = new T[count > 0 ? count : 1];
  nb::capsule owner(data, [](void* p) noexcept { delete[] static_cast<T*>(p); });
  return nb::ndarray<nb::numpy, T>(data, shape.size(), shape.data(), owner);
}

// Raises ValueError with `what` when it is not empty.
void raise_if(const std::string& what) {
  if (!what.empty()) throw nb::value_error(what.c_str());
}

// A format for packing and sizing alone: per-row groups, symmetric.
WeightFormat codes_format(int64_t n, int64_t k, int bits) {
  WeightFormat f;
  f.n = n;
  f.k = k;
  f.bits = bits;
  f.group_size = k;
  return f;
}

nb::ndarray<nb::numpy, uint8_t> pack(CodesIn codes, int bits) {
  const WeightFormat f = codes_format(static_cast<int64_t>(codes.shape(0)),
                                      static_cast<int64_t>(codes.shape(1)), bits);
  raise_if(check_format(f));
  const uint8_t top = static_cast<uint8_t>((1 << bits) - 1);
  const uint8_t* c = codes.data();
  for (size_t i = 0; i < codes.size(); ++i) {
    if (c[i] > top) {
      throw nb::value_error(("code " + std::to_string(c[i]) + " at flat index " +
                             std::to_string(i) + " does not fit in " + std::to_string(bits) +
                             " bits")
                                .c_str());
    }
  }
  auto out = owned_array<uint8_t>({static_cast<size_t>(packed_bytes(f))});
  {
    nb::gil_scoped_release release;
    pack_codes(c, f.n, f.k, bits, out.data());
  }
  return out;
}

template <class Array>
OperandShape shape_of(const Array& t) {
  OperandShape shape{true, {}};
  for (size_t d = 0; d < t.ndim(); ++d) shape.dims.push_back(static_cast<int64_t>(t.shape(d)));
  return shape;
}

nb::ndarray<nb::numpy, float> lut_matmul(Floats2 a, BytesIn codes, Halves3 scales,
                                         std::optional<Halves3> zero_points,
                                         std::optional<Floats1> bias, int64_t n, int bits,
                                         bool ternary, int64_t group_size, int threads,
                                         const std::string& kernel_name, bool zero_level) {
  WeightFormat f;
  f.n = n;
  f.k = static_cast<int64_t>(a.shape(1));
  f.bits = bits;
  f.ternary = ternary;
  f.symmetric = ternary || !zero_points.has_value();
  f.zero_level = zero_level;
  f.group_size = group_size;
  Operands operands{shape_of(codes), shape_of(scales), {}, {}};
  if (zero_points) operands.zero_points = shape_of(*zero_points);
  if (bias) operands.bias = shape_of(*bias);
  raise_if(check_operands(f, operands));
  const Kernel* kernel = select_kernel(kernel_name);
  if (!kernel) {
    throw nb::value_error(("kernel '" + kernel_name +
                           "' is not available on this CPU/build; see available_kernels()")
                              .c_str());
  }
  if (threads < 0) throw nb::value_error("threads must be >= 0 (0: all cores)");
  const size_t m = a.shape(0);
  auto y = owned_array<float>({m, static_cast<size_t>(n)});
  GemmArgs args;
  args.format = f;
  args.a = a.data();
  args.m = static_cast<int64_t>(m);
  args.codes = codes.data();
  args.scales = scales.data();
  args.zero_points = zero_points ? zero_points->data() : nullptr;
  args.bias = bias ? bias->data() : nullptr;
  args.y = y.data();
  {
    nb::gil_scoped_release release;
    lut_gemm(*kernel, args, ThreadPool::shared(threads));
  }
  return y;
}

int64_t packed_nbytes(int64_t n, int64_t k, int bits) {
  const WeightFormat f = codes_format(n, k, bits);
  raise_if(check_format(f));
  return packed_bytes(f);
}

// Reads `buffer` once with `threads` threads (64-bit adds, so the loop is bound by the
// loads), returning the seconds taken: the machine's read bandwidth, measured the way a
// GEMV streams its weights. `prefetch_bytes` > 0 also asks for the line that far ahead,
// as the kernels do: on CPUs whose single core cannot keep enough misses in flight from
// its hardware prefetcher alone (Sapphire Rapids in a VM read 7.9 GB/s without it while
// a prefetching GEMV read 9.1), the plain loop understates the bandwidth.
struct ReadJob {
  const uint64_t* data;
  int64_t words_per_chunk;
  int64_t words;
  int64_t prefetch_words;
  std::vector<uint64_t> sums;
};

void read_chunk(void* ctx, int64_t i) {
  auto& job = *static_cast<ReadJob*>(ctx);
  const int64_t begin = i * job.words_per_chunk;
  const int64_t end = std::min(job.words, begin + job.words_per_chunk);
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t w = begin;
  constexpr int64_t kLine = 64 / sizeof(uint64_t);
  for (; w + kLine <= end; w += kLine) {
    if (job.prefetch_words > 0 && w + job.prefetch_words < job.words) {
      __builtin_prefetch(job.data + w + job.prefetch_words, 0, 3);
    }
    s0 += job.data[w] + job.data[w + 4];
    s1 += job.data[w + 1] + job.data[w + 5];
    s2 += job.data[w + 2] + job.data[w + 6];
    s3 += job.data[w + 3] + job.data[w + 7];
  }
  for (; w < end; ++w) s0 += job.data[w];
  job.sums[static_cast<size_t>(i)] = s0 + s1 + s2 + s3;
}

double read_seconds(BytesIn buffer, int threads, int64_t prefetch_bytes) {
  if (threads < 1) throw nb::value_error("threads must be >= 1");
  if (prefetch_bytes < 0) throw nb::value_error("prefetch_bytes must be >= 0");
  ReadJob job;
  job.data = reinterpret_cast<const uint64_t*>(buffer.data());
  job.words = static_cast<int64_t>(buffer.shape(0) / sizeof(uint64_t));
  job.prefetch_words = prefetch_bytes / static_cast<int64_t>(sizeof(uint64_t));
  const int64_t chunks = 64 * threads;
  job.words_per_chunk = ceil_div(std::max<int64_t>(job.words, 1), chunks);
  job.sums.assign(static_cast<size_t>(chunks), 0);
  nb::gil_scoped_release release;
  const auto t0 = std::chrono::steady_clock::now();
  ThreadPool::shared(threads).run(chunks, read_chunk, &job);
  const auto t1 = std::chrono::steady_clock::now();
  volatile uint64_t sink = 0;
  for (uint64_t s : job.sums) sink = sink + s;
  return std::chrono::duration<double>(t1 - t0).count();
}

std::vector<std::string> kernel_names() {
  std::vector<std::string> names;
  for (const Kernel* k : available_kernels()) names.push_back(k->name);
  return names;
}

}  // namespace
}  // namespace edgepet

NB_MODULE(_native, m) {
  m.doc() = "edgepet's LUT kernels (native core)";
  m.attr("LAYOUT") = edgepet::kLayoutName;
  m.attr("OP_ABI_VERSION") = EDGEPET_OP_ABI_VERSION;
  m.def("pack", &edgepet::pack, "codes"_a, "bits"_a,
        "Pack uint8 codes [N, K] into the tile32 layout.");
  m.def("lut_matmul", &edgepet::lut_matmul, "a"_a, "codes"_a, "scales"_a,
        "zero_points"_a.none(), "bias"_a.none(), "n"_a, "bits"_a, "ternary"_a, "group_size"_a,
        "threads"_a, "kernel"_a, "zero_level"_a = false,
        "Y = A . dequant(W)^T (+ bias) through the LUT kernels.");
  m.def("packed_bytes", &edgepet::packed_nbytes, "n"_a, "k"_a, "bits"_a,
        "Bytes of the packed codes of an N x K weight at `bits` bits.");
  m.def("read_seconds", &edgepet::read_seconds, "buffer"_a, "threads"_a,
        "prefetch_bytes"_a = 0,
        "Seconds to read a uint8 buffer once with `threads` threads, asking for the line "
        "`prefetch_bytes` ahead when > 0 (bandwidth probe).");
  m.def("available_kernels", &edgepet::kernel_names, "Kernels usable on this CPU.");
}
