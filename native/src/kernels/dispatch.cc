// Picks the kernel for this CPU at run time; the one place that knows the list.
#include <cstdlib>

#include "kernels/gemm.h"

namespace edgepet {

#ifndef EDGEPET_HAVE_AVX2
const Kernel* avx2_kernel() { return nullptr; }
#endif
#ifndef EDGEPET_HAVE_AVX512
const Kernel* avx512_kernel() { return nullptr; }
#endif
#ifndef EDGEPET_HAVE_NEON
const Kernel* neon_kernel() { return nullptr; }
#endif

const Kernel* select_kernel(const std::string& name) {
  std::string wanted = name;
  if (wanted == "auto") {
    const char* env = std::getenv("EDGEPET_KERNEL");
    if (env && *env) wanted = env;
  }
  if (wanted == "reference") return &reference_kernel();
  if (wanted == "avx2") return avx2_kernel();
  if (wanted == "avx512") return avx512_kernel();
  if (wanted == "neon") return neon_kernel();
  if (wanted == "auto") {
    if (const Kernel* k = avx512_kernel()) return k;
    if (const Kernel* k = avx2_kernel()) return k;
    if (const Kernel* k = neon_kernel()) return k;
    return &reference_kernel();
  }
  return nullptr;
}

}  // namespace edgepet
