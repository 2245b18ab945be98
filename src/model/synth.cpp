#include "model/synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "io/checkpoint_writer.h"
#include "model/quantize.h"
#include "model/tensor_spec.h"
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

uint8_t e8m0_of_power_of_two(float scale) { return uint8_t(std::ilogb(scale) + 127); }

// How synth stores a tensor.
enum class Format {
  F32, I32, BF16,
  Fp8ScaleInv,  // V2/V3: F8_E4M3 + "<name>_scale_inv" F32
  Fp8E8M0,      // V4: F8_E4M3 + "X.scale" ue8m0 per 128x128 block
  Fp4E8M0,      // V4 routed experts: I8 (two e2m1 codes per byte) + "X.scale" ue8m0 per row and 32 inputs
  Q8_0, Q4_0,   // megamoe's blocks: U8 [rows, cols/32, 34 | 18]
};

Format stored_format(const TensorSpec& spec, const ModelConfig& c, SynthDType dtype) {
  if (const std::optional<DType> block = block_format(spec, c.weight_format))
    return *block == DType::Q8_0 ? Format::Q8_0 : Format::Q4_0;
  switch (spec.role) {
    case TensorRole::RouterBias:
    case TensorRole::HyperMix:
    case TensorRole::Parameter: return Format::F32;
    case TensorRole::HashTable: return Format::I32;
    case TensorRole::Linear:
      if (dtype != SynthDType::FP8) return Format::BF16;
      if (c.family != ModelFamily::DeepseekV4) return Format::Fp8ScaleInv;
      return spec.expert >= 0 ? Format::Fp4E8M0 : Format::Fp8E8M0;
    default: return Format::BF16;
  }
}

