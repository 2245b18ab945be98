#include "model/expert_streaming.h"

#include <fmt/format.h>

#include <algorithm>

#include "util/byte_size.h"
#include "util/error.h"

namespace megamoe {

namespace {

std::string mib(int64_t bytes) { return fmt::format("{:.1f} MiB", double(bytes) / double(1 << 20)); }

}  // namespace

StreamingStores stream_within_budget(Model* model, int64_t budget, int64_t kv_bytes, bool prefetch, bool frequency) {
  const auto [store, experts_per_token] = model->stream_experts();
  if (!store) fail("{}: this model family cannot stream its experts (--memory-budget)", model->info().architecture);
  const ModelInfo& info = model->info();
  const int64_t dense = info.weight_bytes - store->streamed_bytes() - info.table_bytes;
  const int64_t fixed = dense + kv_bytes + kStreamingOverheadBytes;
  const int64_t tables_minimum = info.table_bytes ? kMinimumTableCacheBytes : 0;
  const int64_t minimum = fixed + tables_minimum + experts_per_token * store->slot_bytes();
  if (budget < minimum)
    fail(
        "a memory budget of {} is too small for this model: the dense weights ({}), KV cache ({}), overhead ({}){} "
        "and one token's {} experts ({}) need at least --memory-budget {}MiB",
        mib(budget), mib(dense), mib(kv_bytes), mib(kStreamingOverheadBytes),
        tables_minimum ? fmt::format(", the Engram row cache ({})", mib(tables_minimum)) : "", experts_per_token,
        mib(experts_per_token * store->slot_bytes()), (minimum + (1 << 20) - 1) >> 20);
  StreamingStores stores{store, nullptr};
  int64_t tables_cache = 0;
  if (info.table_bytes) {
    tables_cache = std::clamp((budget - fixed) / 8, tables_minimum, std::max(tables_minimum, info.table_bytes));
    tables_cache = std::min(tables_cache, budget - fixed - experts_per_token * store->slot_bytes());
    stores.tables = model->cache_table_rows(tables_cache);
  }
  store->allocate((budget - fixed - tables_cache) / store->slot_bytes(), prefetch, frequency);
  return stores;
}

void warn_if_model_exceeds_memory(const Model& model, const std::string& model_dir) {
  const auto available = available_memory();
  // Tables read by rows are never loaded whole: they do not need to fit.
  const int64_t needed = model.info().weight_bytes - model.info().table_bytes;
  if (!available || needed <= *available) return;
  fmt::print(stderr,
             "warning: {} holds {} of weights but only {} of memory is available; pages will be re-read from disk "
             "all the time. Stream the experts instead: --memory-budget {}MiB\n",
             model_dir, mib(needed), mib(*available), (*available * 8 / 10) >> 20);
}

}  // namespace megamoe
