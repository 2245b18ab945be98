#include <cstdio>

#include "commands.h"
#include "model/gguf_deepseek2.h"
#include "util/error.h"

namespace megamoe::cli {

void register_export_gguf(CLI::App& app) {
  struct Options {
    std::string model, output, dtype = "f16", name;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "export-gguf", "Write a DeepSeek-V2/V3 checkpoint as a GGUF file that llama.cpp runs (docs/gguf.md#export)");
  cmd->add_option("--model", options->model, "Input model directory (any V2/V3 checkpoint megamoe loads or trains)")
      ->required();
  cmd->add_option("--output", options->output, "The .gguf file to write (atomically)")->required();
  cmd->add_option("--dtype", options->dtype,
                  "Format of the matrices: f32, f16, bf16, q8_0 or q4_0 (norms, router and biases stay f32)")
      ->capture_default_str();
  cmd->add_option("--name", options->name, "general.name (default: the model directory's name)");
  cmd->callback([options] {
    static const std::pair<const char*, DType> kFormats[] = {
        {"f32", DType::F32}, {"f16", DType::F16}, {"bf16", DType::BF16}, {"q8_0", DType::Q8_0}, {"q4_0", DType::Q4_0}};
    const auto format = std::ranges::find(kFormats, options->dtype, [](const auto& f) { return std::string(f.first); });
    if (format == std::end(kFormats))
      fail("--dtype: '{}' is not a format export-gguf writes (f32, f16, bf16, q8_0 or q4_0)", options->dtype);
    if (std::filesystem::path(options->output).extension() != ".gguf")
      fail("--output {}: give a file name ending in .gguf", options->output);
    const GgufExportSummary s = export_gguf(options->model, options->output, {format->second, options->name});
    std::fprintf(stderr, "%s: %lld tensors, %.1f MiB, matrices in %s", options->output.c_str(), (long long)s.tensors,
                 double(s.bytes) / double(1 << 20), options->dtype.c_str());
    if (s.fallbacks) std::fprintf(stderr, " (%lld kept unquantized: rows not whole blocks)", (long long)s.fallbacks);
    std::fputc('\n', stderr);
  });
}

}  // namespace megamoe::cli
