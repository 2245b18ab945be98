#include "generation_options.h"

#include <cstdio>
#include <filesystem>

#include "distributed_options.h"
#include "model/gguf_tokenizer.h"
#include "numerics_option.h"
#include "util/error.h"

namespace megamoe::cli {
namespace {

// A BOS/EOS id where tokenizer_config.json defines one (the Tokenizer throws where it does not).
std::optional<int32_t> defined_id(const Tokenizer& tokenizer, int32_t (Tokenizer::*id)() const) {
  try {
    return (tokenizer.*id)();
  } catch (const Error&) {
    return std::nullopt;
  }
}

}  // namespace

void add_generation_options(CLI::App* cmd, GenerationOptions* o, int64_t default_max_tokens) {
  o->params.max_tokens = default_max_tokens;
  SamplingParams& s = o->params.sampling;
  cmd->add_option("--model", o->model, "Model directory (Hugging Face layout)")->required();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "tokenizer.json or its directory, or a GGUF file's tokenizer (default: the model's)");
  cmd->add_option("--max-tokens", o->params.max_tokens, "Most tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", s.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", s.top_k, "Sample from the k most likely tokens (0 = all)")->capture_default_str();
  cmd->add_option("--top-p", s.top_p, "Nucleus sampling threshold")->capture_default_str();
  cmd->add_option("--min-p", s.min_p, "Drop tokens below min-p times the best one's probability")
      ->capture_default_str();
  cmd->add_option("--repetition-penalty", s.repetition_penalty, "> 1 discourages repeating tokens")
      ->capture_default_str();
  cmd->add_option("--seed", s.seed, "Random seed (same seed, same output)")->capture_default_str();
  cmd->add_option("--stop", o->params.stop, "Stop when this text appears (repeatable)");
  cmd->add_flag("--ignore-eos", o->params.ignore_eos, "Keep going past the end-of-sequence token");
  cmd->add_option("--max-context", o->max_context, "Context length (default: the model's)");
  add_distributed_options(cmd, &o->distributed);
  add_memory_options(cmd, &o->memory);
  add_numerics_option(cmd);
}

GenerationSetup load_for_generation(const GenerationOptions& o, bool tokenizer_required) {
  GenerationSetup setup;
  validate(o.params.sampling);
  setup.model = dist::load_model_on_ranks(o.model, o.distributed, weight_residency(o.memory, o.model));
  const ModelInfo& info = setup.model->info();
  setup.max_context =
      o.max_context > 0 ? std::min(o.max_context, setup.model->max_context()) : setup.model->max_context();
  apply_memory_options(setup.model.get(), o.memory, o.model, o.sequences * setup.model->cache_bytes(setup.max_context));
  const std::filesystem::path tokenizer_path = std::filesystem::path(o.tokenizer.empty() ? o.model : o.tokenizer);
  const bool has_tokenizer = !o.tokenizer.empty() || tokenizer_path.extension() == ".gguf" ||
                             std::filesystem::exists(tokenizer_path / "tokenizer.json");
  if (has_tokenizer) {
    setup.tokenizer = load_tokenizer(tokenizer_path);
    if (setup.tokenizer->vocab_size() > setup.model->vocab_size())
      fail("{}: the tokenizer has {} tokens but the model only {}", tokenizer_path.string(),
           setup.tokenizer->vocab_size(), setup.model->vocab_size());
  } else if (tokenizer_required) {
    fail("{}: no tokenizer.json (give --tokenizer PATH, or token ids where the command takes them)", o.model);
  }
  if (info.eos_token_id) setup.eos_id = info.eos_token_id;
  else if (setup.tokenizer) setup.eos_id = defined_id(*setup.tokenizer, &Tokenizer::eos_id);
  if (setup.tokenizer) setup.bos_id = defined_id(*setup.tokenizer, &Tokenizer::bos_id);
  return setup;
}

void print_generated(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

}  // namespace megamoe::cli
