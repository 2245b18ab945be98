// The server's measurements, rendered for GET /metrics in Prometheus' text format: requests by
// endpoint and status, tokens, queue depth, batch size, time to first token, recent tokens/s and
// the routed experts' load per layer. Any thread may record; the scheduler records most.
#pragma once
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "moe/moe.h"

namespace megamoe::serve {

// Counts of observations at or below each bound, as Prometheus histograms cumulate them.
struct Histogram {
  explicit Histogram(std::vector<double> bounds) : bounds(std::move(bounds)), counts(this->bounds.size() + 1) {}
  void observe(double value);
  std::vector<double> bounds;
  std::vector<int64_t> counts;  // [bounds + 1]: the last counts values above every bound
  double sum = 0;
  int64_t count = 0;
};

class Metrics {
 public:
  Metrics(int64_t layers, int64_t routed_experts);

  void count_request(const std::string& endpoint, int status);
  void set_queue(int64_t waiting, int64_t running_sequences);
  void count_prompt_tokens(int64_t tokens);
  void observe_time_to_first_token(double seconds);
  // One scheduler step: `sequences` stepped together, `new_tokens` of them sampled.
  void observe_step(int64_t sequences, int64_t new_tokens, double seconds);

  // Where the model adds its expert routing counts (see Model::record_expert_load).
  ExpertLoad& expert_load() { return expert_load_; }

  std::string render_prometheus();

 private:
  using Clock = std::chrono::steady_clock;
  std::mutex mutex_;
  std::map<std::pair<std::string, int>, int64_t> requests_;  // (endpoint, status) -> count
  int64_t waiting_ = 0, running_ = 0;
  int64_t prompt_tokens_ = 0, completion_tokens_ = 0, steps_ = 0;
  Histogram time_to_first_token_, batch_size_, step_seconds_;
  std::deque<std::pair<Clock::time_point, int64_t>> recent_tokens_;  // (step end, tokens): the last window
  ExpertLoad expert_load_;
};

}  // namespace megamoe::serve
