#include "huge_pages.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace edgepet {

bool huge_pages_wanted() {
  const char* env = std::getenv("EDGEPET_HUGE_PAGES");
  return !(env && std::strcmp(env, "0") == 0);
}

#ifdef __linux__
namespace {

// MADV_COLLAPSE's value in Linux's uapi; older C libraries do not name it.
constexpr int kMadvCollapse = 25;

// The transparent huge page size (2 MB on x86-64 and 4 KB-page ARM kernels, 32 MB with
// 16 KB pages, e.g. Raspberry Pi 5), or 0 where there are none.
uintptr_t huge_page_size() {
  static const uintptr_t size = [] {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size");
    unsigned long long bytes = 0;
    if (!(f >> bytes)) return uintptr_t{0};
    return static_cast<uintptr_t>(bytes);
  }();
  return size;
}

// Marks and collapses the huge pages [first, end); whether all of them now are.
bool collapse(uintptr_t first, uintptr_t end) {
  if (end <= first) return false;
  void* range = reinterpret_cast<void*>(first);
  return madvise(range, end - first, MADV_HUGEPAGE) == 0 &&
         madvise(range, end - first, kMadvCollapse) == 0;
}

}  // namespace

bool back_with_huge_pages(const void* data, size_t bytes) {
  const uintptr_t page = huge_page_size();
  if (page == 0 || bytes == 0) return false;
  const uintptr_t start = reinterpret_cast<uintptr_t>(data), stop = start + bytes;
  // Whole huge pages around the range (their other bytes keep their contents too); where
  // one of them reaches past the mapping, the whole pages inside the range, if they hold
  // nearly all of it (ONNX Runtime places initializers back to back in one buffer, and
  // the last one may end near its end).
  if (collapse(start / page * page, (stop + page - 1) / page * page)) return true;
  const uintptr_t first = (start + page - 1) / page * page, end = stop / page * page;
  return collapse(first, end) && (end - first) >= bytes / 10 * 9;
}
#else
bool back_with_huge_pages(const void*, size_t) { return false; }
#endif

}  // namespace edgepet
