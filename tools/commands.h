// Every subcommand of the megamoe binary registers itself on the CLI11 app here; each lives in
// its own tools/cmd_<name>.cpp and only parses, validates and calls into src/.
#pragma once
#include <CLI/CLI.hpp>

namespace megamoe::cli {

void register_bench(CLI::App& app);
void register_chat(CLI::App& app);
void register_experiment(CLI::App& app);
void register_export_gguf(CLI::App& app);
void register_generate(CLI::App& app);
void register_gradients(CLI::App& app);
void register_inspect(CLI::App& app);
void register_logits(CLI::App& app);
void register_perplexity(CLI::App& app);
void register_placement(CLI::App& app);
void register_quantize(CLI::App& app);
void register_serve(CLI::App& app);
void register_synth(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_train(CLI::App& app);

}  // namespace megamoe::cli
