// Matrix kernel throughput against this machine's measured rooflines (ops/roofline.h: a multi-stream
// read and an FMA loop on the same SIMD target): for every weight format, matrix-vector (decode,
// bandwidth bound) in GB/s of weight streamed from a ~256 MB matrix and from ~256 MB of expert-shaped
// [1024, 2048] matrices (one matmul_tasks call, as an MoE layer runs them: short rows, many matrices),
// and matrix-matrix at T = 512 (prefill, compute bound) in GFLOP/s, with 1 and 2 threads. Weights
// sit in huge pages, as a loaded model's do. Medians (and best) of --runs runs.
//   bench_kernels [--runs 7] [--threads 1,2] [--target AVX3_DL] [--formats F32,Q8_0,Q4_K,...] [--tokens 512]
#include <cblas.h>
#include <fmt/format.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ops/ggml_blocks.h"
#include "ops/matmul.h"
#include "ops/quant.h"
#include "ops/roofline.h"
#include "util/huge_pages.h"

namespace megamoe::bench {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Median and best rate of `runs` timed calls of `work` (after one warm-up), `amount` units per call.
// On a shared machine the best run is the closer estimate of what the hardware does.
struct Rate {
  double median, best;
};
template <class Work>
Rate measure(int runs, double amount, Work&& work) {
  work();
  std::vector<double> rates;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    work();
    rates.push_back(amount / seconds_since(start));
  }
  std::sort(rates.begin(), rates.end());
  return {rates[rates.size() / 2], rates.back()};
}

// A weight whose bytes sit in huge pages, as a loaded model's do (util/huge_pages.h); its scales
// (small) stay in `owned`.
struct BenchWeight {
  OwnedWeight owned;
  std::unique_ptr<HugePageBuffer> bytes;
  const WeightView& view() const { return owned.view; }
};

// rows x cols in `format`, made by repeating 1024 quantized random rows (the content does not change
// the speed; quantizing 256 MB would take longer than the benchmark).
BenchWeight tiled_weight(DType format, int64_t rows, int64_t cols) {
  constexpr int64_t kPoolRows = 1024;  // a multiple of the FP8 scale block
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> dist(-0.5f, 0.5f);
  std::vector<float> values(size_t(kPoolRows * cols));
  for (float& v : values) v = dist(gen);
  OwnedWeight pool;
  if (ggml_block_of(format)) {
    // llama.cpp's other block formats have no quantizer here: random bytes below 0x7c, so that every
    // fp16 scale in them is finite (the speed does not depend on the values).
    pool.view = WeightView{.dtype = format, .rows = kPoolRows, .cols = cols};
    pool.data.resize(size_t(kPoolRows * pool.view.row_bytes()));
    std::uniform_int_distribution<int> byte(0, 0x7b);
    for (uint8_t& b : pool.data) b = uint8_t(byte(gen));
  } else {
    pool = quantize_weight(format, values.data(), kPoolRows, cols);
  }
  OwnedWeight out;
  out.view = pool.view;
  out.view.rows = rows;
  auto tile = [&](auto& dst, const auto& src) {
    dst.resize(src.size() * size_t(rows / kPoolRows));
    for (size_t i = 0; i < dst.size(); i += src.size()) std::copy(src.begin(), src.end(), dst.begin() + i);
  };
  tile(out.scale_inv, pool.scale_inv);
  tile(out.scale_e8m0, pool.scale_e8m0);
  auto bytes = std::make_unique<HugePageBuffer>(pool.data.size() * size_t(rows / kPoolRows));
  for (size_t i = 0; i < bytes->size(); i += pool.data.size())
    std::memcpy(bytes->data() + i, pool.data.data(), pool.data.size());
  out.view.data = bytes->data();
  out.view.scale_inv = out.scale_inv.empty() ? nullptr : out.scale_inv.data();
  out.view.scale_e8m0 = out.scale_e8m0.empty() ? nullptr : out.scale_e8m0.data();
  return {std::move(out), std::move(bytes)};
}

