// Picks the kernel for this CPU at run time; the one place that knows the list.
#include <cstdlib>

#include "kernels/dot4.h"
#include "kernels/gemm.h"

namespace edgepet {

#ifndef EDGEPET_HAVE_AVX2
const Kernel* avx2_kernel() { return nullptr; }
const Dot4Kernel* avx2_dot4_kernel() { return nullptr; }
#endif
#ifndef EDGEPET_HAVE_AVX512
const Kernel* avx512_kernel() { return nullptr; }
const Dot4Kernel* avx512_vnni_dot4_kernel() { return nullptr; }
#endif
#ifndef EDGEPET_HAVE_NEON
const Kernel* neon_kernel() { return nullptr; }
const Dot4Kernel* neon_dot4_kernel() { return nullptr; }
#endif

// 4-bit weights are nibble codes (dot4.h) whatever the kernel: each LUT kernel has a dot
// kernel of its ISA. AVX-512 without VNNI (e.g. Skylake-X) and the per-width AMD choice
// ("avx512+avx2") take the best dot kernel the CPU has: on a 2-core AMD EPYC Zen 4 the
// VNNI kernel measured faster than the AVX2 one at every shape (docs/operator.md).
const Dot4Kernel& dot4_kernel_for(const Kernel& lut) {
  const Dot4Kernel* vnni = avx512_vnni_dot4_kernel();
  const Dot4Kernel* avx2 = avx2_dot4_kernel();
  const Dot4Kernel* neon = neon_dot4_kernel();
  if (&lut == &reference_kernel()) return reference_dot4_kernel();
  if (&lut == avx2_kernel() && avx2) return *avx2;
  if (&lut == neon_kernel() && neon) return *neon;
  if (vnni) return *vnni;
  if (avx2) return *avx2;
  return neon ? *neon : reference_dot4_kernel();
}

namespace {

#ifdef EDGEPET_HAVE_AVX512
// Where the CPU runs a 512-bit vector as two 256-bit halves (AMD Zen 4), the AVX-512
// kernel's only gain over AVX2 is fewer instructions, and that does not pay at every
// width: measured on a 2-core AMD EPYC Zen 4 (native/bench_kernels and
// benchmarks/kernels.py, 4096 x 4096, docs/operator.md), AVX2 is faster for 1-bit GEMV
// and AVX-512 for 2-bit and ternary, and for every width once two activation rows share
// the unpacked codes (prefill). Both read the same tables and give the same sums, so the
// choice is per call. Slot 0 is ternary; 3- and 4-bit formats never reach a LUT kernel
// (lut_gemm hands them to dot4_gemm).
struct PerBits {
  const Kernel* one_row[3];
  const Kernel* two_rows[3];
};

const PerBits& zen4_choice() {
  static const PerBits choice = [] {
    const Kernel* avx2 = avx2_kernel();
    const Kernel* avx512 = avx512_kernel();
    return PerBits{{avx512, avx2, avx512}, {avx512, avx512, avx512}};
  }();
  return choice;
}

void zen4_tile_dot(const TileJob& job) {
  const PerBits& choice = zen4_choice();
  const int slot = job.format.ternary ? 0 : job.format.bits;
  const Kernel* kernel = job.rows > 1 ? choice.two_rows[slot] : choice.one_row[slot];
  kernel->tile_dot(job);
}

// The AVX-512 and AVX2 kernels, per bit width, on AMD CPUs with AVX-512; null elsewhere.
const Kernel* amd_avx512_kernel() {
  if (!avx512_kernel() || !avx2_kernel() || !__builtin_cpu_is("amd")) return nullptr;
  // Both kernels build their tables with the AVX2 code.
  static const Kernel kernel{"avx512+avx2", avx2_kernel()->build_tables, zen4_tile_dot};
  return &kernel;
}
#else
const Kernel* amd_avx512_kernel() { return nullptr; }
#endif

}  // namespace

std::vector<const Kernel*> available_kernels() {
  std::vector<const Kernel*> kernels;
  for (const Kernel* k : {avx512_kernel(), avx2_kernel(), neon_kernel()}) {
    if (k) kernels.push_back(k);
  }
  kernels.push_back(&reference_kernel());
  return kernels;
}

const Kernel* select_kernel(const std::string& name) {
  std::string wanted = name;
  if (wanted == "auto") {
    const char* env = std::getenv("EDGEPET_KERNEL");
    if (env && *env) wanted = env;
  }
  const std::vector<const Kernel*> kernels = available_kernels();
  if (wanted == "auto") {
    const Kernel* per_bits = amd_avx512_kernel();
    return per_bits ? per_bits : kernels.front();
  }
  for (const Kernel* k : kernels) {
    if (wanted == k->name) return k;
  }
  return nullptr;
}

}  // namespace edgepet
