#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "commands.h"
#include "distributed_options.h"
#include "io/row_cache.h"
#include "memory_options.h"
#include "model/model.h"
#include "numerics_option.h"
#include "ops/roofline.h"
#include "util/error.h"
#include "util/huge_pages.h"

namespace megamoe::cli {

namespace {

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

int64_t peak_rss_bytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return int64_t(usage.ru_maxrss) * 1024;
}

}  // namespace

void register_bench(CLI::App& app) {
  struct Options {
    std::string model;
    int64_t prompt_tokens = 128, gen_tokens = 32;
    int threads = 0, runs = 3;
    bool json = false;
    dist::DistributedOptions distributed;
    MemoryOptions memory;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd =
      app.add_subcommand("bench", "Measure prefill and decode speed against this machine's memory bandwidth");
  cmd->add_option("--model", o->model, "Model directory")->required();
  cmd->add_option("--prompt-tokens", o->prompt_tokens, "Prompt length for prefill")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--gen-tokens", o->gen_tokens, "Tokens decoded one at a time")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads (default: all cores)")->check(CLI::PositiveNumber);
  cmd->add_option("--runs", o->runs, "Runs; the median is reported")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_flag("--json", o->json, "Print one JSON object");
  add_distributed_options(cmd, &o->distributed);
  add_memory_options(cmd, &o->memory);
  add_numerics_option(cmd);
  cmd->callback([o] {
    if (o->threads > 0) omp_set_num_threads(o->threads);
    using Clock = std::chrono::steady_clock;
    const Residency residency = weight_residency(o->memory, o->model);
    const auto load_start = Clock::now();
    const auto model = dist::load_model_on_ranks(o->model, o->distributed, residency);
    const double load_seconds = std::chrono::duration<double>(Clock::now() - load_start).count();
    const ModelInfo& info = model->info();
    const int64_t P = o->prompt_tokens, G = o->gen_tokens, V = model->vocab_size();
    if (P + G > model->max_context())
      fail("--prompt-tokens + --gen-tokens = {} exceeds the model's context of {}", P + G, model->max_context());
    const StreamingStores stores = apply_memory_options(model.get(), o->memory, o->model, model->cache_bytes(P + G));
    const StreamingExpertStore* streaming = stores.experts;
    ExpertCacheStats decode_stats;  // summed over the runs' decode phases
    RowCacheStats table_stats;
    std::mt19937 rng(1);
    std::vector<int32_t> prompt(P);
    for (int32_t& t : prompt) t = int32_t(rng() % uint32_t(V));

    std::vector<double> prefill_rates, decode_rates;
    std::vector<float> logits(V);
    int64_t cache_bytes = 0;
    for (int run = 0; run < o->runs; ++run) {
      const auto cache = model->new_cache(P + G);
      cache_bytes = cache->bytes();
      auto start = Clock::now();
      const SequenceStep prefill{cache.get(), prompt, false};
      model->forward(logits.data(), std::span(&prefill, 1));
      prefill_rates.push_back(double(P) / std::chrono::duration<double>(Clock::now() - start).count());
      if (streaming) streaming->reset_stats();
      if (stores.tables) stores.tables->reset_stats();
      start = Clock::now();
      for (int64_t g = 0; g < G; ++g) {  // greedy, as a user's decode would run
        const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        const SequenceStep step{cache.get(), std::span(&next, 1), false};
        model->forward(logits.data(), std::span(&step, 1));
      }
      decode_rates.push_back(double(G) / std::chrono::duration<double>(Clock::now() - start).count());
      if (streaming) {
        const ExpertCacheStats s = streaming->stats();
        decode_stats.lookups += s.lookups, decode_stats.hits += s.hits, decode_stats.prefetch_hits += s.prefetch_hits;
        decode_stats.prefetched += s.prefetched, decode_stats.bytes_read += s.bytes_read, decode_stats.reads += s.reads;
      }
      if (stores.tables) {
        const RowCacheStats s = stores.tables->stats();
        table_stats.lookups += s.lookups, table_stats.hits += s.hits, table_stats.bytes_read += s.bytes_read;
      }
    }
    const int64_t peak_rss = peak_rss_bytes();  // before the bandwidth probe's buffer
    const int64_t huge_pages = huge_page_bytes();
    const double bandwidth = measure_read_bandwidth_gb_s();
    const double prefill = median(prefill_rates), decode = median(decode_rates);
    const double roofline_tokens_per_s = bandwidth * 1e9 / double(info.active_weight_bytes_per_token);
    nlohmann::json result = {
        {"model", o->model},
        {"architecture", info.architecture},
        {"threads", omp_get_max_threads()},
        {"numerics", numerics_name(numerics())},
        {"prompt_tokens", P},
        {"gen_tokens", G},
        {"runs", o->runs},
        {"prefill_tokens_per_s", prefill},
        {"decode_tokens_per_s", decode},
        {"active_weight_bytes_per_token", info.active_weight_bytes_per_token},
        {"engram_bytes_per_token", info.table_bytes_per_token},
        {"weight_bytes", info.weight_bytes},
        {"kv_cache_bytes", cache_bytes},
        {"bandwidth_gb_s", bandwidth},
        {"decode_roofline_tokens_per_s", roofline_tokens_per_s},
        {"decode_roofline_fraction", decode / roofline_tokens_per_s},
        {"peak_rss_bytes", peak_rss},
        {"weight_residency", residency == Residency::HugePages ? "huge_pages" : "mapped"},
        {"load_seconds", load_seconds},
        {"huge_page_bytes", huge_pages},
    };
    const double decoded = double(G) * o->runs;
    if (streaming)
      result["expert_cache"] = {
          {"memory_budget", o->memory.budget},
          {"prefetch", streaming->prefetching()},
          {"slots", streaming->slots()},
          {"slot_bytes", streaming->slot_bytes()},
          {"decode_hit_rate", decode_stats.hit_rate()},
          {"decode_prefetch_hits", decode_stats.prefetch_hits},
          {"decode_experts_prefetched", decode_stats.prefetched},
          {"decode_bytes_read_per_token", double(decode_stats.bytes_read) / decoded},
          {"decode_reads_per_token", double(decode_stats.reads) / decoded},
      };
    if (stores.tables)
      result["engram_cache"] = {
          {"slots", stores.tables->slots()},
          {"row_bytes", stores.tables->row_bytes()},
          {"decode_hit_rate", table_stats.hit_rate()},
          {"decode_bytes_read_per_token", double(table_stats.bytes_read) / decoded},
      };
    if (o->json) {
      std::printf("%s\n", result.dump(2).c_str());
      return;
    }
    std::printf("numerics %s\n", numerics_name(numerics()).c_str());
    std::printf("prefill  %10.1f tokens/s   (%lld-token prompt, median of %d)\n", prefill, (long long)P, o->runs);
    std::printf("decode   %10.1f tokens/s   (%.1f%% of the bandwidth roofline: %.1f GB/s / %.1f MB per token)\n",
                decode, 100 * decode / roofline_tokens_per_s, bandwidth,
                double(info.active_weight_bytes_per_token) / 1e6);
    std::printf("memory   peak RSS %.1f MB = %.2fx weights (%.1f MB) + KV cache (%.1f MB)\n", peak_rss / 1e6,
                double(peak_rss) / double(info.weight_bytes + cache_bytes), info.weight_bytes / 1e6, cache_bytes / 1e6);
    if (residency == Residency::HugePages)
      std::printf("weights  read into memory in %.2f s, %.1f MB of the process in huge pages\n", load_seconds,
                  huge_pages / 1e6);
    else std::printf("weights  mapped from the files in %.2f s\n", load_seconds);
    if (info.table_bytes_per_token && !stores.tables)
      std::printf("engram   %.1f KB of table rows per token (no row cache)\n", info.table_bytes_per_token / 1e3);
    if (stores.tables)
      std::printf(
          "engram   %.1f KB of table rows per token; %lld cached rows: decode hit rate %.1f%%, %.1f KB read from "
          "disk per token\n",
          info.table_bytes_per_token / 1e3, (long long)stores.tables->slots(), 100 * table_stats.hit_rate(),
          double(table_stats.bytes_read) / decoded / 1e3);
    if (streaming)
      std::printf(
          "experts  %d cache slots of %.2f MB: decode hit rate %.1f%% (%.1f%% prefetched), %.2f MB read "
          "from disk per token in %.1f reads%s\n",
          int(streaming->slots()), streaming->slot_bytes() / 1e6, 100 * decode_stats.hit_rate(),
          decode_stats.lookups ? 100.0 * double(decode_stats.prefetch_hits) / double(decode_stats.lookups) : 0.0,
          double(decode_stats.bytes_read) / decoded / 1e6, double(decode_stats.reads) / decoded,
          streaming->prefetching() ? "" : " (no prefetch)");
  });
}

}  // namespace megamoe::cli