std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> parts;
  for (size_t start = 0; start <= list.size();) {
    const size_t end = std::min(list.find(',', start), list.size());
    if (end > start) parts.push_back(list.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

int run(int argc, char** argv) {
  int runs = 7;
  int64_t prefill_tokens = 512;
  std::vector<int> thread_counts{1, 2};
  std::vector<DType> formats{DType::F32,  DType::F16,  DType::BF16,   DType::F8_E4M3,
                             DType::Q8_0, DType::Q4_0, DType::F4_E2M1};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--runs") {
      runs = std::stoi(value);
    } else if (flag == "--threads") {
      thread_counts.clear();
      for (const auto& t : split(value)) thread_counts.push_back(std::stoi(t));
    } else if (flag == "--tokens") {
      prefill_tokens = std::stoll(value);
    } else if (flag == "--target") {
      matmul_use_target(value);
    } else if (flag == "--formats") {
      formats.clear();
      for (const auto& name : split(value))
        for (int t = 0; t <= int(DType::MXFP4); ++t)
          if (dtype_name(DType(t)) == name) formats.push_back(DType(t));
    } else {
      fmt::print(stderr, "unknown flag {}\n", flag);
      return 2;
    }
  }
  constexpr int64_t kCols = 4096, kMatvecBytes = 256 << 20, kPrefillRows = 2048, kExpertRows = 1024, kExpertCols = 2048;
  fmt::print("SIMD target {}, {} runs per median, matrix-vector on ~{} MB, matrix-matrix T={} x [{}, {}]\n",
             matmul_targets().front(), runs, kMatvecBytes >> 20, prefill_tokens, kPrefillRows, kCols);

  std::vector<float> x(size_t(prefill_tokens * kCols)), y(size_t(prefill_tokens * kPrefillRows)), y_matvec;
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (float& v : x) v = dist(gen);

  std::vector<double> bandwidth, peak;  // GB/s, GFLOP/s per thread count
  for (int threads : thread_counts) {
    omp_set_num_threads(threads);
    bandwidth.push_back(measure_read_bandwidth_gb_s(int64_t(1) << 30, runs));
    peak.push_back(measure_fma_peak_gflop_s(runs));
    fmt::print("threads {}: read bandwidth {:.1f} GB/s, FMA peak {:.1f} GFLOP/s\n", threads, bandwidth.back(),
               peak.back());
  }

  fmt::print("\nmedian (best) of {} runs, as % of the roofline's median\n", runs);
  fmt::print(
      "| format | bytes/weight | threads | matvec GB/s | % of bandwidth | experts GB/s | % of bandwidth | matmat "
      "GFLOP/s | % of FMA peak |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|\n");
  for (DType format : formats) {
    const double bytes_per_weight = double(dtype_size(format)) / double(dtype_block_size(format)) +
                                    (format == DType::F4_E2M1 ? 1.0 / kQuantBlock : 0);
    const int64_t matvec_rows = int64_t(kMatvecBytes / (bytes_per_weight * kCols)) / 1024 * 1024;
    BenchWeight big = tiled_weight(format, matvec_rows, kCols);
    BenchWeight prefill = tiled_weight(format, kPrefillRows, kCols);
    const int64_t n_experts = std::max<int64_t>(1, matvec_rows * kCols / (kExpertRows * kExpertCols));
    BenchWeight stacked = tiled_weight(format, n_experts * kExpertRows, kExpertCols);  // the experts, one after another
    y_matvec.resize(size_t(std::max(matvec_rows, n_experts * kExpertRows)));
    std::vector<WeightView> experts;
    std::vector<MatmulTask> tasks;
    experts.reserve(size_t(n_experts));
    for (int64_t e = 0; e < n_experts; ++e) {
      experts.push_back(stacked.view().row_slice(e * kExpertRows, kExpertRows));
      tasks.push_back({y_matvec.data() + e * kExpertRows, x.data(), 1, &experts.back()});
    }
    for (size_t i = 0; i < thread_counts.size(); ++i) {
      omp_set_num_threads(thread_counts[i]);
      const Rate gbs =
          measure(runs, double(big.view().bytes()) / 1e9, [&] { matmul(y_matvec.data(), x.data(), 1, big.view()); });
      const Rate expert_gbs = measure(runs, double(stacked.view().bytes()) / 1e9, [&] { matmul_tasks(tasks); });
      const Rate gflops = measure(runs, 2e-9 * double(prefill_tokens * kPrefillRows * kCols),
                                  [&] { matmul(y.data(), x.data(), prefill_tokens, prefill.view()); });
      fmt::print(
          "| {} | {:.4g} | {} | {:.1f} ({:.1f}) | {:.0f}% ({:.0f}%) | {:.1f} ({:.1f}) | {:.0f}% ({:.0f}%) | {:.1f} "
          "({:.1f}) | {:.0f}% ({:.0f}%) |\n",
          dtype_name(format), bytes_per_weight, thread_counts[i], gbs.median, gbs.best, 100 * gbs.median / bandwidth[i],
          100 * gbs.best / bandwidth[i], expert_gbs.median, expert_gbs.best, 100 * expert_gbs.median / bandwidth[i],
          100 * expert_gbs.best / bandwidth[i], gflops.median, gflops.best, 100 * gflops.median / peak[i],
          100 * gflops.best / peak[i]);
    }
  }

  // Yardstick for the fp32 prefill kernel: OpenBLAS sgemm on the same F32 shape.
  const BenchWeight f32 = tiled_weight(DType::F32, kPrefillRows, kCols);
  fmt::print("\n");
  for (size_t i = 0; i < thread_counts.size(); ++i) {
    openblas_set_num_threads(thread_counts[i]);
    const Rate gflops = measure(runs, 2e-9 * double(prefill_tokens * kPrefillRows * kCols), [&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(prefill_tokens), kPrefillRows, kCols, 1, x.data(), kCols,
                  static_cast<const float*>(f32.view().data), kCols, 0, y.data(), kPrefillRows);
    });
    fmt::print("OpenBLAS sgemm F32, threads {}: {:.1f} GFLOP/s (best {:.1f})\n", thread_counts[i], gflops.median,
               gflops.best);
  }
  return 0;
}

}  // namespace megamoe::bench

int main(int argc, char** argv) { return megamoe::bench::run(argc, argv); }
