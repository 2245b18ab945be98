#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/roofline.cpp"
#include <hwy/foreach_target.h>  // re-includes this file once per SIMD target

#include <hwy/highway.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <vector>

#include "ops/roofline.h"
#include "util/huge_pages.h"

HWY_BEFORE_NAMESPACE();
namespace megamoe::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sums `bytes` of `data` as 64-bit integers (so no load can be skipped), each thread its part. A
// single sequential stream leaves bandwidth unused: one core keeps more lines in flight when it reads
// several streams at once (what the matrix kernels do: a tile's R rows lie far apart, StridedTiles in
// matmul_kernels.cpp), so each thread reads kStreams interleaved streams of its part, each prefetched
// kAhead bytes ahead; the roofline is then the most the core can read, not the least. The streams
// lie kSkew bytes (129 cache lines) apart, not back to back, and so do the threads' parts: streams a
// power of two apart fall on the same cache sets and memory banks and read markedly slower, which
// would understate the machine and overstate every fraction of the roofline.
constexpr int64_t kStreams = 8, kAhead = 512, kSkew = 129 * 64;
HWY_INLINE void Prefetch(const uint8_t* p) {
#if HWY_ARCH_X86
  asm volatile("prefetcht0 %0" : : "m"(*p));  // GCC may drop __builtin_prefetch in such loops
#else
  __builtin_prefetch(p);
#endif
}
uint64_t ReadAll(const uint8_t* data, int64_t bytes) {
  const hn::ScalableTag<uint64_t> d;
  const int64_t step = int64_t(hn::Lanes(d)) * 8;  // bytes per vector
  uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
  {
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t part = bytes / threads / (kStreams * step) * (kStreams * step);
    const int64_t stream_bytes = part / kStreams - 2 * kSkew;          // kSkew apart, within the part
    const uint8_t* begin = data + thread * part + thread % 8 * kSkew;  // threads' streams apart too
    auto acc = hn::Zero(d);
    for (int64_t offset = 0; offset < stream_bytes; offset += step)
      for (int64_t s = 0; s < kStreams; ++s) {
        const uint8_t* p = begin + s * (stream_bytes + kSkew) + offset;
        if (offset % 64 == 0) Prefetch(p + kAhead);
        acc = hn::Add(acc, hn::LoadU(d, reinterpret_cast<const uint64_t*>(p)));
      }
    total += hn::GetLane(hn::SumOfLanes(d, acc));
  }
  return total;
}

// `iterations` x kChains independent fp32 FMA vectors per thread; returns the flops done. Enough
// chains to cover the FMA latency on every pipe, few enough to stay in registers with the two
// operands: 16 chains on AVX2's 16 registers spill, and reach half the peak.
double FmaLoop(int64_t iterations) {
  const hn::ScalableTag<float> d;
  constexpr int kChains = HWY_TARGET <= HWY_AVX3 ? 16 : 12;
  double flops = 0;
  float sink = 0;
#pragma omp parallel reduction(+ : flops, sink)
  {
    hn::Vec<decltype(d)> acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = hn::Set(d, float(i));
    const auto a = hn::Set(d, 0.999f), b = hn::Set(d, 1e-3f);
    for (int64_t n = 0; n < iterations; ++n)
      for (auto& v : acc) v = hn::MulAdd(v, a, b);
    for (auto& v : acc) sink += hn::GetLane(v);
    flops += double(iterations) * kChains * 2 * double(hn::Lanes(d));
  }
  return sink == 12345 ? 0 : flops;  // keeps `sink`, and so the loop, alive
}

}  // namespace megamoe::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace megamoe {
HWY_EXPORT(ReadAll);
HWY_EXPORT(FmaLoop);

namespace {
template <typename Run>
double median_rate(int runs, Run run) {
  std::vector<double> rates;
  for (int r = 0; r < runs; ++r) {
    const auto start = std::chrono::steady_clock::now();
    const double work = run();
    rates.push_back(work / std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::nth_element(rates.begin(), rates.begin() + rates.size() / 2, rates.end());
  return rates[rates.size() / 2];
}
}  // namespace

double measure_read_bandwidth_gb_s(int64_t bytes, int runs) {
  bytes -= bytes % 4096;
  HugePageBuffer buffer{size_t(bytes)};  // held as model weights are (util/huge_pages.h)
  uint8_t* data = reinterpret_cast<uint8_t*>(buffer.data());
#pragma omp parallel for schedule(static)  // first touch by the threads that will read it
  for (int64_t i = 0; i < bytes; i += 4096) std::memset(data + i, int(i >> 12), 4096);
  volatile uint64_t sink = 0;
  return median_rate(runs,
                     [&] {
                       sink = sink + HWY_DYNAMIC_DISPATCH(ReadAll)(data, bytes);
                       return double(bytes);
                     }) /
         1e9;
}

double measure_fma_peak_gflop_s(int runs) {
  return median_rate(runs, [] { return HWY_DYNAMIC_DISPATCH(FmaLoop)(int64_t(1) << 22); }) / 1e9;
}

}  // namespace megamoe
#endif  // HWY_ONCE
