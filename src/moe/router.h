// MoE gates: from router logits to (expert, weight) pairs, for every gate variant of the spec.
#pragma once
#include <cstdint>
#include <vector>

#include "moe/moe.h"

namespace megamoe {

enum class ScoringFunc { Softmax, Sigmoid, SqrtSoftplus };
enum class TopkMethod { Greedy, GroupLimitedGreedy, NoauxTc };

// A gate's settings (model/config.h's router_spec makes them from a model's config).
struct RouterSpec {
  int64_t n_experts = 0;  // E
  int64_t top_k = 0;
  ScoringFunc scoring = ScoringFunc::Softmax;
  TopkMethod method = TopkMethod::Greedy;
  int64_t n_group = 1, topk_group = 1;
  bool normalize = false;  // norm_topk_prob
  double scaling = 1;      // routed_scaling_factor
};

// out = indices of the `k` largest of values [n], descending (ties to the lower index).
void top_k_indices(std::vector<int32_t>* out, const float* values, int64_t n, int64_t k);

// out = the top-k experts per token. logits [T, E] = x @ gate^T; bias [E] (nullptr: none) shifts
// the selection only; weights come from the unbiased scores.
void route(Routing* out, const float* logits, int64_t T, const float* bias, const RouterSpec& spec);

// Hash routing (DeepSeek-V4's first layers): out = the experts [T, k] a table chose per token,
// weighted from their scores as route() weighs its choices.
void route_to(Routing* out, const float* logits, int64_t T, const int32_t* experts, const RouterSpec& spec);

}  // namespace megamoe
