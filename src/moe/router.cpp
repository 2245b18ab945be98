#include "moe/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "ops/elementwise.h"

namespace megamoe {

void top_k_indices(std::vector<int32_t>* out, const float* values, int64_t n, int64_t k) {
  out->resize(n);
  std::iota(out->begin(), out->end(), 0);
  std::partial_sort(out->begin(), out->begin() + k, out->end(),
                    [&](int32_t a, int32_t b) { return values[a] > values[b] || (values[a] == values[b] && a < b); });
  out->resize(k);
}

namespace {

// Masks (to -inf) the experts outside the best `topk_group` groups.
void mask_groups(float* selection, const float* scores, const RouterSpec& spec) {
  const int64_t group_size = spec.n_experts / spec.n_group;
  std::vector<float> group_score(spec.n_group);
  for (int64_t g = 0; g < spec.n_group; ++g) {
    const float* s = (spec.method == TopkMethod::NoauxTc ? selection : scores) + g * group_size;
    if (spec.method == TopkMethod::NoauxTc) {  // sum of the group's top 2 (biased) scores
      std::vector<float> sorted(s, s + group_size);
      std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
      group_score[g] = sorted[0] + sorted[1];
    } else {  // group_limited_greedy: the group's best score
      group_score[g] = *std::max_element(s, s + group_size);
    }
  }
  std::vector<int32_t> kept;
  top_k_indices(&kept, group_score.data(), spec.n_group, spec.topk_group);
  std::vector<bool> keep(spec.n_group, false);
  for (int32_t g : kept) keep[g] = true;
  for (int64_t g = 0; g < spec.n_group; ++g)
    if (!keep[g]) std::fill_n(selection + g * group_size, group_size, -std::numeric_limits<float>::infinity());
}

// scores [E] of one token from its router logits [E].
void score(float* scores, const float* logits, int64_t E, ScoringFunc scoring) {
  std::copy_n(logits, E, scores);
  switch (scoring) {
    case ScoringFunc::Softmax:
      softmax(scores, E);
      break;
    case ScoringFunc::Sigmoid:
      for (int64_t e = 0; e < E; ++e) scores[e] = sigmoid(scores[e]);
      break;
    case ScoringFunc::SqrtSoftplus:
      for (int64_t e = 0; e < E; ++e) scores[e] = std::sqrt(softplus(scores[e]));
      break;
  }
}

// Token t's slots of `out`: the `chosen` experts weighted by their scores.
void weigh(Routing* out, int64_t t, const float* scores, const int32_t* chosen, const RouterSpec& spec) {
  const int64_t k = spec.top_k;
  double sum = 0;
  for (int64_t j = 0; j < k; ++j) sum += scores[chosen[j]];
  const double norm = spec.normalize ? spec.scaling / (sum + 1e-20) : spec.scaling;
  for (int64_t j = 0; j < k; ++j) {
    out->experts[t * k + j] = chosen[j];
    out->weights[t * k + j] = float(scores[chosen[j]] * norm);
  }
}

// Sizes `out` for T tokens.
void start(Routing* out, int64_t T, const RouterSpec& spec) {
  out->tokens = T;
  out->top_k = spec.top_k;
  out->experts.resize(T * spec.top_k);
  out->weights.resize(T * spec.top_k);
}

}  // namespace

void route(Routing* out, const float* logits, int64_t T, const float* bias, const RouterSpec& spec) {
  const int64_t E = spec.n_experts, k = spec.top_k;
  start(out, T, spec);
  std::vector<float> scores(E), selection(E);  // [E] each
  std::vector<int32_t> chosen;
  for (int64_t t = 0; t < T; ++t) {
    score(scores.data(), logits + t * E, E, spec.scoring);
    for (int64_t e = 0; e < E; ++e) selection[e] = scores[e] + (bias ? bias[e] : 0.f);
    if (spec.method != TopkMethod::Greedy) mask_groups(selection.data(), scores.data(), spec);
    top_k_indices(&chosen, selection.data(), E, k);
    weigh(out, t, scores.data(), chosen.data(), spec);
  }
}

void route_to(Routing* out, const float* logits, int64_t T, const int32_t* experts, const RouterSpec& spec) {
  const int64_t E = spec.n_experts, k = spec.top_k;
  start(out, T, spec);
  std::vector<float> scores(E);  // [E]
  for (int64_t t = 0; t < T; ++t) {
    score(scores.data(), logits + t * E, E, spec.scoring);
    weigh(out, t, scores.data(), experts + t * k, spec);
  }
}

}  // namespace megamoe
