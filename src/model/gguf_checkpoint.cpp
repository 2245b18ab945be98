#include "model/gguf_checkpoint.h"

#include <fmt/format.h>
#include <charconv>

#include "model/gguf_deepseek2.h"
#include "model/gguf_deepseek4.h"
#include "util/error.h"

namespace megamoe {
namespace {

std::string architecture_of(const GgufModel& model) {
  const GgufFile& f = model.first();
  return f.find_key("general.architecture") ? f.string("general.architecture") : "";
}

[[noreturn]] void unsupported(const GgufModel& model, const std::string& architecture) {
  fail(
      "{}: general.architecture is '{}'; megamoe reads GGUF files of 'deepseek2' (DeepSeek-V2, V3, R1) and "
      "'deepseek4' (DeepSeek-V4)",
      model.first().path().string(), architecture);
}

}  // namespace

nlohmann::json gguf_model_config(const GgufModel& model) {
  const std::string architecture = architecture_of(model);
  if (architecture == "deepseek2") return deepseek2_config(model);
  if (architecture == "deepseek4") return deepseek4_config(model);
  unsupported(model, architecture);
}

std::unique_ptr<Checkpoint> open_gguf_checkpoint(const std::filesystem::path& path, Residency residency) {
  std::unique_ptr<GgufModel> gguf = GgufModel::open(path, residency);
  const std::string architecture = architecture_of(*gguf);
  if (architecture == "deepseek2") return deepseek2_checkpoint(std::move(gguf));
  if (architecture == "deepseek4") return deepseek4_checkpoint(std::move(gguf));
  unsupported(*gguf, architecture);
}

std::optional<DType> dtype_of_ggml(uint32_t type) {
  static constexpr DType kRead[] = {DType::F32,  DType::F16,    DType::BF16,   DType::Q8_0,  DType::Q4_0, DType::Q4_1,
                                    DType::Q5_0, DType::Q5_1,   DType::Q2_K,   DType::Q3_K,  DType::Q4_K, DType::Q5_K,
                                    DType::Q6_K, DType::IQ4_NL, DType::IQ4_XS, DType::MXFP4, DType::I8,   DType::I16,
                                    DType::I32,  DType::I64,    DType::F64};
  const std::optional<GgmlTypeInfo> info = ggml_type_info(type);
  if (!info) return std::nullopt;
  for (DType d : kRead)
    if (dtype_name(d) == info->name) return d;
  return std::nullopt;
}

std::optional<std::pair<int64_t, std::string_view>> split_layer(std::string_view name, std::string_view prefix) {
  if (!name.starts_with(prefix)) return std::nullopt;
  name.remove_prefix(prefix.size());
  int64_t layer = 0;
  const auto [end, error] = std::from_chars(name.data(), name.data() + name.size(), layer);
  if (error != std::errc() || end == name.data() || end == name.data() + name.size() || *end != '.')
    return std::nullopt;
  return std::pair{layer, name.substr(size_t(end - name.data()) + 1)};
}

TensorInfo gguf_tensor_info(const GgufFile& part, const GgufTensor& t) {
  const std::optional<DType> dtype = dtype_of_ggml(t.type);
  if (!dtype)
    fail("{}: tensor {} is {}, which megamoe does not compute with yet (docs/gguf.md#block-formats)",
         part.path().string(), t.name, ggml_type_info(t.type)->name);
  return TensorInfo{t.name, *dtype, t.shape, t.data, t.nbytes, &part.path(), ""};
}

void add_stacked_experts(std::vector<TensorInfo>* out, const GgufFile& part, const GgufTensor& t, int64_t experts,
                         const std::function<std::string(int64_t)>& name_of) {
  const TensorInfo stacked = gguf_tensor_info(part, t);
  if (t.shape.size() != 3 || t.shape[0] != experts)
    fail("{}: tensor {} has shape {}, expected [{}, rows, cols] ({} experts stacked)", part.path().string(), t.name,
         t.shape_string(), experts, experts);
  const size_t expert_bytes = t.nbytes / size_t(experts);
  for (int64_t e = 0; e < experts; ++e)
    out->push_back(TensorInfo{name_of(e),
                              stacked.dtype,
                              {t.shape[1], t.shape[2]},
                              t.data + size_t(e) * expert_bytes,
                              expert_bytes,
                              &part.path(),
                              fmt::format("{}[{}]", t.name, e)});
}

}  // namespace megamoe
