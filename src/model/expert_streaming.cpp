#include "model/expert_streaming.h"

#include <fmt/format.h>

#include "util/byte_size.h"
#include "util/error.h"

namespace megamoe {

namespace {

std::string mib(int64_t bytes) { return fmt::format("{:.1f} MiB", double(bytes) / double(1 << 20)); }

}  // namespace

StreamingExpertStore* stream_experts_within(Model* model, int64_t budget, int64_t kv_bytes, bool prefetch,
                                            bool frequency) {
  const auto [store, experts_per_token] = model->stream_experts();
  if (!store) fail("{}: this model family cannot stream its experts (--memory-budget)", model->info().architecture);
  const int64_t dense = model->info().weight_bytes - store->streamed_bytes();
  const int64_t fixed = dense + kv_bytes + kStreamingOverheadBytes;
  const int64_t minimum = fixed + experts_per_token * store->slot_bytes();
  if (budget < minimum)
    fail(
        "a memory budget of {} is too small for this model: the dense weights ({}), KV cache ({}), overhead ({}) "
        "and one token's {} experts ({}) need at least --memory-budget {}MiB",
        mib(budget), mib(dense), mib(kv_bytes), mib(kStreamingOverheadBytes), experts_per_token,
        mib(experts_per_token * store->slot_bytes()), (minimum + (1 << 20) - 1) >> 20);
  store->allocate((budget - fixed) / store->slot_bytes(), prefetch, frequency);
  return store;
}

void warn_if_model_exceeds_memory(const Model& model, const std::string& model_dir) {
  const auto available = available_memory();
  if (!available || model.info().weight_bytes <= *available) return;
  fmt::print(stderr,
             "warning: {} holds {} of weights but only {} of memory is available; pages will be re-read from disk "
             "all the time. Stream the experts instead: --memory-budget {}MiB\n",
             model_dir, mib(model.info().weight_bytes), mib(*available), (*available * 8 / 10) >> 20);
}

}  // namespace megamoe
