#include "util/huge_pages.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

#include "util/error.h"

namespace megamoe {

constexpr size_t kHugePage = size_t(2) << 20;

HugePageBuffer::HugePageBuffer(size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  // A huge page needs a 2 MiB-aligned address, which mmap does not promise: map one page more and
  // start at the first boundary inside.
  mapping_bytes_ = (bytes + kHugePage - 1) / kHugePage * kHugePage + kHugePage;
  mapping_ = ::mmap(nullptr, mapping_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    fail("cannot allocate {} MiB of memory: {}", bytes >> 20, std::strerror(errno));
  }
  data_ = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(mapping_) + kHugePage - 1) / kHugePage * kHugePage);
  ::madvise(data_, bytes, MADV_HUGEPAGE);  // only advice: without it the memory still works, in 4 KiB pages
}

HugePageBuffer::~HugePageBuffer() {
  if (mapping_) ::munmap(mapping_, mapping_bytes_);
}

void HugePageBuffer::protect_read_only() {
  if (size_ > 0 && ::mprotect(data_, size_, PROT_READ) != 0)
    fail("cannot make {} MiB of memory read-only: {}", size_ >> 20, std::strerror(errno));
}

int64_t huge_page_bytes() {
  std::ifstream in("/proc/self/smaps_rollup");  // a line naming the range, then "Key:  N kB" lines
  const std::string key = "AnonHugePages:";
  for (std::string line; std::getline(in, line);)
    if (line.starts_with(key)) return std::stoll(line.substr(key.size())) * 1024;
  return 0;
}

bool transparent_huge_pages_enabled() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  return std::getline(in, modes) && modes.find("[never]") == std::string::npos;
}

}  // namespace megamoe
