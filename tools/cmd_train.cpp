// megamoe train: a DeepSeek-V2/V3 model from scratch on text (src/train/trainer.h).
#include <cstdio>

#include "commands.h"
#include "dist/communicator.h"
#include "report/run_metrics.h"
#include "train/trainer.h"

namespace megamoe::cli {

using namespace train;  // this command is a frontend of the trainer

void register_train(CLI::App& app) {
  struct Options : TrainOptions {
    std::string save_dtype_name = "f32";
    std::optional<std::string> balance_name;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("train", "Train a DeepSeek-V2/V3 model from scratch on text");
  cmd->add_option("--model-config", o->model_config, "config.json of the model to train")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--data", o->data, "A text file, or a directory of them (read recursively)")->required();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "tokenizer.json or its directory (default: train a BPE tokenizer of the config's vocab_size)");
  cmd->add_option("--steps", o->steps, "Optimizer steps in all")->required();
  cmd->add_option("--seq-len", o->seq_len, "Tokens per sequence")->required();
  cmd->add_option("--batch-size", o->batch_size, "Sequences per step")->required();
  cmd->add_option("--output", o->output, "Checkpoint directory (written atomically)")->required();
  cmd->add_option("--metrics", o->metrics, "JSON Lines file: one line per step, one per validation");
  cmd->add_flag("--resume", o->resume, "Continue the run saved in --output");
  cmd->add_option("--lr", o->lr, "Peak learning rate (default 1e-3)");
  cmd->add_option("--warmup-steps", o->warmup_steps, "Linear warmup steps (default: min(100, steps/10))");
  cmd->add_option("--min-lr-ratio", o->min_lr_ratio, "The cosine ends at lr times this (default 0.1)");
  cmd->add_option("--weight-decay", o->weight_decay, "AdamW weight decay of the matrices (default 0.1)");
  cmd->add_option("--grad-clip", o->grad_clip, "Clip the gradient's global norm to this, 0 = off (default 1)");
  cmd->add_option("--val-fraction", o->val_fraction, "Share of the tokens held out for validation (default 0.1)");
  cmd->add_option("--seed", o->seed, "Seed of the initial weights and the sampled lines (default 0)");
  cmd->add_option("--balance", o->balance_name,
                  "Load balancing: none, aux-loss (Switch), seq-aux-loss (DeepSeek-V3) or bias (auxiliary-loss-free) "
                  "(default none)");
  cmd->add_option("--balance-alpha", o->balance_alpha,
                  "Weight of the auxiliary loss (default 1e-2 for aux-loss, 1e-4 for seq-aux-loss)");
  cmd->add_option("--bias-update-rate", o->bias_update_rate,
                  "u of --balance bias: b_i += u * sign(mean - load_i) "
                  "after each step (default 1e-3)");
  cmd->add_option("--eval-every", o->eval_every, "Validate every so many steps, 0 = at the end only")
      ->capture_default_str();
  cmd->add_option("--eval-batches", o->eval_batches, "Most batches of validation windows per validation")
      ->capture_default_str();
  cmd->add_option("--save-every", o->save_every, "Save a checkpoint every so many steps, 0 = at the end only")
      ->capture_default_str();
  cmd->add_option("--stop-at", o->stop_at,
                  "Save and stop after this step (the schedule still spans --steps); continue with --resume");
  cmd->add_option("--sample-lines", o->sample_lines, "Lines sampled from the trained model at the end")
      ->capture_default_str();
  cmd->add_option("--sample-tokens", o->sample_tokens, "Tokens per sampled line")->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads, 0 = all cores (same seed, data and threads: same losses)")
      ->capture_default_str();
  cmd->add_option("--save-dtype", o->save_dtype_name, "Type of the weights in model.safetensors (training keeps fp32)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->callback([o] {
    o->save_dtype = o->save_dtype_name == "bf16" ? SavedDType::BF16 : SavedDType::F32;
    if (o->balance_name) o->balance = parse_balance_strategy(*o->balance_name, "--balance");
    run_training(*o);
    if (o->metrics.empty() || dist::rank() != 0) return;  // under mpirun rank 0 writes the metrics
    // The run's plots beside its metrics, and its expert balance (src/report/run_metrics.h).
    std::fputs(balance_table(read_run_metrics(o->metrics)).c_str(), stdout);
    for (const auto& png : plot_training_metrics(o->metrics, o->metrics.parent_path()))
      std::fprintf(stderr, "megamoe: plot %s\n", png.c_str());
  });
}

}  // namespace megamoe::cli
