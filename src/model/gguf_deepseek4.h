// DeepSeek-V4 as llama.cpp's GGUF files hold it (architecture "deepseek4", written by its converter;
// docs/gguf.md#deepseek4): the metadata read as V4's config.json, the tensors under the names of
// DeepSeek's own checkpoint. Its converter keeps every value but two kinds: FP4 experts become
// MXFP4 blocks (the same codes and exponents, rearranged) and FP8 matrices are requantized to Q8_0.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>

#include "io/checkpoint.h"
#include "io/gguf.h"

namespace megamoe {

// The config.json a deepseek4 GGUF file's metadata stands for; fails naming the file and key.
nlohmann::json deepseek4_config(const GgufModel& model);

// A deepseek4 GGUF file (or the parts of a split one) as a checkpoint: the stacked experts
// (ffn_*_exps) seen as one tensor per expert. MTP blocks, which llama.cpp writes to a file of their
// own, are not read.
std::unique_ptr<Checkpoint> deepseek4_checkpoint(std::unique_ptr<GgufModel> gguf);

}  // namespace megamoe
