#include <map>

#include "commands.h"
#include "model/synth.h"
#include "util/json_file.h"

namespace megamoe::cli {

void register_synth(CLI::App& app) {
  struct Options {
    std::string config, dtype = "bf16", output;
    uint64_t seed = 0;
    int shards = 1;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("synth", "Write a checkpoint with random weights for a model config");
  cmd->add_option("--model-config", options->config, "Hugging Face style config.json")->required();
  cmd->add_option("--dtype", options->dtype,
                  "Weight format of the linear layers (fp8 for DeepSeek-V4: the official layout, FP8 with ue8m0 "
                  "scales and FP4 routed experts; q8_0, q4_0: megamoe's blocks, docs/quantization.md)")
      ->check(CLI::IsMember({"bf16", "fp8", "q8_0", "q4_0"}))
      ->capture_default_str();
  cmd->add_option("--seed", options->seed, "Random seed")->capture_default_str();
  cmd->add_option("--shards", options->shards, "Number of safetensors files (with an index when > 1)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd->add_option("--output", options->output, "Output directory (written atomically)")->required();
  cmd->callback([options] {
    const nlohmann::json config = read_json_file(options->config);
    const std::map<std::string, SynthDType> dtypes{
        {"bf16", SynthDType::BF16}, {"fp8", SynthDType::FP8}, {"q8_0", SynthDType::Q8_0}, {"q4_0", SynthDType::Q4_0}};
    SynthOptions synth{dtypes.at(options->dtype), options->seed, options->shards};
    synth_checkpoint(options->output, config, synth);
  });
}

}  // namespace megamoe::cli
