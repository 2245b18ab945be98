// Flags and set-up shared by the commands that generate (generate, chat).
#pragma once
#include <CLI/CLI.hpp>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "dist/distributed_model.h"
#include "memory_options.h"
#include "model/model.h"
#include "runtime/generation.h"
#include "tokenizer/tokenizer.h"

namespace megamoe::cli {

struct GenerationOptions {
  std::string model;
  std::string tokenizer;    // empty: the model directory's tokenizer.json, if any
  int64_t max_context = 0;  // 0: the model's max_position_embeddings
  GenerationParams params;
  dist::DistributedOptions distributed;  // mpirun runs
  MemoryOptions memory;
  int64_t sequences = 1;  // KV caches of max_context tokens the memory budget keeps room for
};

// --model, --tokenizer, --max-tokens, --temperature, --top-k, --top-p, --min-p,
// --repetition-penalty, --seed, --stop, --ignore-eos, --max-context, --placement, --dist-stats.
void add_generation_options(CLI::App* cmd, GenerationOptions* options, int64_t default_max_tokens);

// The model, tokenizer and special tokens the options name.
GenerationSetup load_for_generation(const GenerationOptions& options, bool tokenizer_required);

// Writes generated text to stdout and flushes it; every byte, NULs included (fputs stops at them).
void print_generated(std::string_view text);

}  // namespace megamoe::cli
