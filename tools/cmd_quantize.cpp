#include <cstdio>

#include <fmt/format.h>

#include "commands.h"
#include "model/quantize.h"
#include "util/error.h"

namespace megamoe::cli {

void register_quantize(CLI::App& app) {
  struct Options {
    std::string model, dtype, output;
    int64_t shard_size = 0;
  };
  auto options = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "quantize",
      "Rewrite a checkpoint with its linear layers and experts in q8_0 or q4_0 blocks, or in DeepSeek's FP8 layout "
      "(docs/quantization.md)");
  cmd->add_option("--model", options->model,
                  "Input model directory (any checkpoint megamoe loads), or a GGUF file of DeepSeek-V2/V3")
      ->required();
  cmd->add_option("--dtype", options->dtype,
                  "Format of the linear layers and experts: q8_0, q4_0, or fp8 (DeepSeek's official FP8 layout: "
                  "128x128 block scales; V4's experts FP4)")
      ->required();
  cmd->add_option("--output", options->output, "Output directory, which must not exist (written atomically)")
      ->required();
  cmd->add_option("--shard-size", options->shard_size,
                  "Bytes per safetensors file, e.g. 5GB (default: as many files as the input)")
      ->transform(CLI::AsSizeValue(false));
  cmd->callback([options] {
    if (options->dtype != "q8_0" && options->dtype != "q4_0" && options->dtype != "fp8")
      fail("--dtype: '{}' is not a weight format quantize writes (q8_0, q4_0 or fp8)", options->dtype);
    const DType format = options->dtype == "q8_0"   ? DType::Q8_0
                         : options->dtype == "q4_0" ? DType::Q4_0
                                                    : DType::F8_E4M3;
    const QuantizeOptions quantize{format, options->shard_size};
    const QuantizeSummary s = quantize_checkpoint(options->model, options->output, quantize);
    const double mib = 1 << 20;
    std::fprintf(stderr,
                 "%s: %lld tensors in %s, %lld kept as they were, %lld not used by megamoe copied; "
                 "%.1f MiB -> %.1f MiB (%.2fx) in %d file%s\n",
                 options->output.c_str(), (long long)s.blocked_tensors, options->dtype.c_str(),
                 (long long)s.kept_tensors, (long long)s.unused_tensors, s.bytes_before / mib, s.bytes_after / mib,
                 double(s.bytes_before) / double(s.bytes_after), s.shards, s.shards == 1 ? "" : "s");
    if (s.dropped_tensors)
      std::fprintf(stderr, "%lld tensors megamoe does not use, in ggml blocks, left out\n",
                   (long long)s.dropped_tensors);
    if (!s.bf16_fallbacks.empty())
      std::fprintf(
          stderr, "%zu matrices stored in BF16 instead (columns not a multiple of 32): %s%s\n", s.bf16_fallbacks.size(),
          fmt::format("{}", fmt::join(s.bf16_fallbacks.begin(),
                                      s.bf16_fallbacks.begin() + std::min<size_t>(5, s.bf16_fallbacks.size()), ", "))
              .c_str(),
          s.bf16_fallbacks.size() > 5 ? ", ..." : "");
  });
}

}  // namespace megamoe::cli
