#include "util/huge_pages.h"

#include <gtest/gtest.h>

#include <cstdint>

namespace megamoe {
namespace {

TEST(HugePageBuffer, ZeroedAndAlignedToTwoMebibytes) {
  for (size_t bytes : {size_t(1), size_t(4096), (size_t(3) << 20) + 5}) {
    HugePageBuffer buffer(bytes);
    ASSERT_EQ(buffer.size(), bytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer.data()) % (size_t(2) << 20), 0u);
    for (size_t i = 0; i < bytes; i += 4095) EXPECT_EQ(buffer.data()[i], std::byte{0});
    buffer.data()[bytes - 1] = std::byte{7};  // all of it writable until protected
    buffer.protect_read_only();
    EXPECT_EQ(buffer.data()[bytes - 1], std::byte{7});
  }
  HugePageBuffer empty(0);
  EXPECT_EQ(empty.size(), 0u);
  empty.protect_read_only();
}

TEST(HugePageBuffer, ReportsThisProcesssHugePages) {
  // Counts what the kernel grants: with transparent huge pages off, none; the figure is never negative.
  EXPECT_GE(huge_page_bytes(), 0);
  if (!transparent_huge_pages_enabled()) {
    EXPECT_EQ(huge_page_bytes(), 0);
  }
}

}  // namespace
}  // namespace megamoe
