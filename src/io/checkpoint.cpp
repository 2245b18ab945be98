#include "io/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path.string(), e.what());
  }
}

std::string join_dtype_names(std::span<const DType> dtypes) {
  std::string names;
  for (DType t : dtypes) names += (names.empty() ? "" : " or ") + std::string(dtype_name(t));
  return names;
}

// The file names an index's weight_map points at, each once, and the tensors it expects in each.
std::map<std::string, std::vector<std::string>> read_weight_map(const fs::path& index_path) {
  const json index = read_json(index_path);
  const auto weight_map = index.is_object() ? index.find("weight_map") : index.end();
  if (weight_map == index.end() || !weight_map->is_object()) fail("{}: no \"weight_map\" object", index_path.string());
  std::map<std::string, std::vector<std::string>> tensors_by_file;
  for (const auto& [tensor, file] : weight_map->items()) {
    // Plain names only: the index may not send us outside the checkpoint directory.
    if (!file.is_string() || file.get<std::string>().empty() ||
        fs::path(file.get<std::string>()).filename() != file.get<std::string>() || file == "." || file == "..")
      fail("{}: weight_map entry \"{}\" is not a file name", index_path.string(), tensor);
    tensors_by_file[file.get<std::string>()].push_back(tensor);
  }
  return tensors_by_file;
}

}  // namespace

std::unique_ptr<Checkpoint> Checkpoint::open(const fs::path& dir, Residency residency) {
  if (!fs::is_directory(dir)) fail("checkpoint {}: not a directory", dir.string());
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->dir_ = dir;
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path)) fail("checkpoint {}: no config.json", dir.string());
  checkpoint->config_ = read_json(config_path);
  if (!checkpoint->config_.is_object()) fail("{}: not a JSON object", config_path.string());

  auto& files = checkpoint->files_;
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    for (const auto& [name, expected_tensors] : read_weight_map(index_path)) {
      const fs::path path = dir / name;
      if (!fs::exists(path)) fail("{}: names {}, which does not exist", index_path.string(), path.string());
      files.push_back(SafetensorsFile::open(path, residency));
      for (const std::string& tensor : expected_tensors)
        if (!files.back()->find(tensor))
          fail("{}: tensor \"{}\" is missing, though {} places it there", path.string(), tensor, index_path.string());
    }
  } else {
    std::vector<fs::path> paths;
    for (const fs::directory_entry& entry : fs::directory_iterator(dir))
      if (entry.is_regular_file() && entry.path().extension() == ".safetensors") paths.push_back(entry.path());
    std::sort(paths.begin(), paths.end());
    for (const fs::path& path : paths) files.push_back(SafetensorsFile::open(path, residency));
  }
  if (files.empty()) fail("checkpoint {}: no .safetensors files", dir.string());

  for (const auto& file : files)
    for (const TensorInfo& tensor : file->tensors()) {
      const auto [it, inserted] = checkpoint->by_name_.emplace(tensor.name, &tensor);
      if (!inserted)
        fail("checkpoint {}: tensor \"{}\" is in both {} and {}", dir.string(), tensor.name, it->second->file->string(),
             tensor.file->string());
    }
  return checkpoint;
}

std::unique_ptr<Checkpoint> Checkpoint::from_gguf(std::unique_ptr<GgufModel> gguf, json config,
                                                  std::vector<TensorInfo> tensors,
                                                  std::vector<std::unique_ptr<std::byte[]>> owned) {
  auto checkpoint = std::make_unique<Checkpoint>();
  checkpoint->dir_ = gguf->first().path();
  checkpoint->config_ = std::move(config);
  checkpoint->gguf_ = std::move(gguf);
  checkpoint->gguf_tensors_ = std::move(tensors);
  checkpoint->owned_ = std::move(owned);
  for (const TensorInfo& tensor : checkpoint->gguf_tensors_)
    if (!checkpoint->by_name_.emplace(tensor.name, &tensor).second)
      fail("{}: two tensors are read as {}", checkpoint->dir_.string(), tensor.label());
  return checkpoint;
}

std::string Checkpoint::config_source() const {
  return gguf_ ? dir_.string() + " (its metadata)" : (dir_ / "config.json").string();
}

std::vector<Checkpoint::StoredFile> Checkpoint::stored_files() const {
  std::vector<StoredFile> stored;
  for (const auto& file : files_) stored.push_back({&file->path(), file->bytes()});
  if (gguf_)
    for (const auto& part : gguf_->parts()) stored.push_back({&part->path(), part->bytes()});
  return stored;
}

