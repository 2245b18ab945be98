// DeepSeek-V2/V3/R1 as llama.cpp's GGUF files hold them (architecture "deepseek2"; docs/gguf.md#deepseek2):
// reading one as a checkpoint, its metadata as the config.json and its tensors under the Hugging Face
// names the V2/V3 family loads; and writing any V2/V3 checkpoint as one that llama.cpp runs.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "io/checkpoint.h"
#include "io/gguf.h"

namespace megamoe {

// The config.json a deepseek2 GGUF file's metadata stands for; fails naming the file and key.
nlohmann::json deepseek2_config(const GgufModel& model);

// A deepseek2 GGUF file (or the parts of a split one) as a checkpoint: the stacked experts
// (ffn_*_exps) seen as one tensor per expert, and kv_b_proj as the file has it (attn_kv_b) or
// rebuilt in fp32 from the split attn_k_b / attn_v_b of newer files.
std::unique_ptr<Checkpoint> deepseek2_checkpoint(std::unique_ptr<GgufModel> gguf);

// The weight formats export_gguf writes: the matrices in `matrices` (F32, F16, BF16, Q8_0, Q4_0;
// under Q4_0 the head in Q8_0, and the embedding as stored, as in megamoe's own checkpoints), norms,
// router and biases in F32 as llama.cpp keeps them.
struct GgufExportOptions {
  DType matrices = DType::F16;
  std::string name;  // general.name ("" : the directory's name)
};
struct GgufExportSummary {
  int64_t tensors = 0, bytes = 0;
  int64_t fallbacks = 0;  // matrices not in q8_0 / q4_0 because their rows are not whole blocks
};
// Writes the V2/V3 checkpoint in `dir` (any format megamoe loads) as a deepseek2 GGUF file, with
// its tokenizer.json as tokenizer.ggml.*, atomically.
GgufExportSummary export_gguf(const std::filesystem::path& dir, const std::filesystem::path& output,
                              const GgufExportOptions& options);

}  // namespace megamoe