// Writes `format`'s tensor(s) for `spec`: the weight, and for the quantized formats its scales.
void add_tensor(std::vector<TensorToWrite>* out, const TensorSpec& spec, Format format, const ModelConfig& c,
                uint64_t seed) {
  const std::vector<int64_t>& shape = spec.shape;
  const std::string scale_name = Checkpoint::scale_name(spec.name, scale_layout(c.family));
  switch (format) {
    case Format::F32:
      out->push_back({spec.name, DType::F32, shape, [spec, seed](std::byte* dst) {
                        const std::vector<float> v = random_values(spec, seed);
                        std::memcpy(dst, v.data(), v.size() * sizeof(float));
                      }});
      return;
    case Format::I32:
      out->push_back({spec.name, DType::I32, shape, [spec, seed, n = c.n_routed_experts](std::byte* dst) {
                        const std::vector<int32_t> table = random_table(spec, n, seed);
                        std::memcpy(dst, table.data(), table.size() * sizeof(int32_t));
                      }});
      return;
    case Format::BF16:
      out->push_back({spec.name, DType::BF16, shape, [spec, seed](std::byte* dst) {
                        const std::vector<float> v = random_values(spec, seed);
                        uint16_t* bf16 = reinterpret_cast<uint16_t*>(dst);
                        for (size_t i = 0; i < v.size(); ++i) bf16[i] = f32_to_bf16(v[i]);
                      }});
      return;
    case Format::Fp8ScaleInv:
    case Format::Fp8E8M0: {
      const bool e8m0 = format == Format::Fp8E8M0;
      const std::vector<int64_t> scale_shape{(shape[0] + kFp8BlockSize - 1) / kFp8BlockSize,
                                             (shape[1] + kFp8BlockSize - 1) / kFp8BlockSize};
      // Both tensors come from the same random matrix, quantized once for each.
      out->push_back({spec.name, DType::F8_E4M3, shape, [spec, seed, scale_shape, e8m0](std::byte* dst) {
                        std::vector<float> scales(scale_shape[0] * scale_shape[1]);
                        quantize_fp8_blocks(reinterpret_cast<uint8_t*>(dst), scales.data(),
                                            random_values(spec, seed).data(), spec.shape[0], spec.shape[1], e8m0);
                      }});
      out->push_back({scale_name, e8m0 ? DType::F8_E8M0 : DType::F32, scale_shape,
                      [spec, seed, e8m0](std::byte* dst) {
                        std::vector<uint8_t> q(spec.shape[0] * spec.shape[1]);
                        std::vector<float> scales((spec.shape[0] + kFp8BlockSize - 1) / kFp8BlockSize *
                                                  ((spec.shape[1] + kFp8BlockSize - 1) / kFp8BlockSize));
                        quantize_fp8_blocks(q.data(), scales.data(), random_values(spec, seed).data(), spec.shape[0],
                                            spec.shape[1], e8m0);
                        for (size_t i = 0; i < scales.size(); ++i) {
                          if (e8m0) reinterpret_cast<uint8_t*>(dst)[i] = e8m0_of_power_of_two(scales[i]);
                          else reinterpret_cast<float*>(dst)[i] = scales[i];
                        }
                      }});
      return;
    }
    case Format::Q8_0:
    case Format::Q4_0: {
      const DType block = format == Format::Q8_0 ? DType::Q8_0 : DType::Q4_0;
      out->push_back({spec.name, DType::U8, block_tensor_shape(block, shape[0], shape[1]),
                      [spec, seed, block](std::byte* dst) {
                        // Rounded to BF16 first, so the tensor is the one `megamoe quantize` makes of
                        // the BF16 synth of the same seed.
                        std::vector<float> v = random_values(spec, seed);
                        for (float& x : v) x = bf16_to_f32(f32_to_bf16(x));
                        const OwnedWeight q = quantize_weight(block, v.data(), spec.shape[0], spec.shape[1]);
                        std::memcpy(dst, q.data.data(), q.data.size());
                      }});
      return;
    }
    case Format::Fp4E8M0: {
      const int64_t rows = shape[0], cols = shape[1];
      out->push_back({spec.name, DType::I8, {rows, cols / 2}, [spec, seed](std::byte* dst) {
                        const std::vector<float> v = random_values(spec, seed);
                        const int64_t cols = spec.shape[1];
                        std::vector<uint8_t> scales(cols / kQuantBlock);
                        for (int64_t r = 0; r < spec.shape[0]; ++r)
                          quantize_row_fp4(reinterpret_cast<uint8_t*>(dst) + r * cols / 2, scales.data(),
                                           v.data() + r * cols, cols);
                      }});
      out->push_back({scale_name, DType::F8_E8M0, {rows, cols / kQuantBlock}, [spec, seed](std::byte* dst) {
                        const std::vector<float> v = random_values(spec, seed);
                        const int64_t cols = spec.shape[1];
                        std::vector<uint8_t> packed(cols / 2);
                        for (int64_t r = 0; r < spec.shape[0]; ++r)
                          quantize_row_fp4(packed.data(), reinterpret_cast<uint8_t*>(dst) + r * cols / kQuantBlock,
                                           v.data() + r * cols, cols);
                      }});
      return;
    }
  }
}

}  // namespace

void synth_checkpoint(const std::filesystem::path& output, const nlohmann::json& config_json,
                      const SynthOptions& options) {
  nlohmann::json config = config_json;
  config["torch_dtype"] = "bfloat16";
  config.erase("quantization_config");
  if (options.dtype == SynthDType::FP8)
    config["quantization_config"] = {{"quant_method", "fp8"},
                                     {"fmt", "e4m3"},
                                     {"activation_scheme", "dynamic"},
                                     {"weight_block_size", {128, 128}}};
  if (options.dtype == SynthDType::Q8_0 || options.dtype == SynthDType::Q4_0)
    config["quantization_config"] = megamoe_quantization_config(options.dtype == SynthDType::Q8_0 ? DType::Q8_0
                                                                                                   : DType::Q4_0);
  const ModelConfig model_config = parse_model_config(config, "model config");
  if (model_config.family == ModelFamily::DeepseekV4) {  // FP8 is V4's official layout: ue8m0 scales, FP4 experts
    if (options.dtype == SynthDType::FP8) {
      config["quantization_config"]["scale_fmt"] = "ue8m0";
      config["expert_dtype"] = "fp4";
    } else {
      config.erase("expert_dtype");
    }
  }
  std::vector<TensorToWrite> tensors;
  for_each_tensor(model_config, [&](const TensorSpec& spec) {
    add_tensor(&tensors, spec, stored_format(spec, model_config, options.dtype), model_config, options.seed);
  });
  write_checkpoint(output, config, tensors, options.shards);
}

}  // namespace megamoe
