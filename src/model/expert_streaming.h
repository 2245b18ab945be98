// Models larger than memory (docs/streaming.md): a model's routed experts streamed from disk
// through a StreamingExpertStore (moe/expert_cache.h), and its tables read by rows through a
// RowCache (io/row_cache.h), both sized from a memory budget.
#pragma once
#include <cstdint>
#include <string>

#include "model/model.h"
#include "moe/expert_cache.h"

namespace megamoe {

// Fixed bytes the budget keeps for the process itself beyond weights and KV cache: code, libraries,
// thread stacks, activations, the tokenizer (docs/streaming.md).
constexpr int64_t kStreamingOverheadBytes = 32ll << 20;

// What a memory budget set up: the routed experts' cache, and the row cache of the tables read a
// few rows per token (V4.1's Engram; null for other models).
struct StreamingStores {
  StreamingExpertStore* experts = nullptr;
  const RowCache* tables = nullptr;
};

// Fixed bytes the budget keeps for the row cache of tables read by rows, at the least; it gets an
// eighth of what is left after the dense weights, KV caches and overhead when that is more.
constexpr int64_t kMinimumTableCacheBytes = 1ll << 20;

// Streams the routed experts of `model`, and reads its tables by rows, within `budget` bytes,
// `kv_bytes` of them for KV caches: the caches get budget - dense weights - kv_bytes - overhead.
// Fails with the smallest budget that works when `budget` is below it. Returns the caches (owned
// by the model) for their statistics.
StreamingStores stream_within_budget(Model* model, int64_t budget, int64_t kv_bytes, bool prefetch,
                                     bool frequency = false);

// Without a budget: a warning naming a budget to use when the weights exceed the available memory.
void warn_if_model_exceeds_memory(const Model& model, const std::string& model_dir);

}  // namespace megamoe
