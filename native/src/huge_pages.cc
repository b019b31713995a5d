#include "huge_pages.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>
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
    std::ifstream mode("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string modes((std::istreambuf_iterator<char>(mode)), std::istreambuf_iterator<char>());
    if (modes.find("[never]") != std::string::npos) return uintptr_t{0};
    return static_cast<uintptr_t>(bytes);
  }();
  return size;
}

uintptr_t round_down(uintptr_t v, uintptr_t to) { return v / to * to; }
uintptr_t round_up(uintptr_t v, uintptr_t to) { return (v + to - 1) / to * to; }

// Marks and collapses the huge pages [first, end); whether all of them now are.
bool collapse(uintptr_t first, uintptr_t end) {
  if (end <= first) return false;
  void* range = reinterpret_cast<void*>(first);
  return madvise(range, end - first, MADV_HUGEPAGE) == 0 &&
         madvise(range, end - first, kMadvCollapse) == 0;
}

// Anonymous memory for copies, its start and size whole huge pages, marked MADV_HUGEPAGE
// before anything touches it (so the first write to each huge page faults in a whole one).
struct Chunk {
  void* mapping = nullptr;
  size_t mapped = 0;
  uint8_t* start = nullptr;
  size_t capacity = 0, used = 0;

  ~Chunk() {
    if (mapping) munmap(mapping, mapped);
  }
};

std::shared_ptr<Chunk> new_chunk(size_t at_least, uintptr_t page) {
  auto chunk = std::make_shared<Chunk>();
  chunk->capacity = round_up(std::max<size_t>(at_least, 16 * page), page);
  chunk->mapped = chunk->capacity + page;  // room to align the start to a huge page
  void* p = mmap(nullptr, chunk->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                 -1, 0);
  if (p == MAP_FAILED) return nullptr;
  chunk->mapping = p;
  chunk->start = reinterpret_cast<uint8_t*>(round_up(reinterpret_cast<uintptr_t>(p), page));
  madvise(chunk->start, chunk->capacity, MADV_HUGEPAGE);
  return chunk;
}

// The largest huge page place_in_huge_pages copies weights into.
constexpr uintptr_t kMaxCopiedPage = uintptr_t{2} << 20;

// Copies share the chunk being filled; the arena holds it weakly, so that a chunk whose
// copies are all released is unmapped, and the next copy starts a new one.
std::mutex arena_mutex;
std::weak_ptr<Chunk> filling;
std::atomic<bool> copies_fail{false};  // a copy did not land in huge pages: stop copying

}  // namespace

bool back_with_huge_pages(const void* data, size_t bytes) {
  const uintptr_t page = huge_page_size();
  if (page == 0 || bytes == 0) return false;
  const uintptr_t start = reinterpret_cast<uintptr_t>(data), stop = start + bytes;
  // Whole huge pages around the range (their other bytes keep their contents too); where
  // one of them reaches past the mapping, the whole pages inside the range, if they hold
  // nearly all of it (ONNX Runtime places initializers back to back in one buffer, and
  // the last one may end near its end).
  if (collapse(round_down(start, page), round_up(stop, page))) return true;
  const uintptr_t first = round_up(start, page), end = round_down(stop, page);
  return collapse(first, end) && (end - first) >= bytes / 10 * 9;
}

namespace {

// The process's mappings from /proc/self/maps, [lo, hi) and the file behind them if any,
// sorted by address. A session's kernels ask about hundreds of tensors (ONNX Runtime maps
// each external initializer on its own), so the list is read again only when an address
// is in none of its ranges or it is older than half a second. A stale answer costs speed,
// never bytes: place_in_huge_pages drops a page only where /proc/self/pagemap, read then,
// says the file still holds it.
struct Mapping {
  uintptr_t lo, hi;
  bool file;
  unsigned long long offset, inode;  // where in which file the mapping starts
  unsigned major, minor;             // the file's device
};
std::mutex maps_mutex;
std::vector<Mapping> maps_cache;
std::chrono::steady_clock::time_point maps_read;

void read_maps() {
  maps_cache.clear();
  maps_read = std::chrono::steady_clock::now();
  FILE* maps = std::fopen("/proc/self/maps", "r");
  if (!maps) return;
  char line[4096];
  while (std::fgets(line, sizeof(line), maps)) {
    Mapping m{};
    if (std::sscanf(line, "%" SCNxPTR "-%" SCNxPTR " %*s %llx %x:%x %llu", &m.lo, &m.hi,
                    &m.offset, &m.major, &m.minor, &m.inode) == 6) {
      m.file = m.inode != 0;
      maps_cache.push_back(m);
    }
    // A path longer than the buffer: skip the rest of its line.
    while (!std::strchr(line, '\n') && std::fgets(line, sizeof(line), maps)) {
    }
  }
  std::fclose(maps);
}

const Mapping* find_mapping(uintptr_t at) {
  auto it = std::upper_bound(maps_cache.begin(), maps_cache.end(), at,
                             [](uintptr_t a, const Mapping& m) { return a < m.lo; });
  if (it == maps_cache.begin()) return nullptr;
  --it;
  return at < it->hi ? &*it : nullptr;
}

// The mapping that holds `at`, if a file backs it.
bool file_mapping(uintptr_t at, Mapping* out) {
  std::lock_guard<std::mutex> lock(maps_mutex);
  const Mapping* found = find_mapping(at);
  if (!found || std::chrono::steady_clock::now() - maps_read > std::chrono::milliseconds(500)) {
    read_maps();
    found = find_mapping(at);
  }
  if (!found || !found->file) return false;
  *out = *found;
  return true;
}

// Copies already made, by the file bytes they copy: a second session of the same bundle
// in the process shares the first one's copies instead of holding its own (the file's
// pages were shared by both before). A copy is reused only if its bytes still equal the
// source's, so a file rewritten in place is copied anew.
struct SourceKey {
  unsigned major, minor;
  unsigned long long inode, offset;
  size_t bytes;
  bool operator<(const SourceKey& o) const {
    return std::tie(major, minor, inode, offset, bytes) <
           std::tie(o.major, o.minor, o.inode, o.offset, o.bytes);
  }
};
std::map<SourceKey, std::weak_ptr<const void>> copies_made;  // under arena_mutex

// Room for `bytes` in the chunk being filled, or in a new one (set in *chunk).
uint8_t* reserve(size_t bytes, uintptr_t page, std::shared_ptr<Chunk>* chunk) {
  std::lock_guard<std::mutex> lock(arena_mutex);
  *chunk = filling.lock();
  size_t offset = *chunk ? round_up((*chunk)->used, 64) : 0;
  if (!*chunk || offset + bytes > (*chunk)->capacity) {
    *chunk = new_chunk(bytes, page);
    if (!*chunk) return nullptr;
    filling = *chunk;
    offset = 0;
    // Forget the copies whose chunks are gone (a new chunk is rare enough).
    for (auto it = copies_made.begin(); it != copies_made.end();) {
      it = it->second.expired() ? copies_made.erase(it) : std::next(it);
    }
  }
  (*chunk)->used = offset + bytes;
  return (*chunk)->start + offset;
}

}  // namespace

