#include "moe/expert_stats.h"

#include <algorithm>
#include <cmath>

namespace megamoe {

LoadStats load_stats(std::span<const int64_t> loads) {
  const int64_t E = int64_t(loads.size());
  LoadStats s;
  if (E == 0) return s;
  double total = 0;
  int64_t dead = 0;
  for (int64_t load : loads) {
    total += double(load);
    dead += load == 0;
  }
  s.dead_share = double(dead) / double(E);
  if (total == 0) return s;
  const double mean = total / double(E);
  double squares = 0, entropy = 0;
  for (int64_t load : loads) {
    squares += (double(load) - mean) * (double(load) - mean);
    if (load > 0) entropy -= double(load) / total * std::log(double(load) / total);
  }
  s.maxvio = (double(*std::max_element(loads.begin(), loads.end())) - mean) / mean;
  s.cv = std::sqrt(squares / double(E)) / mean;
  s.entropy = E > 1 ? entropy / std::log(double(E)) : 1.0;
  return s;
}

nlohmann::json load_stats_json(const std::vector<std::vector<int64_t>>& loads, const std::string& maxvio_key,
                               bool with_loads, std::span<const int64_t> pool_of) {
  struct Field {
    std::string key;
    double LoadStats::*member;
  };
  const Field fields[] = {{maxvio_key, &LoadStats::maxvio},
                          {"load_cv", &LoadStats::cv},
                          {"dead_expert_share", &LoadStats::dead_share},
                          {"routing_entropy", &LoadStats::entropy}};
  std::vector<LoadStats> stats;
  for (const std::vector<int64_t>& layer : loads) stats.push_back(load_stats(layer));
  nlohmann::json out = nlohmann::json::object();
  for (const Field& f : fields) {
    std::vector<double> values;
    double sum = 0;
    for (const LoadStats& s : stats) {
      values.push_back(s.*f.member);
      sum += s.*f.member;
    }
    out[f.key] = stats.empty() ? 0.0 : sum / double(stats.size());
    out[f.key + "_per_layer"] = values;
  }
  if (!pool_of.empty()) {
    std::vector<std::vector<int64_t>> pools;  // [pool][expert]
    for (size_t i = 0; i < loads.size(); ++i) {
      const size_t pool = size_t(pool_of[i]);
      if (pools.size() <= pool) pools.resize(pool + 1, std::vector<int64_t>(loads[i].size(), 0));
      for (size_t e = 0; e < loads[i].size(); ++e) pools[pool][e] += loads[i][e];
    }
    for (const Field& f : fields) {
      std::vector<double> values;
      for (const std::vector<int64_t>& pool : pools) values.push_back(load_stats(pool).*f.member);
      out[f.key + "_per_pool"] = values;
    }
  }
  if (with_loads) out["expert_loads"] = loads;
  return out;
}

nlohmann::json expert_load_stats(const ExpertLoad& load, std::span<const int64_t> moe_layers,
                                 std::span<const int64_t> pool_of) {
  std::vector<std::vector<int64_t>> loads;  // [MoE layer][expert]
  for (int64_t L : moe_layers) loads.push_back(load.layer_counts(L));
  nlohmann::json out = {{"layers", moe_layers}};
  out.update(load_stats_json(loads, "maxvio", /*with_loads=*/true, pool_of));
  return out;
}

}  // namespace megamoe
