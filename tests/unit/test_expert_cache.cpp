#include "model/expert_cache.h"

#include <gtest/gtest.h>

#include "test_support.h"

namespace megamoe {
namespace {
using testing::expect_error;

TEST(ParseByteSize, UnitsAndPlainBytes) {
  EXPECT_EQ(parse_byte_size("1GiB"), 1ll << 30);
  EXPECT_EQ(parse_byte_size("512MiB"), 512ll << 20);
  EXPECT_EQ(parse_byte_size("1.5KiB"), 1536);
  EXPECT_EQ(parse_byte_size("2GB"), 2000000000);
  EXPECT_EQ(parse_byte_size("1500000"), 1500000);
  EXPECT_EQ(parse_byte_size("7B"), 7);
}

TEST(ParseByteSize, RejectsWhatIsNotASize) {
  for (const char* text : {"", "abc", "-1MiB", "1XB", "1 MiB", "0", "MiB", "1e30TiB", "1gib"})
    expect_error([&] { parse_byte_size(text); }, {"is not a memory size"});
}

}  // namespace
}  // namespace megamoe
