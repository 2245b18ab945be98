// megamoe experiment balance|pools: variants of a model trained side by side into a report
// (src/report/experiment.h, docs/mega-moe.md).
#include <sstream>

#include "commands.h"
#include "train/experiment.h"
#include "util/error.h"

namespace megamoe::cli {

using namespace train;  // this command is a frontend of the trainer
namespace {

struct Options {
  ExperimentOptions experiment;
  std::filesystem::path model_config;
  std::string strategies = "none,aux-loss,seq-aux-loss,bias", group_sizes = "1,2", balance = "bias";
};

std::vector<std::string> split_list(const std::string& list, const char* flag) {
  std::vector<std::string> items;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty()) fail("{} '{}': an empty item", flag, list);
    items.push_back(item);
  }
  if (items.empty()) fail("{}: empty list", flag);
  return items;
}

// The flags every experiment takes: the training run each variant repeats.
CLI::App* add_experiment(CLI::App* parent, const char* name, const char* description, Options* o) {
  TrainOptions& t = o->experiment.train;
  CLI::App* cmd = parent->add_subcommand(name, description);
  cmd->add_option("--model-config", o->model_config, "config.json of the model")->required()->check(CLI::ExistingFile);
  cmd->add_option("--data", t.data, "A text file, or a directory of them (read recursively)")->required();
  cmd->add_option("--tokenizer", t.tokenizer, "tokenizer.json or its directory (default: train one, once)");
  cmd->add_option("--steps", t.steps, "Optimizer steps per run")->required();
  cmd->add_option("--seeds", o->experiment.seeds, "Runs per variant, seeds --seed, --seed + 1, ...")
      ->capture_default_str();
  cmd->add_option("--seed", t.seed, "The first seed (default 0)");
  cmd->add_option("--output", o->experiment.output,
                  "Experiment directory: runs/, report.md and plots (finished runs in it are reused)")
      ->required();
  cmd->add_option("--seq-len", t.seq_len, "Tokens per sequence")->capture_default_str();
  cmd->add_option("--batch-size", t.batch_size, "Sequences per step")->capture_default_str();
  cmd->add_option("--lr", t.lr, "Peak learning rate (default 1e-3)");
  cmd->add_option("--warmup-steps", t.warmup_steps, "Linear warmup steps (default: min(100, steps/10))");
  cmd->add_option("--balance-alpha", t.balance_alpha,
                  "Weight of the auxiliary losses (default 1e-2 for aux-loss, 1e-4 for seq-aux-loss)");
  cmd->add_option("--bias-update-rate", t.bias_update_rate, "Bias balancing's step u (default 1e-3)");
  cmd->add_option("--eval-every", t.eval_every, "Validate every so many steps, 0 = at the end only")
      ->capture_default_str();
  cmd->add_option("--eval-batches", t.eval_batches, "Most batches of validation windows per validation")
      ->capture_default_str();
  cmd->add_option("--threads", t.threads, "Threads, 0 = all cores")->capture_default_str();
  return cmd;
}

}  // namespace

void register_experiment(CLI::App& app) {
  auto o = std::make_shared<Options>();
  TrainOptions& t = o->experiment.train;
  t.seq_len = 128, t.batch_size = 8, t.eval_every = 50, t.save_every = 0, t.sample_lines = 0;
  CLI::App* cmd = app.add_subcommand("experiment", "Train variants of a model side by side and compare them");
  cmd->require_subcommand(1);

  CLI::App* balance = add_experiment(
      cmd, "balance", "Load-balancing strategies on one config: loss, MaxVio, dead experts, speed", o.get());
  balance->add_option("--strategies", o->strategies, "Comma-separated: none, aux-loss, seq-aux-loss, bias")
      ->capture_default_str();
  balance->callback([o] {
    std::vector<BalanceStrategy> strategies;
    for (const std::string& name : split_list(o->strategies, "--strategies"))
      strategies.push_back(parse_balance_strategy(name, "--strategies"));
    o->experiment.title = "Load balancing: " + o->model_config.filename().string();
    o->experiment.variants = balance_variants(o->model_config, strategies);
    run_experiment(o->experiment);
  });

  CLI::App* pools = add_experiment(
      cmd, "pools",
      "Cross-layer expert pools against per-layer experts at equal total parameters (configs derived from one)",
      o.get());
  pools
      ->add_option("--group-sizes", o->group_sizes,
                   "Comma-separated expert_sharing_group_size values; n_routed_experts scales with each")
      ->capture_default_str();
  pools->add_option("--balance", o->balance, "Balancing strategy of every run")->capture_default_str();
  pools->callback([o] {
    std::vector<int64_t> sizes;
    for (const std::string& item : split_list(o->group_sizes, "--group-sizes")) {
      size_t used = 0;
      int64_t g = 0;
      try {
        g = std::stoll(item, &used);
      } catch (const std::exception&) {
      }
      if (used != item.size() || g < 1) fail("--group-sizes: '{}' is not a whole number of at least 1", item);
      sizes.push_back(g);
    }
    const BalanceStrategy strategy = parse_balance_strategy(o->balance, "--balance");
    o->experiment.title = "Expert pools against per-layer experts: " + o->model_config.filename().string();
    o->experiment.variants = pool_variants(o->model_config, sizes, strategy);
    run_experiment(o->experiment);
  });
}

}  // namespace megamoe::cli
