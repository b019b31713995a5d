// Backing constant weights with transparent huge pages (Linux), so that a GEMV streaming
// them from memory crosses no 4 KB page boundary: the hardware prefetchers stop at each
// one, and each costs a TLB walk. docs/operator.md, "Huge pages".
#pragma once

#include <cstddef>

namespace edgepet {

// Asks the kernel to back [data, data + bytes) with transparent huge pages, now: the range
// rounded out to whole huge pages is marked MADV_HUGEPAGE and collapsed in place
// (MADV_COLLAPSE, Linux 6.1+; the contents are unchanged, no copy survives). Returns
// whether the whole range now lies in huge pages. False, having changed nothing that
// matters, where the system has no transparent huge pages, refuses (THP "never", memory
// too fragmented, file-backed memory), or is not Linux; the weights work either way.
// Costs about as much as copying the range once.
bool back_with_huge_pages(const void* data, size_t bytes);

// Whether EDGEPET_HUGE_PAGES in the environment allows back_with_huge_pages ("0" turns it
// off; unset or anything else leaves it on).
bool huge_pages_wanted();

}  // namespace edgepet
