#include "model/weight_encoding.h"

#include <cmath>
#include <cstring>

#include "io/checkpoint_writer.h"
#include "ops/quant.h"

namespace megamoe {

namespace {

uint8_t e8m0_of_power_of_two(float scale) { return uint8_t(std::ilogb(scale) + 127); }

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

std::optional<StoredFormat> official_fp8_format(const TensorSpec& spec, const ModelConfig& c) {
  if (spec.role == TensorRole::EngramTable) return StoredFormat::Fp8RowE8M0;
  if (spec.role != TensorRole::Linear) return std::nullopt;
  if (!c.is_v4_like()) return StoredFormat::Fp8ScaleInv;
  if (spec.expert >= 0 && spec.shape[1] % kQuantBlock == 0) return StoredFormat::Fp4E8M0;
  return c.family == ModelFamily::DeepseekV41 ? StoredFormat::Fp8E8M0Small : StoredFormat::Fp8E8M0;
}

void set_official_fp8_config(nlohmann::json* config, ModelFamily family) {
  if (family == ModelFamily::DeepseekV41) {  // 32x32 ue8m0 blocks, FP4 experts
    (*config)["quantization_config"] = {{"quant_method", "fp8"},
                                        {"activation_scheme", "dynamic"},
                                        {"weight_block_size", {32, 32}},
                                        {"scale_fmt", "ue8m0"},
                                        {"expert_dtype", "fp4"}};
    return;
  }
  (*config)["quantization_config"] = {
      {"quant_method", "fp8"}, {"fmt", "e4m3"}, {"activation_scheme", "dynamic"}, {"weight_block_size", {128, 128}}};
  if (family == ModelFamily::DeepseekV4) {  // ue8m0 scales, FP4 experts
    (*config)["quantization_config"]["scale_fmt"] = "ue8m0";
    (*config)["expert_dtype"] = "fp4";
  }
}

void add_encoded_tensor(std::vector<TensorToWrite>* out, const TensorSpec& spec, StoredFormat format,
                        const std::string& scale_name, std::function<std::vector<float>()> values) {
  const std::vector<int64_t>& shape = spec.shape;
  switch (format) {
    case StoredFormat::F32:
      out->push_back({spec.name, DType::F32, shape, [values](std::byte* dst) {
                        const std::vector<float> v = values();
                        std::memcpy(dst, v.data(), v.size() * sizeof(float));
                      }});
      return;
    case StoredFormat::BF16:
      out->push_back({spec.name, DType::BF16, shape, [values](std::byte* dst) {
                        const std::vector<float> v = values();
                        uint16_t* bf16 = reinterpret_cast<uint16_t*>(dst);
                        for (size_t i = 0; i < v.size(); ++i) bf16[i] = f32_to_bf16(v[i]);
                      }});
      return;
    case StoredFormat::Fp8ScaleInv:
    case StoredFormat::Fp8E8M0:
    case StoredFormat::Fp8E8M0Small:
    case StoredFormat::Fp8RowE8M0: {
      const bool e8m0 = format != StoredFormat::Fp8ScaleInv;
      const int64_t rows = shape[0], cols = shape[1];
      // Fp8RowE8M0's blocks of 1 x 32 are the 32 x 32 blocks of each row taken alone.
      const bool by_row = format == StoredFormat::Fp8RowE8M0;
      const int64_t B = format == StoredFormat::Fp8E8M0Small || by_row ? kFp8SmallBlockSize : kFp8BlockSize;
      const std::vector<int64_t> scale_shape{by_row ? rows : (rows + B - 1) / B, (cols + B - 1) / B};
      const auto quantize = [=](uint8_t* q, float* scales, const float* w) {
        if (!by_row) return quantize_fp8_blocks(q, scales, w, rows, cols, e8m0, B);
        for (int64_t r = 0; r < rows; ++r)
          quantize_fp8_blocks(q + r * cols, scales + r * scale_shape[1], w + r * cols, 1, cols, e8m0, B);
      };
      // Both tensors come from the same matrix, quantized once for each.
      out->push_back({spec.name, DType::F8_E4M3, shape, [=](std::byte* dst) {
                        std::vector<float> scales(size_t(element_count(scale_shape)));
                        quantize(reinterpret_cast<uint8_t*>(dst), scales.data(), values().data());
                      }});
      out->push_back({scale_name, e8m0 ? DType::F8_E8M0 : DType::F32, scale_shape, [=](std::byte* dst) {
                        std::vector<uint8_t> q(size_t(rows * cols));
                        std::vector<float> scales(size_t(element_count(scale_shape)));
                        quantize(q.data(), scales.data(), values().data());
                        for (size_t i = 0; i < scales.size(); ++i) {
                          if (e8m0) reinterpret_cast<uint8_t*>(dst)[i] = e8m0_of_power_of_two(scales[i]);
                          else reinterpret_cast<float*>(dst)[i] = scales[i];
                        }
                      }});
      return;
    }
    case StoredFormat::Q8_0:
    case StoredFormat::Q4_0: {
      const DType block = format == StoredFormat::Q8_0 ? DType::Q8_0 : DType::Q4_0;
      const int64_t rows = shape[0], cols = shape[1];
      out->push_back({spec.name, DType::U8, block_tensor_shape(block, rows, cols), [=](std::byte* dst) {
                        const OwnedWeight q = quantize_weight(block, values().data(), rows, cols);
                        std::memcpy(dst, q.data.data(), q.data.size());
                      }});
      return;
    }
    case StoredFormat::Fp4E8M0: {
      const int64_t rows = shape[0], cols = shape[1];
      out->push_back({spec.name, DType::I8, {rows, cols / 2}, [=](std::byte* dst) {
                        const std::vector<float> v = values();
#pragma omp parallel
                        {
                          std::vector<uint8_t> scales(size_t(cols / kQuantBlock));
#pragma omp for schedule(static)
                          for (int64_t r = 0; r < rows; ++r)
                            quantize_row_fp4(reinterpret_cast<uint8_t*>(dst) + r * cols / 2, scales.data(),
                                             v.data() + r * cols, cols);
                        }
                      }});
      out->push_back({scale_name, DType::F8_E8M0, {rows, cols / kQuantBlock}, [=](std::byte* dst) {
                        const std::vector<float> v = values();
#pragma omp parallel
                        {
                          std::vector<uint8_t> packed(size_t(cols / 2));
#pragma omp for schedule(static)
                          for (int64_t r = 0; r < rows; ++r)
                            quantize_row_fp4(packed.data(), reinterpret_cast<uint8_t*>(dst) + r * cols / kQuantBlock,
                                             v.data() + r * cols, cols);
                        }
                      }});
      return;
    }
  }
}

}  // namespace megamoe
