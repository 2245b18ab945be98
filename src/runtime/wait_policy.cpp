#include "runtime/wait_policy.h"

namespace megamoe {

EnvSetting openmp_wait_setting(double load_average, int cores, int local_ranks) {
  if (local_ranks <= 1 && cores >= 2 && load_average <= cores - 0.5) return {"GOMP_SPINCOUNT", "20000"};
  return {"OMP_WAIT_POLICY", "passive"};
}

}  // namespace megamoe
