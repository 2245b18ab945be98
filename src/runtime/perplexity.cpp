#include "runtime/perplexity.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace megamoe {

std::vector<PerplexityWindow> perplexity_windows(int64_t text_tokens, int64_t context, int64_t stride, bool bos) {
  const int64_t length = context - (bos ? 1 : 0);  // text tokens per window
  if (length < (bos ? 1 : 2)) fail("--context {} leaves no token to predict in a window", context);
  if (stride < 1 || stride > length)
    fail("--stride {} must be between 1 and the window's {} text tokens (--context {}{})", stride, length, context,
         bos ? ", BOS included" : "");
  // Without a BOS a window's first token has nothing before it: only the tokens after it are scored.
  const int64_t first = bos ? 0 : 1;
  if (text_tokens <= first) fail("the text has {} token(s): nothing to score", text_tokens);
  std::vector<PerplexityWindow> windows;
  int64_t scored_until = first;
  for (int64_t begin = 0;; begin += stride) {
    const int64_t end = std::min(text_tokens, begin + length);
    windows.push_back({begin, end, std::max(scored_until, begin + first)});
    scored_until = end;
    if (end == text_tokens) break;
  }
  return windows;
}

int64_t scored_positions(std::span<const PerplexityWindow> windows) {
  int64_t n = 0;
  for (const PerplexityWindow& w : windows) n += w.end - w.first_scored;
  return n;
}

void score_windows(const Model& model, std::span<const int32_t> tokens, std::span<const PerplexityWindow> windows,
                   std::optional<int32_t> bos_id,
                   const std::function<void(int32_t target, std::span<const float> logprobs)>& on_position,
                   const std::function<void(int64_t windows_done)>& on_window) {
  const int64_t V = model.vocab_size(), prefix = bos_id ? 1 : 0;
  std::vector<int32_t> input;
  std::vector<float> logits;  // [positions, V]
  for (size_t i = 0; i < windows.size(); ++i) {
    const PerplexityWindow& w = windows[i];
    input.clear();
    if (bos_id) input.push_back(*bos_id);
    input.insert(input.end(), tokens.begin() + w.begin, tokens.begin() + w.end);
    const int64_t positions = int64_t(input.size());
    logits.resize(size_t(positions * V));
    const auto cache = model.new_cache(positions);
    const SequenceStep step{cache.get(), input, /*all_logits=*/true};
    model.forward(logits.data(), std::span(&step, 1));
    // Token j of the text (at position j - begin + prefix) is predicted by the position before it.
    for (int64_t j = w.first_scored; j < w.end; ++j) {
      const std::span<float> row(logits.data() + (j - w.begin + prefix - 1) * V, size_t(V));
      log_softmax(row);
      on_position(tokens[size_t(j)], row);
    }
    if (on_window) on_window(int64_t(i) + 1);
  }
}

void log_softmax(std::span<float> values) {
  const float max = *std::max_element(values.begin(), values.end());
  double sum = 0;
  for (float v : values) sum += std::exp(double(v) - max);
  const double log_sum = double(max) + std::log(sum);
  for (float& v : values) v = float(double(v) - log_sum);
}

void PerplexityStats::add(double nll) {
  ++count_;
  sum_ += nll;
  sum_squares_ += nll * nll;
}

double PerplexityStats::mean_nll() const { return count_ ? sum_ / double(count_) : 0; }

double PerplexityStats::perplexity() const { return std::exp(mean_nll()); }

double PerplexityStats::perplexity_error() const {
  if (count_ < 2) return 0;
  const double mean = mean_nll(), variance = std::max(0.0, sum_squares_ / double(count_) - mean * mean);
  return perplexity() * std::sqrt(variance / double(count_ - 1));
}

void KldStats::add(std::span<const float> base, std::span<const float> logprobs) {
  double kld = 0;
  for (size_t v = 0; v < base.size(); ++v) kld += std::exp(double(base[v])) * (double(base[v]) - double(logprobs[v]));
  values_.push_back(kld);
  top1_same_ += std::max_element(base.begin(), base.end()) - base.begin() ==
                std::max_element(logprobs.begin(), logprobs.end()) - logprobs.begin();
}

double KldStats::mean() const {
  double sum = 0;
  for (double v : values_) sum += v;
  return values_.empty() ? 0 : sum / double(values_.size());
}

double KldStats::mean_error() const {
  if (values_.size() < 2) return 0;
  const double m = mean();
  double squares = 0;
  for (double v : values_) squares += (v - m) * (v - m);
  return std::sqrt(squares / double(values_.size() - 1) / double(values_.size()));
}

double KldStats::quantile(double q) const {
  if (values_.empty()) return 0;
  std::vector<double> sorted = values_;
  std::sort(sorted.begin(), sorted.end());
  // Nearest rank: the smallest value with at least q of the values at or below it.
  const size_t rank = size_t(std::ceil(q * double(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace megamoe
