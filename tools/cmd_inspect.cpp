#include <fmt/format.h>

#include <cstdio>
#include <map>

#include "commands.h"
#include "io/checkpoint.h"
#include "io/gguf.h"
#include "model/model.h"
#include "model/summary.h"

namespace megamoe::cli {

namespace {

// A GGUF file's header: its metadata (arrays by element type and length), and its tensors' bytes by
// ggml type.
nlohmann::ordered_json gguf_summary(const GgufModel& model) {
  const GgufFile& file = model.first();
  nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
  for (const GgufKeyValue& k : file.metadata()) {
    if (k.type == GgufValueType::Array)
      metadata[k.key] = {{"array_of", ggml_value_type_name(k.element)}, {"length", k.value.size()}};
    else if (k.value.is_string() && k.value.get<std::string>().size() > 200)
      metadata[k.key] = k.value.get<std::string>().substr(0, 200) + "...";
    else if (k.type == GgufValueType::F32) metadata[k.key] = std::stod(fmt::format("{}", k.value.get<float>()));
    else metadata[k.key] = k.value;
  }
  std::map<std::string, std::pair<int64_t, int64_t>> by_type;  // name: tensors, bytes
  int64_t bytes = 0;
  for (const GgufTensor* t : model.tensors()) {
    auto& [count, type_bytes] = by_type[std::string(ggml_type_info(t->type)->name)];
    ++count;
    type_bytes += int64_t(t->nbytes);
    bytes += int64_t(t->nbytes);
  }
  nlohmann::ordered_json types = nlohmann::ordered_json::object();
  const GgufKeyValue* arch = file.find_key("general.architecture");
  const std::string architecture = arch && arch->value.is_string() ? arch->value.get<std::string>() : "";
  for (const auto& [name, counts] : by_type) types[name] = {{"tensors", counts.first}, {"bytes", counts.second}};
  return {{"format", "gguf"},
          {"version", file.version()},
          {"alignment", file.alignment()},
          {"architecture", architecture},
          {"parts", model.parts().size()},
          {"tensors", model.tensors().size()},
          {"tensor_bytes", bytes},
          {"tensors_by_type", types},
          {"metadata", metadata}};
}

std::string describe_gguf(const nlohmann::ordered_json& s) {
  std::string out;
  auto line = [&](const std::string& key, const std::string& value) {
    out += fmt::format("{:<34}{}\n", key + " ", value);
  };
  line("format", fmt::format("GGUF version {}, alignment {}, {} file{}", s["version"].get<int>(),
                             s["alignment"].get<int>(), s["parts"].get<int>(), s["parts"].get<int>() > 1 ? "s" : ""));
  line("architecture", s["architecture"].get<std::string>().empty() ? "(none)" : s["architecture"].get<std::string>());
  line("tensors", fmt::format("{}, {:.2f} GiB", s["tensors"].get<int64_t>(),
                              double(s["tensor_bytes"].get<int64_t>()) / double(1 << 30)));
  for (const auto& [name, t] : s["tensors_by_type"].items())
    line("  " + name, fmt::format("{} tensors, {:.2f} GiB", t["tensors"].get<int64_t>(),
                                  double(t["bytes"].get<int64_t>()) / double(1 << 30)));
  for (const auto& [key, value] : s["metadata"].items())
    line(key, value.is_object()
                  ? fmt::format("[{} x {}]", value["length"].get<int64_t>(), value["array_of"].get<std::string>())
              : value.is_string() ? value.get<std::string>()
                                  : value.dump());
  return out;
}

}  // namespace

void register_inspect(CLI::App& app) {
  struct Options {
    std::string model;
    bool json = false;
    int64_t context = 0;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("inspect", "Print a checkpoint's architecture, parameter counts and memory costs");
  cmd->add_option("model", options->model,
                  "Model directory (Hugging Face layout), a bare config.json, or a GGUF file (its header)")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_flag("--json", options->json, "Print one JSON object instead of text");
  cmd->add_option("--context", options->context,
                  "Sequence length of the KV-cache figures (default: max_position_embeddings)")
      ->check(CLI::PositiveNumber);
  cmd->callback([options] {
    const bool gguf = std::filesystem::path(options->model).extension() == ".gguf";
    std::optional<nlohmann::ordered_json> header;  // a GGUF file's
    if (gguf) {
      const std::unique_ptr<GgufModel> file = GgufModel::open(options->model);
      header = gguf_summary(*file);
      if ((*header)["architecture"] != "deepseek2" &&
          (*header)["architecture"] != "deepseek4") {  // a file megamoe cannot run: its header alone
        const std::string text = options->json
                                     ? header->dump(2) + "\n"
                                     : describe_gguf(*header) + "megamoe runs GGUF files of deepseek2 and deepseek4\n";
        std::fputs(text.c_str(), stdout);
        return;
      }
    }
    // A bare config file describes a model without its weights (e.g. a published config.json).
    std::unique_ptr<Checkpoint> checkpoint;
    ModelConfig config;
    if (!gguf && std::filesystem::is_regular_file(options->model)) {
      config = load_model_config(options->model);
    } else {
      checkpoint = open_checkpoint(options->model);
      config = parse_model_config(checkpoint->config(), checkpoint->config_source());
    }
    const ModelSummary summary = summarize(config, checkpoint.get(), options->context);
    std::string text;
    if (options->json) {
      nlohmann::json json = to_json(summary, config);
      if (header) json["gguf"] = nlohmann::json::parse(header->dump());
      text = json.dump(2) + "\n";
    } else {
      text = describe(summary, config) + (header ? "\nGGUF file\n" + describe_gguf(*header) : "");
    }
    std::fputs(text.c_str(), stdout);
  });
}

}  // namespace megamoe::cli
