#include "runtime/wait_policy.h"

#include <gtest/gtest.h>

namespace megamoe {
namespace {

bool spins(double load, int cores, int ranks) {
  const EnvSetting s = openmp_wait_setting(load, cores, ranks);
  EXPECT_TRUE((s.name == "GOMP_SPINCOUNT" && s.value == "20000") ||
              (s.name == "OMP_WAIT_POLICY" && s.value == "passive"))
      << s.name << "=" << s.value;
  return s.name == "GOMP_SPINCOUNT";
}

TEST(WaitPolicy, SpinsOnlyWithIdleCoresAndOneRank) {
  EXPECT_TRUE(spins(0.0, 2, 1));
  EXPECT_TRUE(spins(1.5, 2, 1));
  EXPECT_FALSE(spins(1.6, 2, 1));   // less than half a core idle
  EXPECT_FALSE(spins(14.0, 2, 1));  // the shared VM at a busy hour
  EXPECT_TRUE(spins(3.0, 16, 1));
  EXPECT_FALSE(spins(0.0, 16, 2));  // ranks of one mpirun share the cores
  EXPECT_FALSE(spins(0.0, 1, 1));   // one core: any spinning takes it from the thread waited for
  EXPECT_FALSE(spins(1e9, 16, 1));  // load unknown
}

}  // namespace
}  // namespace megamoe
