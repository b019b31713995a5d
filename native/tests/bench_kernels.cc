// Times each kernel alone (no ONNX Runtime, one thread) on an N x K product, so that
// kernel changes can be measured without session overhead:
//   bench_kernels [M] [N] [K] [group_size] [kernel] [asymmetric|zero-level]
//   (defaults: 1 4096 4096 128, all kernels including what "auto" picks where that
//   mixes kernels per bit width, symmetric; "asymmetric": with zero points;
//   "zero-level": symmetric codes with a zero level, 2 to 4 bits)
// Prints min and median milliseconds over 300 runs per kernel and format: 1 to 4 bits,
// then ternary (always symmetric: its codes carry their own offset).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/gemm.h"

using namespace edgepet;

int main(int argc, char** argv) {
  const int64_t m = argc > 1 ? std::atoll(argv[1]) : 1;
  const int64_t n = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int64_t k = argc > 3 ? std::atoll(argv[3]) : 4096;
  const int64_t group = argc > 4 ? std::atoll(argv[4]) : 128;
  const std::string only = argc > 5 ? argv[5] : "";
  const std::string codes_kind = argc > 6 ? argv[6] : "";
  const bool asymmetric = codes_kind == "asymmetric";
  const bool zero_level = codes_kind == "zero-level";
  if (!codes_kind.empty() && !asymmetric && !zero_level) {
    std::fprintf(stderr, "codes '%s': use asymmetric or zero-level\n", codes_kind.c_str());
    return 2;
  }
  std::vector<const Kernel*> kernels = available_kernels();
  const Kernel* chosen = select_kernel("auto");  // may mix kernels per bit width
  if (chosen && std::find(kernels.begin(), kernels.end(), chosen) == kernels.end()) {
    kernels.insert(kernels.begin(), chosen);
  }
  for (const Kernel* kernel : kernels) {
    if (!only.empty() && only != kernel->name) continue;
    for (int bits = 1; bits <= 5; ++bits) {  // 5: ternary
      const bool ternary = bits == 5;
      if (zero_level && (ternary || bits == 1)) continue;  // zero-level: 2 to 4 bits
      WeightFormat f{n, k, ternary ? 2 : bits, ternary, ternary || !asymmetric, group,
                     zero_level};
      if (!check_format(f).empty()) {
        std::fprintf(stderr, "bad shape: %s\n", check_format(f).c_str());
        return 2;
      }
      // 64-byte aligned, as ONNX Runtime allocates initializers: a 64-byte load that
      // straddles two cache lines would time the allocator, not the kernel.
      std::vector<uint8_t> storage(packed_bytes(f) + 64, 0x5a);
      uint8_t* codes = storage.data() + (64 - reinterpret_cast<uintptr_t>(storage.data()) % 64);
      std::vector<float> a(m * k), y(m * n);
      std::vector<Half> scales(scale_count(f), 0x211F);  // 0.01 in fp16
      std::vector<Half> zeros(scale_count(f), 0x4000);   // 2.0 in fp16
      for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i * 7919 % 1000) / 1000.f;
      GemmArgs args;
      args.format = f;
      args.a = a.data();
      args.m = m;
      args.codes = codes;
      args.scales = scales.data();
      args.zero_points = f.symmetric ? nullptr : zeros.data();
      args.y = y.data();
      std::vector<double> ms;
      for (int r = 0; r < 300; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        lut_gemm(*kernel, args, Serial());
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
      }
      std::sort(ms.begin(), ms.end());
      std::printf("%-11s %-7s M=%lld N=%lld K=%lld  min %.4f  median %.4f ms\n", kernel->name,
                  ternary ? "ternary" : ("bits=" + std::to_string(bits)).c_str(), (long long)m,
                  (long long)n, (long long)k, ms[0], ms[ms.size() / 2]);
    }
  }
  return 0;
}
