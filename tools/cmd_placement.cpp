#include <cstdio>
#include <filesystem>

#include "commands.h"
#include "dist/placement.h"
#include "model/config.h"
#include "model/model.h"
#include "util/error.h"
#include "util/json_file.h"

namespace megamoe::cli {

void register_placement(CLI::App& app) {
  struct Options {
    std::string model, expert_stats, output;
    int64_t ranks = 0, redundant = 0;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "placement", "Place routed experts on MPI ranks from measured loads (EPLB-like), for mpirun ... --placement");
  cmd->add_option("--model", o->model, "Model directory (its config.json gives the layers and experts)")->required();
  cmd->add_option("--expert-stats", o->expert_stats, "Measured loads: the JSON of generate --expert-stats")->required();
  cmd->add_option("--ranks", o->ranks, "Number of MPI ranks")->required()->check(CLI::PositiveNumber);
  cmd->add_option("--redundant-experts", o->redundant, "Extra replicas of hot experts per layer")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--output", o->output, "Placement JSON to write")->required();
  cmd->callback([o] {
    const ModelConfig config = read_model_config(o->model);
    const int64_t layers = config.num_hidden_layers, E = config.n_routed_experts;
    const nlohmann::json stats = read_json_file(o->expert_stats);
    // Loads per MoE layer ("layers" names them) spread over every layer; dense layers stay empty.
    std::vector<std::vector<int64_t>> loads(layers, std::vector<int64_t>(E, 0));
    try {
      const auto moe_loads = stats.at("expert_loads").get<std::vector<std::vector<int64_t>>>();
      const auto moe_layers = stats.at("layers").get<std::vector<int64_t>>();
      if (moe_layers.size() != moe_loads.size()) fail("\"layers\" and \"expert_loads\" differ in length");
      for (size_t i = 0; i < moe_layers.size(); ++i) {
        if (moe_layers[i] < 0 || moe_layers[i] >= layers || int64_t(moe_loads[i].size()) != E)
          fail("layer {} with {} loads does not fit the model ({} layers of {} experts)", moe_layers[i],
               moe_loads[i].size(), layers, E);
        loads[moe_layers[i]] = moe_loads[i];
      }
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not an --expert-stats file: {}", o->expert_stats, e.what());
    } catch (const Error& e) {
      rethrow_with_context(o->expert_stats, e);
    }
    const dist::ExpertPlacement before = dist::contiguous_placement(layers, E, o->ranks);
    const dist::ExpertPlacement after = dist::balanced_placement(loads, o->ranks, o->redundant);
    const nlohmann::json report_before = dist::imbalance_report(before, loads);
    const nlohmann::json report_after = dist::imbalance_report(after, loads);
    write_json_file(o->output, dist::placement_json(after));
    std::printf(
        "predicted imbalance (max/mean rank load, mean over MoE layers): contiguous %.3f -> placed %.3f "
        "(worst layer %.3f -> %.3f) with %lld ranks and %lld redundant experts per layer\n",
        report_before["mean_imbalance"].get<double>(), report_after["mean_imbalance"].get<double>(),
        report_before["max_imbalance"].get<double>(), report_after["max_imbalance"].get<double>(), (long long)o->ranks,
        (long long)o->redundant);
  });
}

}  // namespace megamoe::cli
