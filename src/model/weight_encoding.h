// How a checkpoint stores a float matrix, and the tensors that encode it: shared by synth, which
// encodes random values, and quantize, which encodes the dequantized weights of a checkpoint.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/tensor_spec.h"

namespace megamoe {

enum class StoredFormat {
  F32,
  BF16,
  Fp8ScaleInv,   // V2/V3: F8_E4M3 + "<name>_scale_inv" F32 per 128x128 block
  Fp8E8M0,       // V4: F8_E4M3 + "X.scale" ue8m0 per 128x128 block
  Fp8E8M0Small,  // V4.1: F8_E4M3 + "X.scale" ue8m0 per 32x32 block
  Fp8RowE8M0,    // V4.1 Engram tables: F8_E4M3 + "X.scale" ue8m0 per row and 32 columns
  Fp4E8M0,       // V4 routed experts: I8 (two e2m1 codes per byte) + "X.scale" ue8m0 per row and 32 inputs
  Q8_0,
  Q4_0,  // megamoe's blocks: U8 [rows, cols/32, 34 | 18]
};

// DeepSeek's official FP8 layout of `spec` in family c: the linear layers FP8 with block scales
// (V2/V3 F32 scale_inv per 128x128, V4 ue8m0 per 128x128, V4.1 ue8m0 per 32x32), V4/V4.1's routed
// experts FP4 e2m1 (FP8 where their columns are not a whole number of 32-blocks), V4.1's Engram
// tables FP8 rows; nullopt for every other tensor (kept in BF16 or F32).
std::optional<StoredFormat> official_fp8_format(const TensorSpec& spec, const ModelConfig& c);

// config.json's quantization_config (and V4's expert_dtype) for the official FP8 layout of `family`.
void set_official_fp8_config(nlohmann::json* config, ModelFamily family);

// Appends the tensor(s) storing `spec` [rows, cols] (or a vector) in `format`: the weight, then its
// scales under `scale_name`. `values()` gives the fp32 values, row-major; it runs once per tensor
// written, when that tensor is written.
void add_encoded_tensor(std::vector<TensorToWrite>* out, const TensorSpec& spec, StoredFormat format,
                        const std::string& scale_name, std::function<std::vector<float>()> values);

}  // namespace megamoe
