// How OpenMP threads wait between parallel regions, chosen when the process starts.
#pragma once
#include <string>

namespace megamoe {

struct EnvSetting {
  std::string name, value;
};

// The setting megamoe starts with when the user chose none (neither OMP_WAIT_POLICY nor
// GOMP_SPINCOUNT). A thread that spins briefly at a barrier saves a futex sleep and wake-up per
// parallel region, and decode runs about a dozen regions per layer. On busy cores, though, the
// spinning thread takes the core from the very thread it waits for, and decode slows tenfold.
// So: spin for a bounded time (GOMP_SPINCOUNT=20000, well under a millisecond) when there are
// several cores, the last minute's load average left at least half a core idle and this is the only
// rank on the machine; otherwise sleep at once (OMP_WAIT_POLICY=passive).
EnvSetting openmp_wait_setting(double load_average, int cores, int local_ranks);

}  // namespace megamoe
