// megamoe tokenize / detokenize / tokenizer {train, chat}: the tokenizer from the command line.
// Plain mode reads all of standard input as one text (or one list of ids); --batch reads JSON Lines,
// one text (a JSON string) or conversation per line, for tests and data preparation.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <sstream>

#include "commands.h"
#include "model/gguf_tokenizer.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace megamoe::cli {
namespace {

std::string read_stdin() {
  std::ios::sync_with_stdio(false);
  return std::string(std::istreambuf_iterator<char>(std::cin), {});
}

void write_stdout(std::string_view text) { std::fwrite(text.data(), 1, text.size(), stdout); }

std::string join_ids(const std::vector<int32_t>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ' ';
    out += std::to_string(ids[i]);
  }
  return out;
}

std::vector<int32_t> parse_ids(std::string_view text, const std::string& where) {
  std::vector<int32_t> ids;
  std::istringstream in{std::string(text)};
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || value < INT32_MIN || value > INT32_MAX)
      fail("{}: \"{}\" is not a token id", where, word);
    ids.push_back(int32_t(value));
  }
  return ids;
}

nlohmann::json parse_json(const std::string& text, const std::string& where) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: invalid JSON: {}", where, e.what());
  }
}

std::string line_name(size_t number) { return fmt::format("standard input line {}", number); }

// Calls `handle` on each line of standard input with its 1-based number.
template <typename Handle>
void for_each_input_line(Handle&& handle) {
  std::ios::sync_with_stdio(false);
  std::string line;
  for (size_t number = 1; std::getline(std::cin, line); ++number) handle(line, number);
}

}  // namespace

void register_tokenize(CLI::App& app) {
  struct Options {
    std::string tokenizer;
    bool batch = false;
    bool skip_special = false;
    bool add_generation_prompt = false;
    bool ids = false;
    BpeTrainingOptions training;
    std::vector<std::string> inputs;
    std::string output;
  };
  auto options = std::make_shared<Options>();
  const char* tokenizer_help =
      "tokenizer.json, the directory holding it (and tokenizer_config.json), or a GGUF file (its tokenizer)";

  CLI::App* tokenize = app.add_subcommand("tokenize", "Print the token ids of the UTF-8 text on standard input");
  tokenize->add_option("--tokenizer", options->tokenizer, tokenizer_help)->required();
  tokenize->add_flag("--batch", options->batch, "Read JSON Lines of strings; print one line of ids for each");
  tokenize->callback([options] {
    const Tokenizer tokenizer = load_tokenizer(options->tokenizer);
    if (!options->batch) {
      write_stdout(join_ids(tokenizer.encode(read_stdin())) + "\n");
      return;
    }
    for_each_input_line([&](const std::string& line, size_t number) {
      const nlohmann::json text = parse_json(line, line_name(number));
      if (!text.is_string()) fail("{}: expected a JSON string", line_name(number));
      try {
        write_stdout(join_ids(tokenizer.encode(text.get_ref<const std::string&>())) + "\n");
      } catch (const Error& e) {
        rethrow_with_context(line_name(number), e);
      }
    });
  });

  CLI::App* detokenize = app.add_subcommand("detokenize", "Print the text of the token ids on standard input");
  detokenize->add_option("--tokenizer", options->tokenizer, tokenizer_help)->required();
  detokenize->add_flag("--batch", options->batch, "Read lines of ids; print each text as a JSON string line");
  detokenize->add_flag("--skip-special-tokens", options->skip_special, "Leave out special tokens such as BOS/EOS");
  detokenize->callback([options] {
    const Tokenizer tokenizer = load_tokenizer(options->tokenizer);
    if (!options->batch) {
      write_stdout(tokenizer.decode(parse_ids(read_stdin(), "standard input"), options->skip_special));
      return;
    }
    for_each_input_line([&](const std::string& line, size_t number) {
      try {
        const std::string text = tokenizer.decode(parse_ids(line, line_name(number)), options->skip_special);
        write_stdout(nlohmann::json(text).dump() + "\n");
      } catch (const Error& e) {
        rethrow_with_context(line_name(number), e);
      }
    });
  });

  CLI::App* group = app.add_subcommand("tokenizer", "Train a tokenizer, or render the chat format");
  group->require_subcommand(1);

  CLI::App* train = group->add_subcommand("train", "Learn a byte-level BPE tokenizer in DeepSeek-V3's format");
  train->add_option("--vocab-size", options->training.vocab_size, "Vocabulary size, added and byte tokens included")
      ->required()
      ->check(CLI::PositiveNumber);
  train->add_option("--input", options->inputs, "UTF-8 text files to learn from")->required()->check(CLI::ExistingFile);
  train->add_option("--output", options->output, "Directory to write tokenizer.json and tokenizer_config.json to")
      ->required();
  train->add_option("--min-frequency", options->training.min_frequency, "Never merge pairs seen fewer times")
      ->capture_default_str();
  train->callback([options] {
    BpeTrainer trainer(options->training);
    for (const std::string& input : options->inputs) {
      std::ifstream in(input, std::ios::binary);
      const std::string text(std::istreambuf_iterator<char>(in), {});
      if (in.bad()) fail("{}: cannot read", input);
      trainer.add_text(text, input);
    }
    const TrainedTokenizer trained = trainer.train();
    save_tokenizer(trained, options->output);
    std::fprintf(stderr, "megamoe: wrote a tokenizer of %zu tokens (%zu merges) to %s\n",
                 trained.tokenizer["model"]["vocab"].size(), trained.tokenizer["model"]["merges"].size(),
                 options->output.c_str());
  });

  CLI::App* chat = group->add_subcommand("chat", "Print the chat-format prompt of the JSON messages on standard input");
  chat->add_option("--tokenizer", options->tokenizer, tokenizer_help)->required();
  chat->add_flag("--add-generation-prompt", options->add_generation_prompt, "End with the assistant's turn opening");
  chat->add_flag("--ids", options->ids, "Print the prompt's token ids instead of its text");
  chat->add_flag("--batch", options->batch, "Read JSON Lines of message arrays; print one JSON string (or ids) each");
  chat->callback([options] {
    const Tokenizer tokenizer = load_tokenizer(options->tokenizer);
    auto render = [&](const nlohmann::json& messages, const std::string& where) {
      const std::string prompt =
          tokenizer.apply_chat_template(parse_chat_messages(messages, where), options->add_generation_prompt);
      if (options->ids) return join_ids(tokenizer.encode(prompt)) + "\n";
      return options->batch ? nlohmann::json(prompt).dump() + "\n" : prompt;
    };
    if (!options->batch) {
      write_stdout(render(parse_json(read_stdin(), "standard input"), "standard input"));
      return;
    }
    for_each_input_line([&](const std::string& line, size_t number) {
      write_stdout(render(parse_json(line, line_name(number)), line_name(number)));
    });
  });
}

}  // namespace megamoe::cli
