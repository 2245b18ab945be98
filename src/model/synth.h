// Synthetic checkpoints: random weights in the layout of the config's family (Hugging Face names
// for V2/V3, DeepSeek's native names for V4), scaled so activations stay sane. Tests and
// benchmarks build their models with it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace megamoe {

// BF16: every weight BF16 (F32 where the family keeps F32). FP8: the linear layers FP8 in 128x128
// blocks (V2/V3: F32 "_scale_inv"; V4: ue8m0 ".scale") and, for V4, the routed experts FP4 e2m1
// with a ue8m0 scale per 32 inputs: the official layout. Q8_0 / Q4_0: megamoe's own checkpoint
// (docs/quantization.md), the tensors `megamoe quantize` makes of the BF16 synth of the same seed.
enum class SynthDType { BF16, FP8, Q8_0, Q4_0 };

struct SynthOptions {
  SynthDType dtype = SynthDType::BF16;
  uint64_t seed = 0;
  int shards = 1;  // > 1: model-0000i-of-0000n.safetensors + model.safetensors.index.json
};

// Writes `output` atomically (a complete directory or nothing). `config` is validated first.
void synth_checkpoint(const std::filesystem::path& output, const nlohmann::json& config, const SynthOptions& options);

}  // namespace megamoe
