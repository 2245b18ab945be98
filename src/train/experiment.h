// `megamoe experiment`: trains variants of a model side by side on the same data and seeds and
// writes a report comparing them (docs/mega-moe.md). Two experiments: the load-balancing
// strategies of one config, and cross-layer expert pools against per-layer experts at equal total
// parameters.
//
// DIR/runs/<variant>-s<seed>/ holds each run: checkpoint/ (the model), metrics.jsonl and its plots.
// One tokenizer and one token file (DIR/data/) serve every run. A finished run is kept and reused
// when the experiment is run again (an interrupted experiment continues where it stopped).
// DIR/report.md: a table per variant (mean ± standard deviation over seeds) and the PNG plots it links.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/trainer.h"

namespace megamoe::train {

struct ExperimentVariant {
  std::string name;                    // e.g. "bias", "pool-4"
  std::filesystem::path model_config;  // the config as given, or the one `derived` from it
  nlohmann::json derived;              // null, or a config written to DIR/configs/<name>.json and trained
  BalanceStrategy balance = BalanceStrategy::None;
};

struct ExperimentOptions {
  std::string title;  // the report's heading
  // What every run shares: data, tokenizer, steps, sequence length, batch size, optimization and
  // balancing hyperparameters. model_config, output, metrics, seed and balance are set per run.
  TrainOptions train;
  std::vector<ExperimentVariant> variants;
  int64_t seeds = 1;  // seeds train.seed (default 0) and up
  std::filesystem::path output;
};

void run_experiment(const ExperimentOptions& options);

// The balance experiment: one variant per strategy, all of `model_config`.
std::vector<ExperimentVariant> balance_variants(const std::filesystem::path& model_config,
                                                const std::vector<BalanceStrategy>& strategies);

// The pools experiment: for each group size g, `model_config` with expert_sharing_group_size g
// and n_routed_experts scaled by g / (the config's group size), so every variant has the same
// routed-expert parameters in all and the same top-k.
std::vector<ExperimentVariant> pool_variants(const std::filesystem::path& model_config,
                                             const std::vector<int64_t>& group_sizes, BalanceStrategy balance);

}  // namespace megamoe::train