bool mapped_from_file(const void* data) {
  Mapping m;
  return file_mapping(reinterpret_cast<uintptr_t>(data), &m);
}

namespace {

// Whether every page of [from, to) (whole base pages) that is in memory is a page of a
// file, not one a write made private: /proc/self/pagemap, bit 63 present, bit 61 file page
// or shared (Linux 3.5+).
bool only_file_pages(uintptr_t from, uintptr_t to, uintptr_t small) {
  FILE* pagemap = std::fopen("/proc/self/pagemap", "rb");
  if (!pagemap) return false;
  bool file = std::fseek(pagemap, static_cast<long>(from / small * 8), SEEK_SET) == 0;
  uint64_t entries[512];
  for (uintptr_t page = from; file && page < to;) {
    const size_t n = std::min<size_t>(512, (to - page) / small);
    if (std::fread(entries, 8, n, pagemap) != n) file = false;
    for (size_t i = 0; file && i < n; ++i) {
      const bool present = entries[i] >> 63 & 1, file_page = entries[i] >> 61 & 1;
      file = !present || file_page;
    }
    page += n * small;
  }
  std::fclose(pagemap);
  return file;
}

}  // namespace

HugePagePlacement place_in_huge_pages(const void* data, size_t bytes) {
  HugePagePlacement placed;
  placed.data = data;
  const uintptr_t page = huge_page_size();
  if (page == 0 || bytes == 0) return placed;
  // A copy's last huge page is resident whole: at most 2 MB more where pages are 4 KB,
  // but 32 MB with 16 KB pages (Raspberry Pi 5's kernel), more than a small model. There
  // the weights stay where they are (unmeasured: that kernel's TLB reaches 4x further).
  Mapping source;
  const uintptr_t at = reinterpret_cast<uintptr_t>(data);
  if (copies_fail || page > kMaxCopiedPage || !file_mapping(at, &source)) {
    placed.in_huge_pages = back_with_huge_pages(data, bytes);
    return placed;
  }
  const SourceKey key{source.major, source.minor, source.inode,
                      source.offset + (at - source.lo), bytes};
  std::shared_ptr<const void> shared;
  {
    std::lock_guard<std::mutex> lock(arena_mutex);
    auto made = copies_made.find(key);
    if (made != copies_made.end()) shared = made->second.lock();
  }
  if (shared && std::memcmp(shared.get(), data, bytes) != 0) shared.reset();  // rewritten
  if (!shared) {
    std::shared_ptr<Chunk> chunk;
    uint8_t* copy = reserve(bytes, page, &chunk);
    if (!copy) return placed;
    std::memcpy(copy, data, bytes);
    const uintptr_t begin = reinterpret_cast<uintptr_t>(copy);
    if (!collapse(round_down(begin, page), round_up(begin + bytes, page))) {
      // File pages cannot be collapsed either: the original, on small pages. The chunk's
      // space stays unused until its copies are released.
      copies_fail = true;
      return placed;
    }
    shared = std::shared_ptr<const void>(std::move(chunk), copy);
    std::lock_guard<std::mutex> lock(arena_mutex);
    copies_made[key] = shared;
  }
  // Dropping a page the file holds loses nothing (a later read faults it back in); one
  // that a write made private would lose the write, so then nothing is dropped.
  const uintptr_t small = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t from = round_down(at, small), to = round_up(at + bytes, small);
  if (only_file_pages(from, to, small)) {
    madvise(reinterpret_cast<void*>(from), to - from, MADV_DONTNEED);
  }
  placed.data = shared.get();
  placed.in_huge_pages = true;
  placed.copy = std::move(shared);
  return placed;
}
#else
bool back_with_huge_pages(const void*, size_t) { return false; }
bool mapped_from_file(const void*) { return false; }
HugePagePlacement place_in_huge_pages(const void* data, size_t) {
  HugePagePlacement placed;
  placed.data = data;
  return placed;
}
#endif

}  // namespace edgepet
