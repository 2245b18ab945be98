// Anonymous memory in 2 MiB transparent huge pages, where the kernel grants them.
//
// Decode streams hundreds of megabytes of weights per token, most of them not read for many tokens.
// In 4 KiB pages every 4 KiB of such cold memory needs a page walk (a two-dimensional one under a
// hypervisor); in 2 MiB pages one walk covers 512 times as much, and cold weights stream markedly
// faster (docs/performance.md).
#pragma once
#include <cstddef>
#include <cstdint>

namespace megamoe {

class HugePageBuffer {
 public:
  // `bytes` of zeroed memory starting on a 2 MiB boundary; throws Error when it cannot be had.
  explicit HugePageBuffer(size_t bytes);
  ~HugePageBuffer();
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  // Makes the memory read-only (weights, once read).
  void protect_read_only();

 private:
  void* mapping_ = nullptr;  // the whole mapping: `data_` rounded up to 2 MiB lies inside it
  size_t mapping_bytes_ = 0;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

// This process's memory in transparent huge pages (AnonHugePages of /proc/self/smaps_rollup), 0
// when unknown.
int64_t huge_page_bytes();

// False when /sys/kernel/mm/transparent_hugepage/enabled says "[never]" (or is missing): a
// HugePageBuffer then gets 4 KiB pages.
bool transparent_huge_pages_enabled();

}  // namespace megamoe
