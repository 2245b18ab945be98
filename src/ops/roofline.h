// This machine's limits, measured: how fast memory streams into the cores, and how many fp32
// FMAs they retire. Benchmarks report their speed as a fraction of these.
#pragma once
#include <cstdint>

namespace megamoe {

// GB/s reading a buffer of `bytes` (far larger than the caches) with all OpenMP threads, each
// thread 8 interleaved streams (not a power of two apart) prefetched ahead: the most a core reads
// (one plain sequential stream gets well under it); median of `runs` passes.
double measure_read_bandwidth_gb_s(int64_t bytes = int64_t(1) << 30, int runs = 5);

// GFLOP/s of independent fp32 FMA chains on the best SIMD target, all OpenMP threads; median.
double measure_fma_peak_gflop_s(int runs = 5);

}  // namespace megamoe
