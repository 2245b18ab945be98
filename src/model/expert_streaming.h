// Models larger than memory (docs/streaming.md): a model's routed experts streamed from disk
// through a StreamingExpertStore (moe/expert_cache.h) sized from a memory budget.
#pragma once
#include <cstdint>
#include <string>

#include "model/model.h"
#include "moe/expert_cache.h"

namespace megamoe {

// Fixed bytes the budget keeps for the process itself beyond weights and KV cache: code, libraries,
// thread stacks, activations, the tokenizer (docs/streaming.md).
constexpr int64_t kStreamingOverheadBytes = 32ll << 20;

// Turns on expert streaming for `model` within `budget` bytes, `kv_bytes` of them for KV caches:
// the cache gets budget - dense weights - kv_bytes - overhead. Fails with the smallest budget
// that works when `budget` is below it. Returns the store (owned by the model) for its statistics.
StreamingExpertStore* stream_experts_within(Model* model, int64_t budget, int64_t kv_bytes, bool prefetch,
                                            bool frequency = false);

// Without a budget: a warning naming a budget to use when the weights exceed the available memory.
void warn_if_model_exceeds_memory(const Model& model, const std::string& model_dir);

}  // namespace megamoe