const TensorInfo* Checkpoint::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorInfo& Checkpoint::require(const std::string& name, std::span<const DType> dtypes,
                                      std::span<const int64_t> shape) const {
  const TensorInfo* tensor = find(name);
  if (!tensor) fail("checkpoint {}: missing tensor {}", dir_.string(), name);
  if (std::find(dtypes.begin(), dtypes.end(), tensor->dtype) == dtypes.end())
    fail("{}: tensor {} has dtype {}, expected {}", tensor->file->string(), tensor->label(), dtype_name(tensor->dtype),
         join_dtype_names(dtypes));
  if (!std::ranges::equal(tensor->shape, shape))
    fail("{}: tensor {} has shape {}, expected [{}]", tensor->file->string(), tensor->label(), tensor->shape_string(),
         fmt::join(shape, ", "));
  return *tensor;
}

const std::byte* Checkpoint::aligned_data(const TensorInfo& tensor, size_t alignment) const {
  if (reinterpret_cast<uintptr_t>(tensor.data) % (alignment ? alignment : dtype_size(tensor.dtype)) == 0)
    return tensor.data;
  // safetensors does not align tensors; kernels read them as typed arrays, so the rare misaligned
  // one is copied once into storage of its own.
  auto copy = std::make_unique<std::byte[]>(tensor.nbytes + 64);
  std::byte* aligned = copy.get() + (64 - reinterpret_cast<uintptr_t>(copy.get()) % 64) % 64;
  std::memcpy(aligned, tensor.data, tensor.nbytes);
  realigned_.push_back(std::move(copy));
  return aligned;
}

WeightView Checkpoint::weight(const std::string& name, int64_t rows, int64_t cols, ScaleLayout scales,
                              std::optional<DType> block_format) const {
  const bool dot_scale = scales != ScaleLayout::ScaleInvF32;
  const int64_t fp8_block = scales == ScaleLayout::DotScaleE8M0Small ? kFp8SmallBlockSize : kFp8BlockSize;
  const std::string scale_tensor = Checkpoint::scale_name(name, scales);
  const TensorInfo* found = find(name);
  if (block_format && found && found->dtype == DType::U8) {
    // megamoe's q8_0 / q4_0: rows of llama.cpp blocks, each its fp16 scale then its codes.
    const int64_t block_bytes = int64_t(dtype_size(*block_format));
    const std::vector<int64_t> shape{rows, cols / kQuantBlock, block_bytes};
    if (cols % kQuantBlock != 0 || found->shape != shape)
      fail("{}: tensor {} has shape {}, expected [{}, {}, {}] ({} blocks of a [{}, {}] weight)", found->file->string(),
           name, found->shape_string(), rows, cols / kQuantBlock, block_bytes, dtype_name(*block_format), rows, cols);
    return WeightView{
        .dtype = *block_format, .rows = rows, .cols = cols, .data = aligned_data(*found, alignof(BlockQ8_0))};
  }
  if (found && dtype_block_size(found->dtype) > 1 && found->dtype != DType::F4_E2M1) {
    // A GGUF tensor in one of llama.cpp's block formats: [rows, cols] of whole blocks per row.
    const int64_t block = dtype_block_size(found->dtype);
    if (cols % block != 0)
      fail("{}: tensor {} is {} in blocks of {} values, which its rows of {} do not fill", found->file->string(),
           found->label(), dtype_name(found->dtype), block, cols);
    const int64_t shape[] = {rows, cols};
    const TensorInfo& tensor = require(name, std::span<const DType>(&found->dtype, 1), shape);
    return WeightView{.dtype = tensor.dtype, .rows = rows, .cols = cols, .data = aligned_data(tensor, 2)};
  }
  if (dot_scale && found && found->dtype == DType::I8) {
    // FP4 e2m1: two codes per byte, one ue8m0 exponent per row and 32 inputs.
    static constexpr DType kPacked[] = {DType::I8}, kScales[] = {DType::F8_E8M0};
    if (cols % kQuantBlock)
      fail("{}: FP4 tensor {} needs a multiple of {} inputs, got {}", found->file->string(), name, kQuantBlock, cols);
    const int64_t packed_shape[] = {rows, cols / 2}, scale_shape[] = {rows, cols / kQuantBlock};
    const TensorInfo& packed = require(name, kPacked, packed_shape);
    const TensorInfo& scale = require(scale_tensor, kScales, scale_shape);
    return WeightView{.dtype = DType::F4_E2M1,
                      .rows = rows,
                      .cols = cols,
                      .data = packed.data,
                      .scale_e8m0 = reinterpret_cast<const uint8_t*>(scale.data)};
  }
  static constexpr DType kWeightDTypes[] = {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3};
  const int64_t shape[] = {rows, cols};
  const TensorInfo& tensor = require(name, kWeightDTypes, shape);
  WeightView view{.dtype = tensor.dtype,
                  .rows = rows,
                  .cols = cols,
                  .data = aligned_data(tensor),
                  .scale_inv = nullptr,
                  .scale_block = fp8_block};
  if (tensor.dtype == DType::F8_E4M3) {
    static constexpr DType kScaleInv[] = {DType::F32}, kE8M0[] = {DType::F8_E8M0};
    const int64_t scale_shape[] = {view.scale_rows(), view.scale_cols()};
    const TensorInfo& scale = require(scale_tensor, dot_scale ? std::span<const DType>(kE8M0) : kScaleInv, scale_shape);
    if (dot_scale) {
      // The kernels take fp32 block multipliers: decode the exponents once (1/16384 of the weight).
      const size_t n = scale.nbytes;
      decoded_scales_.push_back(std::make_unique<float[]>(n));
      for (size_t i = 0; i < n; ++i) decoded_scales_.back()[i] = e8m0_to_f32(uint8_t(scale.data[i]));
      view.scale_inv = decoded_scales_.back().get();
    } else {
      view.scale_inv = reinterpret_cast<const float*>(aligned_data(scale));
    }
  }
  return view;
}

