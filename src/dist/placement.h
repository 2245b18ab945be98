// Which ranks hold which routed experts. Plain data and arithmetic (no MPI), so the load-aware
// placement is unit-tested alone.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <span>
#include <vector>

namespace megamoe::dist {

struct ExpertPlacement {
  int64_t ranks = 1;
  // hosts[layer][expert]: the ranks holding that expert, in ascending order; more than one for the
  // replicas of a hot expert, which then split its tokens evenly (contiguous shares, in rank order).
  std::vector<std::vector<std::vector<int32_t>>> hosts;

  int64_t layers() const { return int64_t(hosts.size()); }
  int64_t experts() const { return hosts.empty() ? 0 : int64_t(hosts[0].size()); }
  // Rows [first, end) of an expert's `count` rows that replica `replica` of `replicas` computes.
  static int64_t share_start(int64_t count, int64_t replica, int64_t replicas) { return count * replica / replicas; }
};

// Rank r holds experts [r*E/N, (r+1)*E/N) of every layer: about E/N each for any N (also N > E,
// where some ranks hold none), and each rank's experts lie together in the checkpoint's files.
ExpertPlacement contiguous_placement(int64_t layers, int64_t experts, int64_t ranks);

// Load-aware placement in the spirit of DeepSeek's EPLB, per layer from loads[layer][expert]
// (tokens routed there): the `redundant` extra replicas go one at a time to the expert with the
// largest load per replica; then replicas, heaviest first, go to the least loaded rank that does not
// hold that expert yet and has fewer than ceil((E + redundant) / N) experts.
ExpertPlacement balanced_placement(const std::vector<std::vector<int64_t>>& loads, int64_t ranks, int64_t redundant);

// Rows each rank computes in one layer when its experts receive `loads` rows: a replicated expert's
// rows split as at run time. [ranks]
std::vector<double> rank_loads(const ExpertPlacement& placement, int64_t layer, std::span<const int64_t> loads);
// max / mean of rank loads (1 = perfectly even; 1 when nothing is routed).
double imbalance(std::span<const double> rank_loads);
// Imbalance of every layer with loads, summed rank loads over layers, as JSON:
// {"mean_imbalance", "max_imbalance", "per_layer"}.
nlohmann::json imbalance_report(const ExpertPlacement& placement, const std::vector<std::vector<int64_t>>& loads);

// {"ranks": N, "layers": [[[ranks of expert 0], ...], ...]}
nlohmann::json placement_json(const ExpertPlacement& placement);
// Reads and checks a placement file against the model and the number of ranks (Error names the file).
ExpertPlacement read_placement(const std::filesystem::path& path, int64_t layers, int64_t experts, int64_t ranks);

}  // namespace megamoe::dist
