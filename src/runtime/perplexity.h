// Perplexity of a text, and how far a run's next-token distributions are from a stored one
// (`megamoe perplexity`, docs/quantization.md#fidelity-megamoe-perplexity). The model reads the text in windows of
// `context` positions (a BOS first where the model has one) that move by `stride` tokens, and each
// window scores only the tokens no earlier window scored (Hugging Face's sliding-window perplexity):
// every token is scored once, after the first window with at least context - stride tokens before it.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "model/model.h"

namespace megamoe {

struct PerplexityWindow {
  int64_t begin = 0, end = 0;  // text tokens [begin, end), after the BOS if any
  int64_t first_scored = 0;    // the predictions of tokens [first_scored, end) count
};

// The windows over `text_tokens` tokens; context counts the BOS. Fails unless 1 <= stride < context
// (context >= 2 without a BOS) and the text has a token to score.
std::vector<PerplexityWindow> perplexity_windows(int64_t text_tokens, int64_t context, int64_t stride, bool bos);
// How many predictions the windows score.
int64_t scored_positions(std::span<const PerplexityWindow> windows);

// Runs every window through `model` (a fresh cache each) and gives each scored position's target
// and log-probs [V], in order, to `on_position`; `on_window(windows done)` after each window.
void score_windows(const Model& model, std::span<const int32_t> tokens, std::span<const PerplexityWindow> windows,
                   std::optional<int32_t> bos_id,
                   const std::function<void(int32_t target, std::span<const float> logprobs)>& on_position,
                   const std::function<void(int64_t windows_done)>& on_window = {});

// values [V] -> log-softmax, in place (the max subtracted first, the sum in double).
void log_softmax(std::span<float> values);

// Mean negative log-likelihood of the scored tokens and the perplexity exp(mean), with its standard
// error (llama.cpp's ±: the NLL's standard error of the mean carried through exp).
class PerplexityStats {
 public:
  void add(double nll);
  int64_t count() const { return count_; }
  double mean_nll() const;
  double perplexity() const;
  double perplexity_error() const;

 private:
  int64_t count_ = 0;
  double sum_ = 0, sum_squares_ = 0;
};

// KL(base || run) per position over the whole vocabulary, and how often both put the same token first.
class KldStats {
 public:
  void add(std::span<const float> base_logprobs, std::span<const float> logprobs);
  int64_t count() const { return int64_t(values_.size()); }
  double mean() const;
  double mean_error() const;        // standard error of the mean
  double quantile(double q) const;  // 0.5: median, 0.99, 1: max
  double top1_agreement() const { return count() ? double(top1_same_) / double(count()) : 0; }

 private:
  std::vector<double> values_;
  int64_t top1_same_ = 0;
};

}  // namespace megamoe
