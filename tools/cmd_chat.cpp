#include <unistd.h>
#include <cstdio>
#include <iostream>

#include "commands.h"
#include "generation_options.h"
#include "tokenizer/chat_format_v4.h"
#include "util/error.h"

namespace megamoe::cli {

namespace {

// Tokens shared at the start of two sequences.
size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

}  // namespace

void register_chat(CLI::App& app) {
  struct Options : GenerationOptions {
    std::string system, reasoning_effort;
    bool thinking = false;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd =
      app.add_subcommand("chat", "Chat with a model in the terminal (Ctrl-D or /exit to leave, /reset to start over)");
  add_generation_options(cmd, options.get(), 512);
  cmd->add_option("--system", options->system, "System prompt");
  cmd->add_flag("--thinking", options->thinking,
                "DeepSeek-V4 and V4.1: thinking mode (the model reasons before it answers)");
  cmd->add_option("--reasoning-effort", options->reasoning_effort,
                  "With --thinking: V4 high or max; V4.1 a number from 1 to 100, or low (50), high (75, the "
                  "default), max (100)");
  cmd->callback([options] {
    GenerationSetup setup = load_for_generation(*options, true);
    const Tokenizer& tokenizer = *setup.tokenizer;
    const bool interactive = isatty(STDIN_FILENO);
    // DeepSeek-V4 and V4.1 have their own prompt format (chat_format_v4.h); the others use the
    // tokenizer's template.
    const std::optional<V4Dialect> dialect = deepseek_v4_prompt_dialect(setup.model->info().architecture);
    const bool v4 = dialect.has_value();
    V4PromptOptions v4_options;
    v4_options.dialect = dialect.value_or(V4Dialect::V4);
    v4_options.thinking = options->thinking;
    v4_options.reasoning_effort = options->reasoning_effort;
    if (!v4 && !options->reasoning_effort.empty())
      fail("--reasoning-effort: {} takes its chat template's prompt, which has no reasoning effort",
           setup.model->info().architecture);
    if (v4) render_deepseek_v4_prompt(nlohmann::ordered_json::array(), v4_options);  // checks the effort now
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (!options->system.empty()) messages.push_back({{"role", "system"}, {"content", options->system}});
    const size_t first_turn = messages.size();
    auto render = [&] {
      if (v4) return render_deepseek_v4_prompt(messages, v4_options);
      std::vector<ChatMessage> turns;
      for (const auto& m : messages)
        turns.push_back({m["role"].get<std::string>(), m["content"].get<std::string>(), {}});
      return tokenizer.apply_chat_template(turns, true);
    };
    // The answer as the next prompt shows it: V4 keeps its reasoning apart (and drops it later).
    auto answer_message = [&](const std::string& text) {
      if (!v4) return nlohmann::ordered_json{{"role", "assistant"}, {"content", text}};
      const V4Completion answer = parse_deepseek_v4_completion(text, options->thinking, v4_options.dialect);
      return nlohmann::ordered_json{
          {"role", "assistant"}, {"content", answer.content}, {"reasoning_content", answer.reasoning_content}};
    };
    // The cache of the previous turn and the tokens it holds, so each turn computes only what is new.
    std::unique_ptr<SequenceCache> cache;
    std::vector<int32_t> cached_tokens;

    std::string line;
    while (true) {
      if (interactive) std::fputs("\n> ", stdout), std::fflush(stdout);
      if (!std::getline(std::cin, line) || line == "/exit") break;
      if (line == "/reset") {
        messages.erase(messages.begin() + ptrdiff_t(first_turn), messages.end());
        continue;
      }
      if (line.empty()) continue;
      messages.push_back({{"role", "user"}, {"content", line}});
      const std::vector<int32_t> prompt = tokenizer.encode(render());
      Sequence answer(*setup.model, prompt, options->params, &tokenizer, setup.eos_id, setup.max_context,
                      std::move(cache), int64_t(common_prefix(prompt, cached_tokens)));
      Sequence* batch[] = {&answer};
      while (!answer.finished()) {
        step_batch(*setup.model, batch);
        print_generated(answer.take_new_text());
      }
      print_generated(answer.take_new_text().append("\n"));
      messages.push_back(answer_message(answer.text()));
      cached_tokens = prompt;
      cached_tokens.insert(cached_tokens.end(), answer.generated().begin(), answer.generated().end());
      cache = answer.release_cache();
      cached_tokens.resize(std::min<size_t>(cached_tokens.size(), size_t(cache->length())));
    }
    if (interactive) std::fputs("\n", stdout);
  });
}

}  // namespace megamoe::cli
