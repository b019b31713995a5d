// Backing constant weights with transparent huge pages (Linux), so that a GEMV streaming
// them from memory crosses no 4 KB page boundary: the hardware prefetchers stop at each
// one, and each costs a TLB walk. docs/operator.md, "Huge pages".
#pragma once

#include <cstddef>
#include <memory>

namespace edgepet {

// Asks the kernel to back [data, data + bytes) with transparent huge pages, now: the range
// rounded out to whole huge pages is marked MADV_HUGEPAGE and collapsed in place
// (MADV_COLLAPSE, Linux 6.1+; the contents are unchanged, no copy survives). Returns
// whether the whole range now lies in huge pages. False, having changed nothing that
// matters, where the system has no transparent huge pages, refuses (THP "never", memory
// too fragmented, file-backed memory), or is not Linux; the weights work either way.
// Costs about as much as copying the range once.
bool back_with_huge_pages(const void* data, size_t bytes);

// Where a kernel reads constant weights from, for its lifetime (place_in_huge_pages).
struct HugePagePlacement {
  const void* data = nullptr;         // the weights: the original, or a copy of them
  bool in_huge_pages = false;         // whether [data, data + bytes) lies in huge pages
  std::shared_ptr<const void> copy;   // keeps the copy's memory (null: data is the original)
};

// Puts constant weights in huge pages. Anonymous memory (a model ONNX Runtime read into
// its own buffers) is collapsed in place (back_with_huge_pages). Memory mapped from a file
// (ONNX Runtime maps each initializer of a bundle's model.onnx.data; MADV_COLLAPSE does
// not take file pages) is copied into anonymous memory in huge pages, shared with other
// copies in chunks of 16 huge pages, each unmapped when the last copy in it is released.
// The same bytes of the same file placed again while their copy lives (a second session
// of one bundle) share that copy, if its bytes still equal the source's.
// The original's pages are then dropped from the process (MADV_DONTNEED) where every one
// of them still holds the file's bytes (none written to: /proc/self/pagemap), so the
// weights are not resident twice; a later read would fault them back in from the page
// cache. Where a copy would not land in huge pages (THP "never", before Linux 6.1, not
// Linux), or huge pages are larger than 2 MB (16 KB-page kernels: 32 MB, of which a copy
// would leave up to one unused but resident), nothing is copied: the original, not in
// huge pages.
HugePagePlacement place_in_huge_pages(const void* data, size_t bytes);

// Whether EDGEPET_HUGE_PAGES in the environment allows back_with_huge_pages ("0" turns it
// off; unset or anything else leaves it on).
bool huge_pages_wanted();

// Whether `data` lies in memory mapped from a file (/proc/self/maps; exposed for the
// tests).
bool mapped_from_file(const void* data);

}  // namespace edgepet
