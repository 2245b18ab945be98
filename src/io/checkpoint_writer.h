// Writing a Hugging Face model directory: config.json plus the tensors in one safetensors file or
// in shards with model.safetensors.index.json. The directory appears whole or not at all.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <vector>

#include "io/safetensors.h"

namespace megamoe {

// `extra_files` are copied in as they are (e.g. tokenizer.json). Shards (at most one per tensor) take
// contiguous runs of tensors of about equal bytes. A `progress` label shows a bar of the MiB written.
void write_checkpoint(const std::filesystem::path& dir, const nlohmann::json& config,
                      const std::vector<TensorToWrite>& tensors, int shards = 1,
                      const std::vector<std::filesystem::path>& extra_files = {}, const std::string& progress = "");

// megamoe's block formats stored in safetensors as plain bytes: a q8_0 / q4_0 weight [rows, cols]
// is a U8 tensor [rows, cols/32, 34] / [rows, cols/32, 18] of llama.cpp blocks (docs/quantization.md).
std::vector<int64_t> block_tensor_shape(DType format, int64_t rows, int64_t cols);

}  // namespace megamoe
