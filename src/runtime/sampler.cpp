#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "util/error.h"

namespace megamoe {

void validate(const SamplingParams& p) {
  if (!(p.temperature >= 0) || !std::isfinite(p.temperature))
    fail("temperature must be 0 or more, got {}", p.temperature);
  if (p.top_k < 0) fail("top_k must be 0 (off) or more, got {}", p.top_k);
  if (!(p.top_p > 0 && p.top_p <= 1)) fail("top_p must be in (0, 1], got {}", p.top_p);
  if (!(p.min_p >= 0 && p.min_p <= 1)) fail("min_p must be in [0, 1], got {}", p.min_p);
  if (!(p.repetition_penalty > 0) || !std::isfinite(p.repetition_penalty))
    fail("repetition_penalty must be positive, got {}", p.repetition_penalty);
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) { validate(params); }

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> context) {
  const int64_t V = int64_t(logits.size());
  if (params_.repetition_penalty != 1) {
    std::vector<bool> seen(V, false);
    for (int32_t t : context)
      if (t < V) seen[t] = true;  // ids past the candidates (a vocabulary cut to the tokenizer's) have no logit
    for (int64_t i = 0; i < V; ++i)
      if (seen[i])
        logits[i] = logits[i] > 0 ? logits[i] / params_.repetition_penalty : logits[i] * params_.repetition_penalty;
  }
  // Greedy: the first of the largest logits.
  if (params_.temperature == 0) return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());

  // Candidates by descending logit, cut by top-k.
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  const int64_t k = params_.top_k > 0 ? std::min(params_.top_k, V) : V;
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), by_logit);
  order.resize(k);

  std::vector<double> probs(k);
  const double top = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += probs[i] = std::exp((double(logits[order[i]]) - top) / params_.temperature);
  for (double& p : probs) p /= sum;

  // min-p, then top-p over what is left (the best token always survives).
  int64_t keep = k;
  while (keep > 1 && probs[keep - 1] < params_.min_p * probs[0]) --keep;
  double cumulative = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cumulative += probs[i];
    if (cumulative >= params_.top_p) {
      keep = i + 1;
      break;
    }
  }
  std::discrete_distribution<int64_t> pick(probs.begin(), probs.begin() + keep);
  return order[pick(rng_)];
}

}  // namespace megamoe
