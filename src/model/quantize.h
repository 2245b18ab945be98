// `megamoe quantize`: any checkpoint megamoe reads (a GGUF file too) rewritten as megamoe's own
// q8_0 / q4_0 checkpoint or in DeepSeek's official FP8 layout (docs/quantization.md), tensor by
// tensor, so models larger than memory convert.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ops/dtype.h"

namespace megamoe {

// config.json's quantization_config of a megamoe checkpoint of `weight_format` (Q8_0 or Q4_0).
nlohmann::json megamoe_quantization_config(DType weight_format);

struct QuantizeOptions {
  DType weight_format = DType::Q8_0;  // Q8_0, Q4_0, or F8_E4M3: the official FP8 layout (model/weight_encoding.h)
  int64_t shard_size = 0;             // bytes per output shard; 0: as many shards as the input has
};

struct QuantizeSummary {
  int64_t bytes_before = 0, bytes_after = 0;  // tensor bytes of the input and of the output
  int64_t blocked_tensors = 0;                // written in Q8_0 / Q4_0 blocks or FP8 / FP4
  int64_t kept_tensors = 0;                   // written as they were (embedding, norms, gates, ...)
  int64_t unused_tensors = 0;                 // not megamoe's (e.g. V3's MTP layer): copied as they were
  int64_t dropped_tensors = 0;                // not megamoe's, in ggml blocks (a GGUF file's MTP layers): left out
  std::vector<std::string> bf16_fallbacks;    // quantized roles whose columns are not a multiple of 32
  int shards = 1;
};

// Writes `output` atomically; fails before writing anything if `output` exists or the input is not
// a checkpoint megamoe loads (the error names the file, tensor or key).
QuantizeSummary quantize_checkpoint(const std::filesystem::path& input, const std::filesystem::path& output,
                                    const QuantizeOptions& options);

}  // namespace megamoe
