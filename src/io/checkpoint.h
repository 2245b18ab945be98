// A Hugging Face model directory: config.json plus one or more safetensors files (sharded through
// model.safetensors.index.json), or the same seen in a GGUF file (from_gguf). Opens every file once
// and hands out shape-checked tensor views by name. Knows nothing of models.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "io/safetensors.h"
#include "ops/weight.h"

namespace megamoe {

// Where a checkpoint keeps the scales of its quantized weights.
enum class ScaleLayout {
  ScaleInvF32,        // DeepSeek-V2/V3: "<name>_scale_inv", F32 multipliers per 128x128 block
  DotScaleE8M0,       // DeepSeek-V4: "X.scale" beside "X.weight", ue8m0; per 128x128 block for F8_E4M3,
                      // per row and 32 inputs for FP4 (I8)
  DotScaleE8M0Small,  // DeepSeek-V4.1: as V4, but per 32x32 block for F8_E4M3
};

class Checkpoint {
 public:
  // Throws Error naming the directory or file at fault (missing config.json, bad index, ...).
  static std::unique_ptr<Checkpoint> open(const std::filesystem::path& dir, Residency residency = Residency::Mapped);
  // A checkpoint whose tensors live in a GGUF model, under the names and with the config.json that
  // model/gguf_checkpoint.h gives them: `tensors` point into `gguf`'s parts or into `owned`.
  static std::unique_ptr<Checkpoint> from_gguf(std::unique_ptr<GgufModel> gguf, nlohmann::json config,
                                               std::vector<TensorInfo> tensors,
                                               std::vector<std::unique_ptr<std::byte[]>> owned);

  const std::filesystem::path& dir() const { return dir_; }  // a GGUF checkpoint: its (first) file
  const nlohmann::json& config() const { return config_; }
  std::string config_source() const;  // for messages: DIR/config.json, or the GGUF file's metadata

  const TensorInfo* find(const std::string& name) const;  // nullptr when absent
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  // The tensor, with one of `dtypes` and exactly `shape`; otherwise an Error naming file and tensor.
  const TensorInfo& require(const std::string& name, std::span<const DType> dtypes,
                            std::span<const int64_t> shape) const;
  // A linear weight [rows, cols] in F32/F16/BF16, or quantized with its scales laid out as `scales` says:
  // F8_E4M3 in square blocks, or (the DotScale layouts) FP4 e2m1 packed in I8 [rows, cols/2].
  // With `block_format` (Q8_0 / Q4_0) also megamoe's U8 tensor of blocks [rows, cols/32, 34 | 18].
  WeightView weight(const std::string& name, int64_t rows, int64_t cols, ScaleLayout scales = ScaleLayout::ScaleInvF32,
                    std::optional<DType> block_format = std::nullopt) const;
  // A vector [n] (norm weights, biases) converted to fp32.
  std::vector<float> vector_f32(const std::string& name, int64_t n) const;
  // Any float tensor of exactly `shape`, converted to fp32 (row-major).
  std::vector<float> values_f32(const std::string& name, std::span<const int64_t> shape) const;
  // An I32 or I64 tensor of exactly `shape` as int32, every value in [0, limit).
  std::vector<int32_t> indices(const std::string& name, std::span<const int64_t> shape, int64_t limit) const;

  std::vector<const TensorInfo*> tensors() const;  // every tensor of every file
  // Where `layout` keeps the scales of the quantized weight `weight_name`.
  static std::string scale_name(const std::string& weight_name, ScaleLayout layout);
  // Every file holding tensors, with its bytes: where a tensor lies in its file is data - bytes.data()
  // (io/checkpoint_reads.h reads them by offset).
  struct StoredFile {
    const std::filesystem::path* path;
    std::span<const std::byte> bytes;
  };
  std::vector<StoredFile> stored_files() const;

 private:
  std::filesystem::path dir_;
  nlohmann::json config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unique_ptr<GgufModel> gguf_;                  // from_gguf: the files
  std::vector<TensorInfo> gguf_tensors_;             // from_gguf: the tensors under their names
  std::vector<std::unique_ptr<std::byte[]>> owned_;  // from_gguf: tensors built at load
  std::map<std::string, const TensorInfo*> by_name_;
  mutable std::vector<std::unique_ptr<std::byte[]>> realigned_;   // copies of misaligned tensors
  mutable std::vector<std::unique_ptr<float[]>> decoded_scales_;  // ue8m0 FP8 block scales as fp32

  // The tensor's bytes aligned to `alignment` (default: its element size), copied when the file has
  // them misaligned.
  const std::byte* aligned_data(const TensorInfo& tensor, size_t alignment = 0) const;
};

}  // namespace megamoe
