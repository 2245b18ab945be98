#include "model/model.h"

#include "model/deepseek_v3.h"
#include "model/deepseek_v4.h"
#include "model/deepseek_v41.h"
#include "model/gguf_checkpoint.h"
#include "ops/quant.h"
#include "util/error.h"
#include "util/json_file.h"

namespace megamoe {

void SequenceCache::truncate(int64_t length) {
  if (!can_truncate(length)) fail("cannot truncate a cache of {} tokens to {}", length_, length);
  length_ = length;
}

std::unique_ptr<Checkpoint> open_checkpoint(const std::filesystem::path& path, Residency residency) {
  if (path.extension() == ".gguf") return open_gguf_checkpoint(path, residency);
  return Checkpoint::open(path, residency);
}

ModelConfig read_model_config(const std::filesystem::path& path) {
  if (path.extension() == ".gguf")
    return parse_model_config(gguf_model_config(*GgufModel::open(path)), path.string() + " (its metadata)");
  const std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  return parse_model_config(read_json_file(file), file.string());
}

std::unique_ptr<Model> load_model(const std::filesystem::path& path, Residency residency) {
  std::unique_ptr<Checkpoint> checkpoint = open_checkpoint(path, residency);
  ModelConfig config = parse_model_config(checkpoint->config(), checkpoint->config_source());
  switch (config.family) {
    case ModelFamily::DeepseekV2:
    case ModelFamily::DeepseekV3:
      return std::make_unique<DeepseekV3Model>(std::move(checkpoint), std::move(config));
    case ModelFamily::DeepseekV4:
      return std::make_unique<DeepseekV4Model>(std::move(checkpoint), std::move(config));
    case ModelFamily::DeepseekV41:
      return std::make_unique<DeepseekV41Model>(std::move(checkpoint), std::move(config));
  }
  fail("internal error: no model for the family of {}", config.architecture);
}

void for_each_tensor(const ModelConfig& c, const std::function<void(const TensorSpec&)>& visit) {
  if (c.family == ModelFamily::DeepseekV41) {
    V41Weights scratch;
    for_each_tensor(c, &scratch, [&](const TensorSpec& spec, auto*) { visit(spec); });
  } else if (c.family == ModelFamily::DeepseekV4) {
    V4Weights scratch;
    for_each_tensor(c, &scratch, [&](const TensorSpec& spec, auto*) { visit(spec); });
  } else {
    V3Weights scratch;
    for_each_tensor(c, &scratch, [&](const TensorSpec& spec, auto*) { visit(spec); });
  }
}

ScaleLayout scale_layout(ModelFamily family) {
  switch (family) {
    case ModelFamily::DeepseekV4:
      return ScaleLayout::DotScaleE8M0;
    case ModelFamily::DeepseekV41:
      return ScaleLayout::DotScaleE8M0Small;
    default:
      return ScaleLayout::ScaleInvF32;
  }
}

std::optional<DType> block_format(const TensorSpec& spec, std::optional<DType> weight_format) {
  if (!weight_format || spec.shape.size() != 2 || spec.shape[1] % kQuantBlock != 0) return std::nullopt;
  if (spec.role == TensorRole::Linear) return weight_format;
  if (spec.role == TensorRole::Head) return DType::Q8_0;
  return std::nullopt;
}

}  // namespace megamoe
