#include <chrono>
#include <cstdio>

#include "commands.h"
#include "generation_options.h"
#include "model/config.h"
#include "moe/expert_stats.h"
#include "util/atomic_file.h"
#include "util/error.h"
#include "util/json_file.h"
#include "util/token_list.h"

namespace megamoe::cli {

void register_generate(CLI::App& app) {
  struct Options : GenerationOptions {
    std::string prompt, prompt_ids;
    std::filesystem::path expert_stats;
    bool print_ids = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming it to stdout");
  add_generation_options(cmd, options.get(), 128);
  auto* prompt = cmd->add_option("--prompt", options->prompt, "Prompt text (tokenized with the model's tokenizer)");
  auto* prompt_ids = cmd->add_option("--prompt-ids", options->prompt_ids, "Prompt as token ids, e.g. 1,2,3");
  prompt->excludes(prompt_ids);
  cmd->add_flag("--print-ids", options->print_ids, "Print the generated token ids instead of text");
  cmd->add_option(
      "--expert-stats", options->expert_stats,
      "Write the routed experts' loads and balance statistics (MaxVio, ...) per MoE layer to this JSON file");
  cmd->callback([options] {
    if (options->prompt.empty() && options->prompt_ids.empty()) fail("give --prompt TEXT or --prompt-ids IDS");
    const bool text_prompt = options->prompt_ids.empty();
    const std::filesystem::path& stats_path = options->expert_stats;
    if (!stats_path.empty() && !stats_path.parent_path().empty() &&
        !std::filesystem::is_directory(stats_path.parent_path()))
      fail("--expert-stats {}: no such directory", stats_path.string());
    GenerationSetup setup = load_for_generation(*options, text_prompt || !options->print_ids);
    std::optional<ModelConfig> config;  // with --expert-stats: which layers are MoE layers, and their pools
    std::unique_ptr<ExpertLoad> load;
    if (!stats_path.empty()) {
      config = read_model_config(options->model);
      load = std::make_unique<ExpertLoad>(config->num_hidden_layers, config->n_routed_experts);
      setup.model->record_expert_load(load.get());
    }
    std::vector<int32_t> prompt_tokens;
    if (text_prompt) prompt_tokens = encode_prompt(setup, options->prompt);
    else prompt_tokens = parse_token_list(options->prompt_ids, "--prompt-ids");

    using Clock = std::chrono::steady_clock;
    const Tokenizer* tokenizer = setup.tokenizer ? &*setup.tokenizer : nullptr;
    Sequence sequence(*setup.model, prompt_tokens, options->params, tokenizer, setup.eos_id, setup.max_context);
    Sequence* batch[] = {&sequence};
    const auto start = Clock::now();
    auto first_token = start;
    size_t printed = 0;
    while (!sequence.finished()) {
      step_batch(*setup.model, batch);
      if (printed == 0) first_token = Clock::now();
      if (options->print_ids) {
        for (; printed < sequence.generated().size(); ++printed)
          std::printf("%s%d", printed ? " " : "", sequence.generated()[printed]);
      } else {
        printed = sequence.generated().size();
        print_generated(sequence.take_new_text());
      }
      std::fflush(stdout);
    }
    print_generated(options->print_ids ? "\n" : sequence.take_new_text().append("\n"));
    const auto end = Clock::now();
    const double prefill_s = std::chrono::duration<double>(first_token - start).count();
    const double decode_s = std::chrono::duration<double>(end - first_token).count();
    const size_t generated = sequence.generated().size();
    std::fprintf(stderr,
                 "prompt: %zu tokens, %.1f tokens/s | generation: %zu tokens, %.1f tokens/s | KV cache: %.2f MiB | "
                 "finish: %s\n",
                 prompt_tokens.size(), double(prompt_tokens.size()) / prefill_s, generated,
                 generated > 1 ? double(generated - 1) / decode_s : 0.0, double(sequence.cache_bytes()) / (1 << 20),
                 std::string(to_string(sequence.finish_reason())).c_str());
    if (!stats_path.empty()) {
      AtomicFile file(stats_path);
      std::vector<int64_t> moe_layers, pool_of;
      for (int64_t L = 0; L < config->num_hidden_layers; ++L)
        if (config->is_moe_layer(L)) moe_layers.push_back(L), pool_of.push_back(config->expert_pool_of_layer(L));
      file.write(expert_load_stats(*load, moe_layers, pool_of).dump(1) + "\n");
      file.commit();
    }
  });
}

}  // namespace megamoe::cli