std::vector<float> Checkpoint::vector_f32(const std::string& name, int64_t n) const {
  const int64_t shape[] = {n};
  return values_f32(name, shape);
}

std::vector<float> Checkpoint::values_f32(const std::string& name, std::span<const int64_t> shape) const {
  static constexpr DType kVectorDTypes[] = {DType::F32, DType::F16, DType::BF16};
  const TensorInfo& tensor = require(name, kVectorDTypes, shape);
  std::vector<float> values(static_cast<size_t>(tensor.numel()));
  for (size_t i = 0; i < values.size(); ++i) {
    // memcpy: the file does not promise alignment.
    if (tensor.dtype == DType::F32) {
      std::memcpy(&values[i], tensor.data + 4 * i, 4);
    } else {
      uint16_t bits;
      std::memcpy(&bits, tensor.data + 2 * i, 2);
      values[i] = tensor.dtype == DType::F16 ? f16_to_f32(bits) : bf16_to_f32(bits);
    }
  }
  return values;
}

std::vector<int32_t> Checkpoint::indices(const std::string& name, std::span<const int64_t> shape, int64_t limit) const {
  static constexpr DType kIndexDTypes[] = {DType::I32, DType::I64};
  const TensorInfo& tensor = require(name, kIndexDTypes, shape);
  std::vector<int32_t> values(static_cast<size_t>(tensor.numel()));
  for (size_t i = 0; i < values.size(); ++i) {
    int64_t v;
    if (tensor.dtype == DType::I32) {
      int32_t v32;
      std::memcpy(&v32, tensor.data + 4 * i, 4);
      v = v32;
    } else {
      std::memcpy(&v, tensor.data + 8 * i, 8);
    }
    if (v < 0 || v >= limit)
      fail("{}: tensor {} holds {} at index {}, outside [0, {})", tensor.file->string(), name, v, i, limit);
    values[i] = int32_t(v);
  }
  return values;
}

std::string Checkpoint::scale_name(const std::string& weight_name, ScaleLayout layout) {
  if (layout == ScaleLayout::ScaleInvF32) return weight_name + "_scale_inv";
  return (weight_name.ends_with(".weight") ? weight_name.substr(0, weight_name.size() - 7) : weight_name) + ".scale";
}

std::vector<const TensorInfo*> Checkpoint::tensors() const {
  std::vector<const TensorInfo*> all;
  for (const TensorInfo& tensor : gguf_tensors_) all.push_back(&tensor);
  for (const auto& file : files_)
    for (const TensorInfo& tensor : file->tensors()) all.push_back(&tensor);
  return all;
}

}  // namespace megamoe
