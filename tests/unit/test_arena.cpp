// FloatArena: a counting pass sizes the block, the same calls then hand out disjoint aligned arrays,
// and a later, larger pass grows the block without failing.
#include <gtest/gtest.h>

#include <omp.h>

#include <cstdint>

#include "util/arena.h"
#include "util/error.h"

namespace megamoe {
namespace {

TEST(FloatArena, CountsThenHandsOutDisjointAlignedArrays) {
  FloatArena arena;
  float *a = nullptr, *b = nullptr, *per_thread = nullptr;
  auto place = [&](int64_t n) {
    a = arena.take(n);
    b = arena.take(3);
    per_thread = arena.take_per_thread(5);
  };
  place(17);
  EXPECT_EQ(a, nullptr);  // counting
  arena.allocate();
  place(17);
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(b - a, 32);  // 17 rounded up to 16-float (64-byte) steps
  EXPECT_EQ(per_thread - b, 16);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 64, reinterpret_cast<uintptr_t>(a) % 64);
  EXPECT_EQ(arena.size(), 48 + 16 * omp_get_max_threads());
  EXPECT_EQ(FloatArena::mine(per_thread, 5), per_thread);  // thread 0 outside a team

  arena.count();  // a larger batch
  place(1000);
  arena.allocate();
  place(1000);
  EXPECT_EQ(b - a, 1008);
  EXPECT_GE(arena.size(), 1008 + 16 + 16 * omp_get_max_threads());
}

TEST(FloatArena, PlacingBeyondTheCountIsAnError) {
  FloatArena arena;
  arena.take(16);
  arena.allocate();
  arena.take(16);
  EXPECT_THROW(arena.take(1), Error);
}

}  // namespace
}  // namespace megamoe
