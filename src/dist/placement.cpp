#include "dist/placement.h"

#include <algorithm>
#include <numeric>

#include "util/error.h"
#include "util/json_file.h"

namespace megamoe::dist {

ExpertPlacement contiguous_placement(int64_t layers, int64_t experts, int64_t ranks) {
  ExpertPlacement p{ranks, {}};
  std::vector<std::vector<int32_t>> layer(experts);
  for (int64_t r = 0; r < ranks; ++r)
    for (int64_t e = r * experts / ranks; e < (r + 1) * experts / ranks; ++e) layer[e] = {int32_t(r)};
  p.hosts.assign(layers, layer);
  return p;
}

ExpertPlacement balanced_placement(const std::vector<std::vector<int64_t>>& loads, int64_t ranks, int64_t redundant) {
  if (loads.empty()) fail("placement: no expert loads");
  const int64_t E = int64_t(loads[0].size());
  ExpertPlacement p{ranks, std::vector<std::vector<std::vector<int32_t>>>(loads.size())};
  const int64_t capacity = (E + redundant + ranks - 1) / ranks;  // experts per rank
  for (size_t L = 0; L < loads.size(); ++L) {
    const std::vector<int64_t>& load = loads[L];
    if (int64_t(load.size()) != E) fail("placement: layer {} has {} expert loads, layer 0 has {}", L, load.size(), E);
    std::vector<int64_t> replicas(E, 1);
    for (int64_t r = 0; r < redundant; ++r) {  // a replica can not share a rank with its expert
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (replicas[e] < ranks && (best < 0 || load[e] * replicas[best] > load[best] * replicas[e])) best = e;
      if (best < 0) break;
      ++replicas[best];
    }
    struct Item {
      double load;
      int32_t expert;
    };
    std::vector<Item> items;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = 0; r < replicas[e]; ++r) items.push_back({double(load[e]) / double(replicas[e]), int32_t(e)});
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.load > b.load; });
    std::vector<double> rank_load(ranks, 0);
    std::vector<int64_t> rank_experts(ranks, 0);
    std::vector<std::vector<int32_t>>& hosts = p.hosts[L];
    hosts.assign(E, {});
    for (const Item& item : items) {
      std::vector<int32_t>& h = hosts[item.expert];
      // The least loaded rank with room that lacks this expert; with none (a corner of the slot
      // limit), the least loaded rank that lacks it.
      auto pick = [&](bool need_room) {
        int64_t best = -1;
        for (int64_t r = 0; r < ranks; ++r) {
          if (std::find(h.begin(), h.end(), int32_t(r)) != h.end() || (need_room && rank_experts[r] >= capacity))
            continue;
          if (best < 0 || rank_load[r] < rank_load[best]) best = r;
        }
        return best;
      };
      int64_t r = pick(true);
      if (r < 0) r = pick(false);
      h.insert(std::upper_bound(h.begin(), h.end(), int32_t(r)), int32_t(r));
      rank_load[r] += item.load;
      ++rank_experts[r];
    }
  }
  return p;
}

std::vector<double> rank_loads(const ExpertPlacement& placement, int64_t layer, std::span<const int64_t> loads) {
  std::vector<double> out(placement.ranks, 0);
  for (size_t e = 0; e < loads.size(); ++e) {
    const std::vector<int32_t>& h = placement.hosts[layer][e];
    const int64_t n = int64_t(h.size());
    for (int64_t i = 0; i < n; ++i)
      out[h[i]] +=
          double(ExpertPlacement::share_start(loads[e], i + 1, n) - ExpertPlacement::share_start(loads[e], i, n));
  }
  return out;
}

double imbalance(std::span<const double> rank_loads) {
  const double total = std::accumulate(rank_loads.begin(), rank_loads.end(), 0.0);
  if (total <= 0) return 1;
  return *std::max_element(rank_loads.begin(), rank_loads.end()) / (total / double(rank_loads.size()));
}

nlohmann::json imbalance_report(const ExpertPlacement& placement, const std::vector<std::vector<int64_t>>& loads) {
  nlohmann::json per_layer = nlohmann::json::array();
  double sum = 0, worst = 1;
  int64_t counted = 0;
  for (size_t L = 0; L < loads.size(); ++L) {
    if (std::accumulate(loads[L].begin(), loads[L].end(), int64_t(0)) == 0) {
      per_layer.push_back(nullptr);  // dense layer, or nothing routed
      continue;
    }
    const double value = imbalance(rank_loads(placement, int64_t(L), loads[L]));
    per_layer.push_back(value);
    sum += value;
    worst = std::max(worst, value);
    ++counted;
  }
  return {
      {"mean_imbalance", counted ? sum / double(counted) : 1.0}, {"max_imbalance", worst}, {"per_layer", per_layer}};
}

nlohmann::json placement_json(const ExpertPlacement& placement) {
  return {{"ranks", placement.ranks}, {"layers", placement.hosts}};
}

ExpertPlacement read_placement(const std::filesystem::path& path, int64_t layers, int64_t experts, int64_t ranks) {
  const nlohmann::json j = read_json_file(path);
  const std::string where = path.string();
  ExpertPlacement p;
  try {
    p.ranks = j.at("ranks").get<int64_t>();
    p.hosts = j.at("layers").get<std::vector<std::vector<std::vector<int32_t>>>>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a placement ({{\"ranks\": N, \"layers\": [[[ranks of each expert]]]}}): {}", where, e.what());
  }
  if (p.ranks != ranks) fail("{}: placement for {} ranks, but {} ranks run", where, p.ranks, ranks);
  if (p.layers() != layers) fail("{}: {} layers, the model has {}", where, p.layers(), layers);
  for (int64_t L = 0; L < layers; ++L) {
    if (int64_t(p.hosts[L].size()) != experts)
      fail("{}: layer {} places {} experts, the model has {}", where, L, p.hosts[L].size(), experts);
    for (int64_t e = 0; e < experts; ++e) {
      std::vector<int32_t>& h = p.hosts[L][e];
      std::sort(h.begin(), h.end());
      if (h.empty()) fail("{}: layer {} expert {} is on no rank", where, L, e);
      if (h.front() < 0 || h.back() >= ranks)
        fail("{}: layer {} expert {} names a rank outside [0, {})", where, L, e, ranks);
      if (std::adjacent_find(h.begin(), h.end()) != h.end())
        fail("{}: layer {} expert {} names one rank twice", where, L, e);
    }
  }
  return p;
}

}  // namespace megamoe::dist
