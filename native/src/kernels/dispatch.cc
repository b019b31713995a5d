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
  if (wanted == "auto") return kernels.front();
  for (const Kernel* k : kernels) {
    if (wanted == k->name) return k;
  }
  return nullptr;
}

}  // namespace edgepet
