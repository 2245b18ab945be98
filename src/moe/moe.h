// The mixture-of-experts pieces every family shares: routing results, the expert store that hands
// out expert weights, and the dispatcher that groups tokens by expert so each expert's weights are
// read once per batch (one matrix product per expert, llama.cpp-style), then combines the results.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "ops/elementwise.h"  // kParallelGrain
#include "ops/weight.h"
#include "util/parallel.h"

namespace megamoe {

// A SwiGLU MLP: down(silu(gate(x)) * up(x)), for dense layers, routed and shared experts. `Matrix` is
// what the user of the weights holds of each tensor: a WeightView when inferring, the tensor's place
// in the parameter block when training (train/parameters.h).
template <class Matrix>
struct Mlp {
  Matrix gate;  // [I, D]
  Matrix up;    // [I, D]
  Matrix down;  // [D, I]
};
using MlpWeights = Mlp<WeightView>;

// How a family's MLPs compute beyond down(silu(gate(x)) * up(x)).
struct MlpOptions {
  float swiglu_limit = 0;  // > 0: the products are clamped first (DeepSeek-V4, see swiglu())
  // DeepSeek-V4.1 (docs/deepseek-v41.md): a routed expert's weight scales its hidden
  // activation before the down product instead of its output, and the down product's input is Q8
  // round-tripped (ops/round_trip.h).
  bool weight_before_down = false;
  bool round_hidden = false;
};

// y [T, D] = down(silu(x @ gate^T) * (x @ up^T)) for x [T, D], as `options` says.
void mlp_forward(float* y, const float* x, int64_t T, const MlpWeights& w, const MlpOptions& options = {});

// One MLP applied to its own tokens: y [T, D] = mlp(x [T, D]).
struct MlpJob {
  float* y;
  const float* x;
  int64_t T;
  const MlpWeights* weights;
  const float* row_scale = nullptr;  // [T]: scales each token's hidden activation (weight_before_down)
};
// Every job, each as mlp_forward alone gives it, with all jobs' gate/up products in one parallel pass
// and all down products in a second (a layer's experts: two passes instead of two per expert). A job's
// y may be its x: every x is read before any y is written.
void mlp_forward(std::span<const MlpJob> jobs, const MlpOptions& options = {});

// Which experts each token goes to, and with what weight.
struct Routing {
  int64_t tokens = 0;
  int64_t top_k = 0;
  std::vector<int32_t> experts;  // [T, k]
  std::vector<float> weights;    // [T, k]
};

// The routed slots (token t, choice j) = t*k + j sorted by expert (a counting sort), so each
// expert runs once on its contiguous rows [start[e], start[e+1]). `active` lists the experts with
// rows in ascending order: with thousands of experts and few tokens most have none, and loops over
// `active` cost nothing for them.
struct ExpertGroups {
  std::vector<int64_t> start;        // [E+1]
  std::vector<int32_t> active;       // [experts with rows]
  std::vector<int64_t> slot_of_row;  // [T*k] grouped row -> slot
  std::vector<int64_t> row_of_slot;  // [T*k] slot -> grouped row

