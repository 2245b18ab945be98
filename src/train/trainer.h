// `megamoe train`: trains a DeepSeek-V2/V3 model from scratch on text, writing a Hugging Face
// style checkpoint that every megamoe command loads, plus the trainer's state for --resume.
//
// A run: (1) a tokenizer (--tokenizer, or one trained on the data with the config's vocab size),
// (2) the text tokenized once into <output>.data/tokens.safetensors and split into training and
// validation parts, (3) steps of AdamW on batches read in order, with validation and atomic
// checkpoints now and then, (4) a few sampled lines from the final checkpoint.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "train/layers.h"
#include "train/parameters.h"

namespace megamoe::train {

struct TrainOptions {
  std::filesystem::path model_config;  // config.json of the model to train
  std::filesystem::path data;          // a text file or a directory of them
  std::filesystem::path tokenizer;     // empty: train one
  std::filesystem::path output;        // the checkpoint directory
  std::filesystem::path metrics;       // empty: no metrics file
  int64_t steps = 0, seq_len = 0, batch_size = 0;
  // Optimization settings: unset ones take the defaults of a new run, or a resumed run's values.
  std::optional<double> lr, min_lr_ratio, weight_decay, grad_clip, val_fraction;
  std::optional<int64_t> warmup_steps;
  std::optional<uint64_t> seed;
  // Load balancing: unset ones take a new run's defaults (None; alpha 1e-2 for AuxLoss, 1e-4 for
  // SeqAuxLoss; u 1e-3), or a resumed run's values.
  std::optional<BalanceStrategy> balance;
  std::optional<double> balance_alpha, bias_update_rate;
  int64_t eval_every = 100;  // validation every so many steps (and after the last)
  int64_t eval_batches = 8;  // at most so many batches of validation windows
  int64_t save_every = 100;  // checkpoint every so many steps (and after the last); 0: last only
  int64_t stop_at = 0;       // > 0: save and stop after this step (the schedule still spans `steps`)
  int64_t sample_lines = 3;  // lines sampled from the final model
  int64_t sample_tokens = 48;
  int threads = 0;  // OpenMP threads; 0: all cores
  SavedDType save_dtype = SavedDType::F32;
  bool resume = false;
};

void run_training(const TrainOptions& options);

// "none", "aux-loss", "seq-aux-loss", "bias" (the --balance values), and back; Error naming
// `what` for another name.
std::string_view to_string(BalanceStrategy strategy);
BalanceStrategy parse_balance_strategy(std::string_view name, const std::string& what);

// `megamoe gradients`: the mean next-token cross-entropy of `tokens` ([sequences, T + 1], row by
// row) under the model in `model_dir`, and its gradient for every parameter, written as F32
// safetensors under the checkpoint names (metadata "loss"). For checking against references.
// `balance` (None, AuxLoss or SeqAuxLoss) adds that auxiliary loss: "loss" is then the total,
// "aux_loss" (metadata) its auxiliary part.
void write_gradients(const std::filesystem::path& model_dir, std::span<const int32_t> tokens, int64_t sequences,
                     const std::filesystem::path& output, const BalanceLoss& balance = {});

}  // namespace megamoe::train
