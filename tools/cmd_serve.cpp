#include <filesystem>

#include "commands.h"
#include "generation_options.h"
#include "serve/http_server.h"

namespace megamoe::cli {

void register_serve(CLI::App& app) {
  struct Options : GenerationOptions {
    serve::ServeOptions serve;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Serve the model over an OpenAI-compatible HTTP API, batching requests continuously (SIGINT/SIGTERM stop it)");
  // The sampling flags are the defaults of the fields a request leaves out.
  add_generation_options(cmd, options.get(), 256);
  serve::ServeOptions& s = options->serve;
  cmd->add_option("--host", s.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", s.port, "Port to listen on (0: any free one, printed)")->capture_default_str();
  cmd->add_option("--model-name", s.model_name, "Model id of the API (default: the model directory's name)");
  cmd->add_flag("--thinking", s.thinking,
                "DeepSeek-V4: chat in thinking mode unless a request chooses (chat_template_kwargs.thinking, "
                "thinking, reasoning_effort)");
  cmd->add_option("--max-batch", s.limits.max_batch, "Sequences generated together")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--max-queue", s.limits.max_queue, "Requests that may wait for a place; more get HTTP 429")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-body-bytes", s.max_body_bytes, "Largest request body; larger ones get HTTP 413")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--shutdown-grace", s.shutdown_grace_seconds,
                  "Seconds running requests may go on after SIGINT/SIGTERM before they are cancelled")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->callback([options] {
    options->sequences = options->serve.limits.max_batch;  // a memory budget keeps room for their KV caches
    GenerationSetup setup = load_for_generation(*options, false);
    serve::ServeOptions s = options->serve;
    if (s.model_name.empty()) {
      std::filesystem::path directory = std::filesystem::absolute(options->model).lexically_normal();
      if (directory.filename().empty()) directory = directory.parent_path();  // "DIR/"
      s.model_name = directory.filename().string();
    }
    s.defaults = options->params;
    serve::serve(setup, s);
  });
}

}  // namespace megamoe::cli
