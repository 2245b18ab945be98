// Expert parallelism over MPI: each rank computes only the routed experts the placement gives it and
// the MoE layer's results meet with one all-to-all per layer (docs/distributed.md).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "dist/placement.h"
#include "moe/expert_parallel.h"

namespace megamoe::dist {

// Time and traffic of MoE layer calls on this rank, summed.
struct ExchangeTiming {
  int64_t layer_calls = 0;
  double expert_seconds = 0;    // this rank's experts (gathering rows, matrix products)
  double exchange_seconds = 0;  // all-to-all of results, all-gather of combined rows (waiting included)
  double combine_seconds = 0;   // weighted sums of this rank's tokens
  int64_t bytes_sent = 0;       // results and combined rows this rank sent to others
};

// What the exchange measured on this rank: one-token calls (decoding one sequence) apart from the
// rest (prefill, batches), whose costs differ by orders of magnitude.
struct ExchangeStats {
  ExchangeTiming one_token, many_tokens;
  std::vector<std::vector<int64_t>> rank_rows;  // [layer][rank] expert rows each rank computed
};

class ExpertExchange final : public ExpertParallel {
 public:
  explicit ExpertExchange(ExpertPlacement placement);
  // Every rank holds every token (replicated dense compute). Rank r computes its experts' rows
  // (a replicated expert's rows split between its replicas), sends each result row to the rank that
  // owns its token (tokens split into N contiguous blocks; MPI_Alltoallv), the owner adds them in
  // slot order exactly as dispatch_experts does, and the combined rows are shared (MPI_Allgatherv).
  void dispatch(float* out, const float* x, int64_t D, const Routing& routing, int64_t n_experts,
                const ExpertStore& store, int64_t layer, ExpertLoad* load, const MlpOptions& options) const override;

  const ExpertPlacement& placement() const { return placement_; }
  const ExchangeStats& stats() const { return stats_; }
  // Whether this rank computes any row of `expert` in `layer`.
  bool holds(int64_t layer, int64_t expert) const;

 private:
  ExpertPlacement placement_;
  mutable ExchangeStats stats_;
};

// Every rank's stats (rank 0 gets the JSON; a collective call): {"ranks", "per_rank": [{"one_token":
// {"layer_calls", "expert_ms_per_layer", "exchange_ms_per_layer", "combine_ms_per_layer",
// "bytes_sent_per_layer"}, "many_tokens": {...}}], "rank_rows", "measured_imbalance": max/mean rows
// per rank, averaged over layers}.
nlohmann::json gather_stats(const ExchangeStats& stats);

}  // namespace megamoe::dist
