#include "model/synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "io/checkpoint_writer.h"
#include "model/quantize.h"
#include "model/tensor_spec.h"
#include "model/weight_encoding.h"
#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {
namespace {

// splitmix64: a fast, well-mixed stream; each tensor gets its own from (seed, name) so values do
// not depend on sharding or tensor order.
struct Random {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) * 0x1p-24f * 2.f - 1.f; }  // [-1, 1)
};

Random tensor_random(uint64_t seed, const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ seed;  // FNV-1a over the name
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return Random{h};
}

// Values of one tensor as fp32: uniform with the standard deviation its role wants.
std::vector<float> random_values(const TensorSpec& spec, uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : spec.shape) n *= d;
  std::vector<float> values(n);
  Random random = tensor_random(seed, spec.name);
  const float sqrt3 = std::sqrt(3.f);
  const float fan_in = spec.shape.size() == 2 ? float(spec.shape[1]) : 1.f;
  switch (spec.role) {
    case TensorRole::Norm:  // around 1, so a wrong norm weight shows in the logits
      for (float& v : values) v = 1.f + 0.2f * random.uniform();
      break;
    case TensorRole::RouterBias:  // comparable to score gaps, so the bias changes selections
      for (float& v : values) v = 0.05f * random.uniform();
      break;
    case TensorRole::Parameter:  // biases, scales, sinks: of order one half, so each one matters
      for (float& v : values) v = 0.5f * random.uniform();
      break;
    case TensorRole::HashTable:
      fail("{}: a hash table has no float values", spec.name);
    case TensorRole::Embedding:
    case TensorRole::EngramTable:
      for (float& v : values) v = sqrt3 * random.uniform();
      break;
    case TensorRole::Linear:
    case TensorRole::UnquantizedLinear:
    case TensorRole::HyperMix:
    case TensorRole::RouterGate:
    case TensorRole::Head:  // unit variance outputs for unit variance inputs
      for (float& v : values) v = sqrt3 / std::sqrt(fan_in) * random.uniform();
      break;
  }
  return values;
}

// experts [V, k]: for each token k distinct experts of E.
std::vector<int32_t> random_table(const TensorSpec& spec, int64_t n_experts, uint64_t seed) {
  const int64_t rows = spec.shape[0], k = spec.shape[1];
  std::vector<int32_t> table(rows * k), experts(n_experts);
  Random random = tensor_random(seed, spec.name);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t e = 0; e < n_experts; ++e) experts[e] = int32_t(e);
    for (int64_t j = 0; j < k; ++j) {  // a partial Fisher-Yates shuffle
      std::swap(experts[j], experts[j + int64_t(random.next() % uint64_t(n_experts - j))]);
      table[r * k + j] = experts[j];
    }
  }
  return table;
}

// How synth stores a tensor: as `megamoe quantize` would store it (megamoe's blocks), in the official
// FP8 layout, or BF16 (F32 where the family keeps F32; hash tables as I32, written here).
std::optional<StoredFormat> stored_format(const TensorSpec& spec, const ModelConfig& c, SynthDType dtype) {
  if (const std::optional<DType> block = block_format(spec, c.weight_format))
    return *block == DType::Q8_0 ? StoredFormat::Q8_0 : StoredFormat::Q4_0;
  switch (spec.role) {
    case TensorRole::RouterBias:
    case TensorRole::HyperMix:
    case TensorRole::Parameter:
      return StoredFormat::F32;
    case TensorRole::HashTable:
      return std::nullopt;
    case TensorRole::Linear:
    case TensorRole::EngramTable:
      if (dtype == SynthDType::FP8) return official_fp8_format(spec, c);
      return StoredFormat::BF16;
    default:
      return StoredFormat::BF16;
  }
}

void add_tensor(std::vector<TensorToWrite>* out, const TensorSpec& spec, const ModelConfig& c, SynthDType dtype,
                uint64_t seed) {
  const std::optional<StoredFormat> format = stored_format(spec, c, dtype);
  if (!format) {
    out->push_back({spec.name, DType::I32, spec.shape, [spec, seed, n = c.n_routed_experts](std::byte* dst) {
                      const std::vector<int32_t> table = random_table(spec, n, seed);
                      std::memcpy(dst, table.data(), table.size() * sizeof(int32_t));
                    }});
    return;
  }
  // megamoe's blocks are made from BF16-rounded values, so that they are the tensors `megamoe
  // quantize` makes of the BF16 synth of the same seed.
  const bool via_bf16 = *format == StoredFormat::Q8_0 || *format == StoredFormat::Q4_0;
  add_encoded_tensor(out, spec, *format, Checkpoint::scale_name(spec.name, scale_layout(c.family)), [=] {
    std::vector<float> v = random_values(spec, seed);
    if (via_bf16)
      for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
    return v;
  });
}

}  // namespace

void synth_checkpoint(const std::filesystem::path& output, const nlohmann::json& config_json,
                      const SynthOptions& options) {
  nlohmann::json config = config_json;
  config["torch_dtype"] = "bfloat16";
  config.erase("quantization_config");
  config.erase("expert_dtype");
  if (options.dtype == SynthDType::FP8)
    set_official_fp8_config(&config, parse_model_config(config, "model config").family);
  if (options.dtype == SynthDType::Q8_0 || options.dtype == SynthDType::Q4_0)
    config["quantization_config"] =
        megamoe_quantization_config(options.dtype == SynthDType::Q8_0 ? DType::Q8_0 : DType::Q4_0);
  const ModelConfig model_config = parse_model_config(config, "model config");
  std::vector<TensorToWrite> tensors;
  for_each_tensor(model_config, [&](const TensorSpec& spec) {
    add_tensor(&tensors, spec, model_config, options.dtype, options.seed);
  });
  write_checkpoint(output, config, tensors, options.shards, {}, "synth");
}

}  // namespace megamoe