  void build(const Routing& routing, int64_t n_experts);
  int64_t count(int64_t expert) const { return start[expert + 1] - start[expert]; }
};

// The two halves of routing every path shares (inference, training, expert parallelism), so that
// they give the same bits: rows [n, D] = the input row of each routed slot in `slots` (token slot / k),
// in that order: grouped by expert when `slots` is ExpertGroups::slot_of_row.
void gather_routed_rows(float* rows, const float* x, int64_t D, int64_t k, std::span<const int64_t> slots);
// out [t] += sum over j in order of weights[t*k + j] * result(t*k + j) [D], for tokens [t_begin,
// t_end) (out points at token t_begin's row); weights null: each weight 1 (a gradient's sum).
// result(slot) gives that slot's expert output row. Summing in slot order makes the sum the same
// whatever the grouping, the chunking or the ranks that computed the rows.
template <class Result>
void combine_routed_rows(float* out, const float* weights, int64_t D, int64_t k, int64_t t_begin, int64_t t_end,
                         const Result& result);

// Where routed experts come from: memory now (an expert pool's layers share one set); later a
// disk cache or a remote shard. The MoE layer asks; it does not care which store answers.
class ExpertStore {
 public:
  virtual ~ExpertStore() = default;
  virtual const MlpWeights& expert(int64_t layer, int64_t expert) const = 0;
  // A disk cache (moe/expert_cache.h) answers expert() only for the experts pinned by acquire()
  // until their release(), at most max_pinned() at once; memory answers for every expert always.
  virtual int64_t max_pinned() const { return INT64_MAX; }
  virtual void acquire(int64_t /*layer*/, std::span<const int32_t> /*experts*/) const {}
  virtual void release(int64_t /*layer*/, std::span<const int32_t> /*experts*/) const {}
  // A hint that `layer` will probably want these experts next (read in the background).
  virtual void prefetch(int64_t /*layer*/, std::span<const int32_t> /*experts*/) const {}
  virtual bool prefetching() const { return false; }
};

// Tells `store` which experts of MoE layer `layer` the routed slots `experts` (any order, repeats
// allowed) will want, so that a streaming store reads them while the current layer computes; both
// families predict the next layer's routing and call this.
void prefetch_experts(const ExpertStore& store, int64_t layer, std::span<const int32_t> experts);

// Experts resident in memory (views into the mapped checkpoint), owned by the model's weights.
class InMemoryExpertStore final : public ExpertStore {
 public:
  // experts[layer] lists that layer's experts (empty for dense layers; the same span for the
  // layers of one expert pool).
  explicit InMemoryExpertStore(std::vector<std::span<const MlpWeights>> experts) : experts_(std::move(experts)) {}
  const MlpWeights& expert(int64_t layer, int64_t e) const override { return experts_[layer][e]; }

 private:
  std::vector<std::span<const MlpWeights>> experts_;
};

// Tokens routed to each expert of each layer, summed over forward passes: the expert-load
// statistics behind MaxVio, load heatmaps, placement (EPLB) and the server's /metrics.
// Counters are atomic so another thread may read them while the model runs.
class ExpertLoad {
 public:
  ExpertLoad(int64_t layers, int64_t experts);
  int64_t layers() const { return layers_; }
  int64_t experts() const { return experts_; }
  void add(int64_t layer, int64_t expert, int64_t tokens) {
    counts_[layer * experts_ + expert].fetch_add(tokens, std::memory_order_relaxed);
  }
  std::vector<int64_t> layer_counts(int64_t layer) const;  // [experts]
  void reset();

 private:
  int64_t layers_, experts_;
  std::unique_ptr<std::atomic<int64_t>[]> counts_;  // [layers, experts]
};

// Groups the T*k (token, expert) slots by expert (ExpertGroups), runs each active expert once on
// its contiguous group, and adds the weighted results back per token.
// out [T, D] += sum_j weight[t,j] * expert_{e[t,j]}(x[t]).
// `load` (optional) receives the per-expert token counts; `options` as in mlp_forward (with
// weight_before_down the weights scale the hidden activations, and the results add unscaled).
void dispatch_experts(float* out, const float* x, int64_t D, const Routing& routing, int64_t n_experts,
                      const ExpertStore& store, int64_t layer, ExpertLoad* load = nullptr,
                      const MlpOptions& options = {});

// The routing weight of each row of `groups` (expert order): what weight_before_down scales by.
std::vector<float> grouped_row_weights(const Routing& routing, const ExpertGroups& groups);

template <class Result>
void combine_routed_rows(float* out, const float* weights, int64_t D, int64_t k, int64_t t_begin, int64_t t_end,
                         const Result& result) {
  parallel_for((t_end - t_begin), (t_end - t_begin) * k * D >= kParallelGrain, [&](int64_t i) {
    const int64_t t = t_begin + i;
    float* o = out + i * D;
    for (int64_t j = 0; j < k; ++j) {
      const float weight = weights ? weights[t * k + j] : 1.f;
      const float* y = result(t * k + j);
      for (int64_t d = 0; d < D; ++d) o[d] += weight * y[d];
    }
  });
}

}  // namespace megamoe
