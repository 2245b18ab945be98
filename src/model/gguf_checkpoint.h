// GGUF files read as checkpoints (docs/gguf.md): the llama.cpp architectures megamoe runs, each
// mapped in a file of its own (gguf_deepseek2.cpp: DeepSeek-V2/V3/R1, gguf_deepseek4.cpp:
// DeepSeek-V4) onto the config.json and the tensor names its family loads, and what those files
// share.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/checkpoint.h"
#include "io/gguf.h"

namespace megamoe {

// The config.json a GGUF file's metadata stands for; fails naming the file and key, or the
// architecture when megamoe runs no such model.
nlohmann::json gguf_model_config(const GgufModel& model);

// A GGUF file (or the parts of a split one) as a checkpoint of its architecture. Fails naming the
// file and the tensor or key at fault: another architecture, a type megamoe does not compute, a
// shape that disagrees with the metadata.
std::unique_ptr<Checkpoint> open_gguf_checkpoint(const std::filesystem::path& path,
                                                 Residency residency = Residency::Mapped);

// For the architecture files.

// One architecture's metadata keys: integer("block_count") reads "deepseek2.block_count"; a missing
// or mistyped key fails naming the file and the key.
class ArchitectureKeys {
 public:
  ArchitectureKeys(const GgufFile& file, std::string_view architecture)
      : file_(file), prefix_(std::string(architecture) + "."), where_(file.path().string()) {}
  const std::string& where() const { return where_; }  // the file, for messages
  std::string key(std::string_view name) const { return prefix_ + std::string(name); }
  const GgufKeyValue* find(std::string_view name) const { return file_.find_key(key(name)); }
  int64_t integer(std::string_view name) const { return file_.integer(key(name)); }
  std::optional<int64_t> integer_or(std::string_view name) const { return file_.integer_or(key(name)); }
  int64_t integer_or(std::string_view name, int64_t fallback) const { return integer_or(name).value_or(fallback); }
  double number(std::string_view name) const { return file_.number(key(name)); }
  double number_or(std::string_view name, double fallback) const { return find(name) ? number(name) : fallback; }
  std::string string_or(std::string_view name, const std::string& fallback) const {
    return find(name) ? file_.string(key(name)) : fallback;
  }

 private:
  const GgufFile& file_;
  std::string prefix_, where_;
};

// The DType of a ggml type megamoe computes with; nullopt for the others (IQ2_XXS, ...).
std::optional<DType> dtype_of_ggml(uint32_t type);
// "blk.12.attn_q_a.weight" with prefix "blk." -> {12, "attn_q_a.weight"}.
std::optional<std::pair<int64_t, std::string_view>> split_layer(std::string_view name, std::string_view prefix);
// Tensor `t` of `part` under its own name; fails naming it when megamoe does not compute its type.
TensorInfo gguf_tensor_info(const GgufFile& part, const GgufTensor& t);
// The experts stacked [E, rows, cols] in `t` as E views of its bytes, named name_of(e); fails
// naming `t` when it does not hold `experts` of them.
void add_stacked_experts(std::vector<TensorInfo>* out, const GgufFile& part, const GgufTensor& t, int64_t experts,
                         const std::function<std::string(int64_t)>& name_of);

}  // namespace megamoe
