// Load-balance statistics of routed experts (docs/models.md#balance-metrics), from per-expert token counts:
// one definition shared by the trainer's metrics, `generate --expert-stats` and the server.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

#include "moe/moe.h"

namespace megamoe {

// Of one layer's (or pool's) loads, load_i = tokens routed to expert i, mean = sum / E:
struct LoadStats {
  double maxvio = 0;      // (max_i load_i - mean) / mean
  double cv = 0;          // coefficient of variation: population standard deviation / mean
  double dead_share = 0;  // share of experts with no token
  double entropy = 0;     // -sum p_i log p_i / log E, p_i = load_i / sum (1 = even, 0 = one expert)
};

// No token at all: maxvio, cv and entropy 0, every expert dead. One expert: entropy 1.
LoadStats load_stats(std::span<const int64_t> loads);

// Means over layers and per-layer lists of the statistics of loads [layer][expert]:
// {"<maxvio_key>", "load_cv", "dead_expert_share", "routing_entropy"} (means) and the same keys
// with "_per_layer" (lists), plus "expert_loads" (the counts) when `with_loads`. `pool_of`
// (optional, [layer]) names each layer's expert pool (cross-layer pools, docs/models.md#expert-pools): the
// same keys with "_per_pool" give the statistics of the loads summed over each pool's layers.
nlohmann::json load_stats_json(const std::vector<std::vector<int64_t>>& loads, const std::string& maxvio_key,
                               bool with_loads, std::span<const int64_t> pool_of = {});

// The statistics of what a model recorded (Model::record_expert_load) at inference, over its MoE
// layers `moe_layers` whose expert pools are `pool_of` [moe_layers.size()]:
// {"layers": moe_layers, load_stats_json(..., "maxvio", loads, pools)}. For `generate --expert-stats`.
nlohmann::json expert_load_stats(const ExpertLoad& load, std::span<const int64_t> moe_layers,
                                 std::span<const int64_t> pool_of);

}  // namespace megamoe
