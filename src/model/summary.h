// What `megamoe inspect` reports: parameter counts (total and active per token), stored bytes by
// dtype and KV-cache cost, computed from the config and the family's tensor list.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "io/checkpoint.h"
#include "model/config.h"
#include "model/model.h"

namespace megamoe {

struct ModelSummary {
  int64_t total_parameters = 0;          // every tensor the forward pass uses
  int64_t routed_expert_parameters = 0;  // all routed experts of all layers (an expert pool once)
  // Per token: what its forward pass multiplies with, once per layer that uses it: every tensor
  // but the routed experts, plus each MoE layer's top-k (from its pool when pooled).
  int64_t active_parameters = 0;
  int64_t embedding_parameters = 0;                 // included in both counts above
  int64_t mtp_parameters = 0;                       // V4 MTP modules: loaded and checked, in none of the counts above
  int64_t active_weight_bytes = 0;                  // bytes read per decoded token (one embedding row)
  std::map<std::string, int64_t> bytes_by_dtype;    // stored bytes, scales included
  int64_t unused_tensors = 0;                       // in the files but not used (e.g. V3's MTP layer)
  int64_t kv_cache_context = 0;                     // the context the cache figures are for
  int64_t kv_cache_bytes = 0;                       // one sequence's cache at that context, as megamoe stores it (fp32)
  double kv_cache_bytes_per_token = 0;              // kv_cache_bytes / kv_cache_context
  double kv_cache_values_per_token = 0;             // the same in fp32 values
  int64_t naive_kv_cache_values_per_token = 0;      // V2/V3: per-head keys and values, for comparison
  double deepseek_v3_kv_cache_bytes_per_token = 0;  // V4: DeepSeek-V3's cache at the same context, for comparison
  int64_t kv_cache_ring_bytes = 0;                  // V4.1: the window rings, included in kv_cache_bytes
  int64_t engram_parameters = 0;                    // V4.1: the Engram tables (in total_parameters)
  double prefill_active_parameters = 0;             // V4.1: per prompt token, a prompt of kv_cache_context tokens
  int64_t engram_bytes = 0;                         // V4.1: the tables as stored, scales included
  int64_t engram_bytes_per_token = 0;               // V4.1: the rows one token reads (in active_weight_bytes)
};

// With `checkpoint` null (a bare config), byte counts assume BF16 weights (FP8: one byte plus
// 128x128 block scales; V4 FP4 experts: half a byte plus a byte per 32) and stored bytes are not
// reported. `context` (0: max_position_embeddings) is the sequence length of the KV-cache figures.
ModelSummary summarize(const ModelConfig& config, const Checkpoint* checkpoint, int64_t context = 0);
// What the runtime needs to know of a loaded model, any family.
ModelInfo model_info(const ModelConfig& config, const Checkpoint& checkpoint);

nlohmann::json to_json(const ModelSummary& s, const ModelConfig& config);
std::string describe(const ModelSummary& s, const ModelConfig& config);

}  // namespace megamoe
