#include "serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>

#include "moe/expert_stats.h"

namespace megamoe::serve {
namespace {

constexpr auto kThroughputWindow = std::chrono::seconds(10);

void header(std::string& out, const char* name, const char* type, const char* help) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void render_histogram(std::string& out, const char* name, const char* help, const Histogram& h) {
  header(out, name, "histogram", help);
  int64_t cumulative = 0;
  for (size_t i = 0; i < h.bounds.size(); ++i) {
    cumulative += h.counts[i];
    fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"{}\"}} {}\n", name, h.bounds[i], cumulative);
  }
  fmt::format_to(std::back_inserter(out), "{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, h.count, name,
                 h.sum, name, h.count);
}

}  // namespace

void Histogram::observe(double value) {
  const size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
  ++counts[bucket];
  sum += value;
  ++count;
}

Metrics::Metrics(int64_t layers, int64_t routed_experts)
    : time_to_first_token_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      batch_size_({1, 2, 4, 8, 16, 32, 64, 128, 256}),
      step_seconds_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10}),
      expert_load_(layers, routed_experts) {}

void Metrics::count_request(const std::string& endpoint, int status) {
  std::lock_guard lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::set_queue(int64_t waiting, int64_t running_sequences) {
  std::lock_guard lock(mutex_);
  waiting_ = waiting;
  running_ = running_sequences;
}

void Metrics::count_prompt_tokens(int64_t tokens) {
  std::lock_guard lock(mutex_);
  prompt_tokens_ += tokens;
}

void Metrics::observe_time_to_first_token(double seconds) {
  std::lock_guard lock(mutex_);
  time_to_first_token_.observe(seconds);
}

void Metrics::observe_step(int64_t sequences, int64_t new_tokens, double seconds) {
  const auto now = Clock::now();
  std::lock_guard lock(mutex_);
  ++steps_;
  completion_tokens_ += new_tokens;
  batch_size_.observe(double(sequences));
  step_seconds_.observe(seconds);
  recent_tokens_.emplace_back(now, new_tokens);
  while (recent_tokens_.front().first < now - kThroughputWindow) recent_tokens_.pop_front();
}

std::string Metrics::render_prometheus() {
  std::string out;
  auto to_out = std::back_inserter(out);
  std::lock_guard lock(mutex_);

  header(out, "megamoe_requests_total", "counter", "HTTP requests answered, by endpoint and status");
  for (const auto& [key, count] : requests_)
    fmt::format_to(to_out, "megamoe_requests_total{{endpoint=\"{}\",status=\"{}\"}} {}\n", key.first, key.second,
                   count);
  header(out, "megamoe_prompt_tokens_total", "counter",
         "Prompt tokens prefilled (each of a request's n choices prefills its own)");
  fmt::format_to(to_out, "megamoe_prompt_tokens_total {}\n", prompt_tokens_);
  header(out, "megamoe_completion_tokens_total", "counter", "Tokens generated");
  fmt::format_to(to_out, "megamoe_completion_tokens_total {}\n", completion_tokens_);
  header(out, "megamoe_queue_depth", "gauge", "Requests waiting for a place in the batch");
  fmt::format_to(to_out, "megamoe_queue_depth {}\n", waiting_);
  header(out, "megamoe_running_sequences", "gauge", "Sequences in the running batch");
  fmt::format_to(to_out, "megamoe_running_sequences {}\n", running_);
  header(out, "megamoe_steps_total", "counter", "Batched forward steps");
  fmt::format_to(to_out, "megamoe_steps_total {}\n", steps_);
  render_histogram(out, "megamoe_batch_size", "Sequences per batched step", batch_size_);
  render_histogram(out, "megamoe_step_seconds", "Duration of one batched step", step_seconds_);
  render_histogram(out, "megamoe_time_to_first_token_seconds", "From a request's arrival to its first token",
                   time_to_first_token_);

  const auto now = Clock::now();
  int64_t window_tokens = 0;
  for (const auto& [time, tokens] : recent_tokens_)
    if (time >= now - kThroughputWindow) window_tokens += tokens;
  header(out, "megamoe_tokens_per_second", "gauge", "Tokens generated per second over the last 10 seconds");
  fmt::format_to(to_out, "megamoe_tokens_per_second {}\n", double(window_tokens) / double(kThroughputWindow.count()));

  header(out, "megamoe_expert_tokens_total", "counter", "Tokens routed to each expert of each MoE layer");
  for (int64_t layer = 0; layer < expert_load_.layers(); ++layer) {
    const std::vector<int64_t> counts = expert_load_.layer_counts(layer);
    if (std::all_of(counts.begin(), counts.end(), [](int64_t c) { return c == 0; }))
      continue;  // dense layers (and MoE layers before any token)
    for (int64_t e = 0; e < expert_load_.experts(); ++e)
      fmt::format_to(to_out, "megamoe_expert_tokens_total{{layer=\"{}\",expert=\"{}\"}} {}\n", layer, e, counts[e]);
  }
  // Balance of those loads (moe/expert_stats.h): MaxVio = (max load - mean) / mean per MoE layer.
  header(out, "megamoe_expert_maxvio", "gauge", "Max violation of each MoE layer's expert loads: (max - mean) / mean");
  for (int64_t layer = 0; layer < expert_load_.layers(); ++layer) {
    const std::vector<int64_t> counts = expert_load_.layer_counts(layer);
    if (std::all_of(counts.begin(), counts.end(), [](int64_t c) { return c == 0; })) continue;
    fmt::format_to(to_out, "megamoe_expert_maxvio{{layer=\"{}\"}} {}\n", layer, load_stats(counts).maxvio);
  }
  return out;
}

}  // namespace megamoe::serve
