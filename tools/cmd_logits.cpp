#include "commands.h"
#include "distributed_options.h"
#include "io/npy.h"
#include "memory_options.h"
#include "model/model.h"
#include "numerics_option.h"
#include "util/token_list.h"

namespace megamoe::cli {

void register_logits(CLI::App& app) {
  struct Options {
    std::string model, tokens, output;
    int64_t chunk_size = 0;
    dist::DistributedOptions distributed;
    MemoryOptions memory;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("logits", "Compute next-token logits for every position and write them as .npy");
  cmd->add_option("--model", options->model, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--tokens", options->tokens, "Comma-separated token ids, e.g. 1,2,3")->required();
  cmd->add_option("--output", options->output, "Output .npy file: float32 [T, vocab]")->required();
  cmd->add_option("--chunk-size", options->chunk_size,
                  "Feed the tokens this many at a time through the KV cache (default: all at once)")
      ->check(CLI::PositiveNumber);
  add_distributed_options(cmd, &options->distributed);
  add_memory_options(cmd, &options->memory);
  add_numerics_option(cmd);
  cmd->callback([options] {
    const std::vector<int32_t> tokens = parse_token_list(options->tokens, "--tokens");
    const auto model = dist::load_model_on_ranks(options->model, options->distributed,
                                                 weight_residency(options->memory, options->model));
    const int64_t T = int64_t(tokens.size()), V = model->vocab_size();
    apply_memory_options(model.get(), options->memory, options->model, model->cache_bytes(T));
    std::vector<float> logits(T * V);  // [T, V]
    const int64_t chunk = options->chunk_size > 0 ? options->chunk_size : T;
    const auto cache = model->new_cache(T);
    for (int64_t first = 0; first < T; first += chunk) {
      const SequenceStep step{cache.get(), std::span(tokens).subspan(first, std::min(chunk, T - first)), true};
      model->forward(logits.data() + first * V, std::span(&step, 1));
    }
    const int64_t shape[] = {T, V};
    write_npy(options->output, logits, shape);
  });
}

}  // namespace megamoe::cli
