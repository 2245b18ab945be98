// megamoe gradients: the training loss of some token rows and every parameter's gradient, for
// checking the backward passes against an autograd reference.
#include "commands.h"
#include "numerics_option.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/token_list.h"

namespace megamoe::cli {

using namespace train;  // this command is a frontend of the trainer

void register_gradients(CLI::App& app) {
  struct Options {
    std::string model, tokens, output;
    int64_t sequences = 1;
    std::string balance = "none";
    std::optional<double> alpha;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "gradients", "Write the next-token loss of token rows and its gradient for every parameter (F32 safetensors)");
  cmd->add_option("--model", o->model, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--tokens", o->tokens, "Token ids, e.g. 1,2,3: --sequences rows of T + 1 tokens, row by row")
      ->required();
  cmd->add_option("--sequences", o->sequences, "Rows in --tokens")->capture_default_str();
  cmd->add_option("--output", o->output, "safetensors file: gradients under the parameter names, loss in metadata")
      ->required();
  cmd->add_option("--balance", o->balance, "Add this auxiliary balancing loss: none, aux-loss or seq-aux-loss")
      ->capture_default_str();
  cmd->add_option("--balance-alpha", o->alpha, "Its weight (default 1e-2 for aux-loss, 1e-4 for seq-aux-loss)");
  add_numerics_option(cmd);  // accepted for uniformity: training's products are fp32 in both modes
  cmd->callback([o] {
    BalanceLoss balance;
    balance.strategy = parse_balance_strategy(o->balance, "--balance");
    if (o->alpha && !balance.on()) fail("--balance-alpha applies to --balance aux-loss or seq-aux-loss only");
    balance.alpha = o->alpha.value_or(balance.strategy == BalanceStrategy::AuxLoss ? 1e-2 : 1e-4);
    write_gradients(o->model, parse_token_list(o->tokens, "--tokens"), o->sequences, o->output, balance);
  });
}

}  // namespace megamoe::cli
