#include "moe/moe.h"

#include <algorithm>

#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/round_trip.h"
#include "util/parallel.h"
#include "util/scratch.h"

namespace megamoe {

void mlp_forward(std::span<const MlpJob> jobs, const MlpOptions& options) {
  const float swiglu_limit = options.swiglu_limit;
  thread_local Scratch<float> hidden_buffer;
  int64_t hidden_size = 0;
  for (const MlpJob& job : jobs) hidden_size += job.T * job.weights->gate.rows;
  float* hidden = hidden_buffer.get(hidden_size);  // each job's [T, I], one after the other
  std::vector<MatmulTask> first, second;
  for (const MlpJob& job : jobs) {
    const MlpWeights& w = *job.weights;
    if (w.gate.dtype == w.up.dtype) first.push_back({hidden, job.x, job.T, &w.gate, &w.up});
    else matmul_swiglu(hidden, job.x, job.T, w.gate, w.up, swiglu_limit);  // rare: no fused pass
    second.push_back({job.y, hidden, job.T, &w.down});
    hidden += job.T * w.gate.rows;
  }
  matmul_tasks(first, swiglu_limit);
  if (options.round_hidden || std::any_of(jobs.begin(), jobs.end(), [](const MlpJob& j) { return j.row_scale; })) {
    float* rows = hidden_buffer.get(hidden_size);
    for (const MlpJob& job : jobs) {
      const int64_t I = job.weights->gate.rows;
      parallel_for(job.T, job.T * I >= kParallelGrain, [&](int64_t t) {
        float* row = rows + t * I;
        if (job.row_scale)
          for (int64_t i = 0; i < I; ++i) row[i] *= job.row_scale[t];
        if (options.round_hidden) q8_round_trip(row, I);
      });
      rows += job.T * I;
    }
  }
  matmul_tasks(second);
}

void mlp_forward(float* y, const float* x, int64_t T, const MlpWeights& w, const MlpOptions& options) {
  const MlpJob job{y, x, T, &w};
  mlp_forward({&job, 1}, options);
}

std::vector<float> grouped_row_weights(const Routing& routing, const ExpertGroups& groups) {
  std::vector<float> weights(groups.slot_of_row.size());
  for (size_t row = 0; row < weights.size(); ++row) weights[row] = routing.weights[groups.slot_of_row[row]];
  return weights;
}

ExpertLoad::ExpertLoad(int64_t layers, int64_t experts)
    : layers_(layers), experts_(experts), counts_(new std::atomic<int64_t>[layers * experts]) {
  reset();
}

std::vector<int64_t> ExpertLoad::layer_counts(int64_t layer) const {
  std::vector<int64_t> out(experts_);
  for (int64_t e = 0; e < experts_; ++e) out[e] = counts_[layer * experts_ + e].load(std::memory_order_relaxed);
  return out;
}

void ExpertLoad::reset() {
  for (int64_t i = 0; i < layers_ * experts_; ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void ExpertGroups::build(const Routing& routing, int64_t n_experts) {
  const int64_t slots = routing.tokens * routing.top_k;
  start.assign(n_experts + 1, 0);
  for (int64_t s = 0; s < slots; ++s) ++start[routing.experts[s] + 1];
  active.clear();
  for (int64_t e = 0; e < n_experts; ++e) {
    if (start[e + 1] > 0) active.push_back(int32_t(e));
    start[e + 1] += start[e];
  }
  slot_of_row.resize(slots);
  row_of_slot.resize(slots);
  std::vector<int64_t> next(start.begin(), start.end() - 1);
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t row = next[routing.experts[s]]++;
    slot_of_row[row] = s;
    row_of_slot[s] = row;
  }
}

void prefetch_experts(const ExpertStore& store, int64_t layer, std::span<const int32_t> experts) {
  std::vector<int32_t> wanted(experts.begin(), experts.end());
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  store.prefetch(layer, wanted);
}

void gather_routed_rows(float* rows, const float* x, int64_t D, int64_t k, std::span<const int64_t> slots) {
  const int64_t n = int64_t(slots.size());
  parallel_for(n, n * D >= kParallelGrain,
               [&](int64_t row) { std::copy_n(x + slots[row] / k * D, D, rows + row * D); });
}

namespace {

// dispatch_experts for one range of tokens (`routing` covers only them).
void dispatch_token_range(float* out, const float* x, int64_t D, const Routing& routing, int64_t n_experts,
                          const ExpertStore& store, int64_t layer, ExpertLoad* load, const MlpOptions& options) {
  const int64_t T = routing.tokens, k = routing.top_k, slots = T * k;
  ExpertGroups groups;
  groups.build(routing, n_experts);
  if (load)
    for (int32_t e : groups.active) load->add(layer, e, groups.count(e));
  // [slots, D] in expert order: the tokens, then in place their experts' outputs (mlp_forward reads
  // every input before it writes an output; one buffer instead of two keeps a 512-token prefill of
  // decode-q8 34 MB smaller).
  thread_local Scratch<float> grouped_buffer;
  float* grouped = grouped_buffer.get(slots * D);
  gather_routed_rows(grouped, x, D, k, groups.slot_of_row);
  const std::vector<float> row_weights =
      options.weight_before_down ? grouped_row_weights(routing, groups) : std::vector<float>();
  // All experts in one pass of each kind, in chunks a disk cache can pin at once; each expert's rows
  // are computed alone, so the result does not depend on the chunking.
  const std::span<const int32_t> active(groups.active);
  for (size_t done = 0; done < active.size();) {
    const std::span<const int32_t> chunk =
        active.subspan(done, std::min<size_t>(active.size() - done, store.max_pinned()));
    store.acquire(layer, chunk);
    std::vector<MlpJob> jobs;
    for (int32_t e : chunk) {
      const int64_t first = groups.start[e];
      jobs.push_back({grouped + first * D, grouped + first * D, groups.count(e), &store.expert(layer, e),
                      row_weights.empty() ? nullptr : row_weights.data() + first});
    }
    mlp_forward(jobs, options);
    store.release(layer, chunk);
    done += chunk.size();
  }
  combine_routed_rows(out, options.weight_before_down ? nullptr : routing.weights.data(), D, k, 0, T,
                      [&](int64_t slot) { return grouped + groups.row_of_slot[slot] * D; });
}

}  // namespace

void dispatch_experts(float* out, const float* x, int64_t D, const Routing& routing, int64_t n_experts,
                      const ExpertStore& store, int64_t layer, ExpertLoad* load, const MlpOptions& options) {
  // Long prompts go through in ranges of tokens, so the grouped activations stay bounded (8 MB per
  // 256 tokens per 1024 of hidden size, instead of growing with the prompt: a 512-token prefill of
  // decode-q8 peaked 12% above weights + KV cache in one range). Each expert row is computed alone,
  // so the ranges change nothing in the results; each range reads the experts' weights again, which
  // prefill, bound by arithmetic, hardly notices.
  constexpr int64_t kRangeTokens = 256;
  const int64_t T = routing.tokens, k = routing.top_k;
  if (T <= kRangeTokens) return dispatch_token_range(out, x, D, routing, n_experts, store, layer, load, options);
  Routing range;
  range.top_k = k;
  for (int64_t first = 0; first < T; first += kRangeTokens) {
    range.tokens = std::min(kRangeTokens, T - first);
    range.experts.assign(routing.experts.begin() + first * k, routing.experts.begin() + (first + range.tokens) * k);
    range.weights.assign(routing.weights.begin() + first * k, routing.weights.begin() + (first + range.tokens) * k);
    dispatch_token_range(out + first * D, x + first * D, D, range, n_experts, store, layer, load, options);
  }
}

}  // namespace megamoe
