#include "train/parameters.h"

#include <fmt/ranges.h>
#include <cstring>

#include "io/checkpoint.h"
#include "ops/matmul.h"
#include "util/error.h"
#include "util/random.h"

namespace megamoe::train {

void check_trainable(const ModelConfig& c) {
  if (c.is_v4_like())
    fail("'architectures': {} cannot be trained (megamoe trains DeepseekV2ForCausalLM and DeepseekV3ForCausalLM)",
         c.architecture);
  if (c.fp8_weights)
    fail(
        "'quantization_config': training keeps fp32 weights and saves F32 or BF16; remove the FP8 "
        "quantization_config from the model config");
}

ParameterLayout ParameterLayout::make(const ModelConfig& c) {
  check_trainable(c);

  // Lay the tensors out in list order; the list's visit writes each place into the weight struct.
  ParameterLayout layout;
  for_each_tensor(c, &layout, [&](const TensorSpec& spec, ParamTensor* slot) {
    *slot = ParamTensor{layout.size, spec.shape[0], spec.shape.size() == 2 ? spec.shape[1] : 1};
    layout.tensors.push_back(spec);
    layout.places.push_back(*slot);
    layout.size += slot->size();
    // Training multiplies by [gate; up] as one matrix (train/layers.h): up must follow its gate.
    const std::string_view name = spec.name, up = ".up_proj.weight";
    if (name.ends_with(up) &&
        layout.tensors.end()[-2].name != fmt::format("{}.gate_proj.weight", name.substr(0, name.size() - up.size())))
      fail("internal error: {} does not follow its gate_proj in the tensor list", spec.name);
  });
  return layout;
}

void initialize_parameters(float* values, const ParameterLayout& layout, uint64_t seed, double std) {
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const TensorSpec& spec = layout.tensors[i];
    float* v = values + layout.places[i].offset;
    const int64_t n = layout.places[i].size();
    if (spec.role == TensorRole::Norm) {
      std::fill_n(v, n, 1.f);
    } else if (spec.role == TensorRole::RouterBias) {
      std::fill_n(v, n, 0.f);
    } else {
      Random random = Random::for_name(seed, spec.name);
      for (int64_t j = 0; j < n; ++j) v[j] = float(std * random.normal());
    }
  }
}

void load_parameters(float* values, const ParameterLayout& layout, const std::filesystem::path& model_dir) {
  const std::unique_ptr<Checkpoint> checkpoint = Checkpoint::open(model_dir);
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const TensorSpec& spec = layout.tensors[i];
    const ParamTensor& place = layout.places[i];
    float* v = values + place.offset;
    if (spec.shape.size() == 1) {
      const std::vector<float> vector = checkpoint->vector_f32(spec.name, place.rows);
      std::copy(vector.begin(), vector.end(), v);
      continue;
    }
    const WeightView w = checkpoint->weight(spec.name, place.rows, place.cols);
    for (int64_t r = 0; r < place.rows; ++r) dequantize_row(v + r * place.cols, w, r);
  }
}

std::vector<TensorToWrite> parameter_tensors(const float* values, const ParameterLayout& layout, SavedDType dtype,
                                             const std::string& name_suffix) {
  std::vector<TensorToWrite> out;
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const TensorSpec& spec = layout.tensors[i];
    const float* v = values + layout.places[i].offset;
    const int64_t n = layout.places[i].size();
    if (dtype == SavedDType::F32 || spec.role == TensorRole::RouterBias) {
      out.push_back({spec.name + name_suffix, DType::F32, spec.shape,
                     [v, n](std::byte* dst) { std::memcpy(dst, v, size_t(n) * sizeof(float)); }});
    } else {
      out.push_back({spec.name + name_suffix, DType::BF16, spec.shape, [v, n](std::byte* dst) {
                       auto* bf16 = reinterpret_cast<uint16_t*>(dst);
                       for (int64_t j = 0; j < n; ++j) bf16[j] = f32_to_bf16(v[j]);
                     }});
    }
  }
  return out;
}

void read_parameter_tensors(float* values, const ParameterLayout& layout, const SafetensorsFile& file,
                            const std::string& name_suffix) {
  for (size_t i = 0; i < layout.tensors.size(); ++i) {
    const TensorSpec& spec = layout.tensors[i];
    const std::string name = spec.name + name_suffix;
    const TensorInfo* info = file.find(name);
    if (!info) fail("{}: missing tensor '{}'", file.path().string(), name);
    if (info->shape != spec.shape)
      fail("{}: tensor '{}' has shape {}, the model needs {}", file.path().string(), name, info->shape_string(),
           fmt::format("[{}]", fmt::join(spec.shape, ", ")));
    float* v = values + layout.places[i].offset;
    const int64_t n = layout.places[i].size();
    if (info->dtype == DType::F32) {
      std::memcpy(v, info->data, size_t(n) * sizeof(float));
    } else if (info->dtype == DType::BF16) {
      const auto* bf16 = reinterpret_cast<const uint16_t*>(info->data);
      for (int64_t j = 0; j < n; ++j) v[j] = bf16_to_f32(bf16[j]);
    } else {
      fail("{}: tensor '{}' is {}, expected F32 or BF16", file.path().string(), name, dtype_name(info->dtype));
    }
  }
}

}  // namespace megamoe::train
