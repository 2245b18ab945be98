#include <fmt/format.h>

#include <map>

#include "commands.h"
#include "distributed_options.h"
#include "io/npy.h"
#include "memory_options.h"
#include "model/model.h"
#include "numerics_option.h"
#include "util/token_list.h"

namespace megamoe::cli {

namespace {

// --taps DIR: every named intermediate as DIR/<name>-<layer>.npy ([tokens, width]; <name>.npy after
// the layers), the rows of all forward calls in order.
class NpyTaps final : public ActivationTaps {
 public:
  void record(std::string_view name, int64_t layer, const float* rows, int64_t n, int64_t width) override {
    Tap& tap = taps_[layer < 0 ? std::string(name) : fmt::format("{}-{}", name, layer)];
    tap.width = width;
    tap.rows.insert(tap.rows.end(), rows, rows + n * width);
  }
  void write(const std::filesystem::path& dir) const {
    std::filesystem::create_directories(dir);
    for (const auto& [key, tap] : taps_) {
      const int64_t shape[] = {int64_t(tap.rows.size()) / tap.width, tap.width};
      write_npy(dir / (key + ".npy"), tap.rows, shape);
    }
  }

 private:
  struct Tap {
    int64_t width = 0;
    std::vector<float> rows;
  };
  std::map<std::string, Tap> taps_;
};

}  // namespace

void register_logits(CLI::App& app) {
  struct Options {
    std::string model, tokens, output, taps;
    int64_t chunk_size = 0;
    bool last = false;
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
  cmd->add_flag("--last", options->last,
                "Write only the last position's logits [1, vocab], each chunk asking for its last row alone as a "
                "prompt's prefill does (DeepSeek-V4.1 then skips the decoder layers' work at positions no later "
                "one can see)");
  cmd->add_option("--taps", options->taps,
                  "Also write the named intermediate activations (attn_out, ffn_out, ... per layer) as .npy files "
                  "into this directory");
  add_distributed_options(cmd, &options->distributed);
  add_memory_options(cmd, &options->memory);
  add_numerics_option(cmd);
  cmd->callback([options] {
    const std::vector<int32_t> tokens = parse_token_list(options->tokens, "--tokens");
    const auto model = dist::load_model_on_ranks(options->model, options->distributed,
                                                 weight_residency(options->memory, options->model));
    const int64_t T = int64_t(tokens.size()), V = model->vocab_size();
    apply_memory_options(model.get(), options->memory, options->model, model->cache_bytes(T));
    const int64_t rows = options->last ? 1 : T;
    std::vector<float> logits(rows * V);  // [rows, V]
    const int64_t chunk = options->chunk_size > 0 ? options->chunk_size : T;
    NpyTaps taps;
    if (!options->taps.empty()) model->set_activation_taps(&taps);
    const auto cache = model->new_cache(T);
    for (int64_t first = 0; first < T; first += chunk) {
      const SequenceStep step{cache.get(), std::span(tokens).subspan(first, std::min(chunk, T - first)),
                              !options->last};
      model->forward(logits.data() + (options->last ? 0 : first * V), std::span(&step, 1));
    }
    const int64_t shape[] = {rows, V};
    write_npy(options->output, logits, shape);
    if (!options->taps.empty()) taps.write(options->taps);
  });
}

}  // namespace megamoe::cli
