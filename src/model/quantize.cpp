#include "model/quantize.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>

#include "io/checkpoint.h"
#include "io/checkpoint_writer.h"
#include "model/gguf_tokenizer.h"
#include "model/model.h"
#include "model/tensor_spec.h"
#include "model/weight_encoding.h"
#include "ops/matmul.h"
#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {
namespace fs = std::filesystem;

namespace {

// Hands a converted tensor's pages of the (read-only, memory-mapped) input back to the kernel, so the
// process holds about one tensor of a model larger than memory, not all it has read.
void release_pages(const TensorInfo* tensor) {
  if (!tensor || tensor->nbytes == 0) return;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(tensor->data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(tensor->data) + tensor->nbytes) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

// out = w [rows, cols] in `format`: Q8_0 / Q4_0 blocks [rows, cols/32, 34 | 18] or BF16 [rows, cols],
// a row at a time (a whole embedding in fp32 would be gigabytes).
void convert_rows(std::byte* out, const WeightView& w, DType format) {
  const int64_t out_row_bytes = format == DType::BF16 ? 2 * w.cols : w.cols / kQuantBlock * int64_t(dtype_size(format));
#pragma omp parallel
  {
    std::vector<float> row(size_t(w.cols));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < w.rows; ++r) {
      dequantize_row(row.data(), w, r);
      uint8_t* dst = reinterpret_cast<uint8_t*>(out + r * out_row_bytes);
      if (format != DType::BF16) {
        encode_row(dst, format, row.data(), w.cols);
        continue;
      }
      for (int64_t j = 0; j < w.cols; ++j) {
        const uint16_t bits = f32_to_bf16(row[size_t(j)]);
        std::memcpy(dst + 2 * j, &bits, 2);
      }
    }
  }
}

// w as fp32 [rows, cols] (the official FP8 layout quantizes whole 128x128 blocks).
std::vector<float> dequantize_matrix(const WeightView& w) {
  std::vector<float> values(size_t(w.rows * w.cols));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < w.rows; ++r) dequantize_row(values.data() + r * w.cols, w, r);
  return values;
}

bool is_matrix_role(TensorRole role) {
  switch (role) {
    case TensorRole::Norm:
    case TensorRole::RouterBias:
    case TensorRole::Parameter:
    case TensorRole::HashTable:
      return false;
    default:
      return true;
  }
}

TensorToWrite copy_as_is(const TensorInfo* tensor) {
  return {tensor->name, tensor->dtype, tensor->shape, [tensor](std::byte* dst) {
            std::memcpy(dst, tensor->data, tensor->nbytes);
            release_pages(tensor);
          }};
}

int64_t tensor_bytes(const TensorToWrite& t) {
  int64_t n = int64_t(dtype_size(t.dtype));
  for (int64_t d : t.shape) n *= d;
  return n;
}

}  // namespace

nlohmann::json megamoe_quantization_config(DType weight_format) {
  if (weight_format != DType::Q8_0 && weight_format != DType::Q4_0)
    fail("megamoe checkpoints store Q8_0 or Q4_0 weights, not {}", dtype_name(weight_format));
  return {{"quant_method", "megamoe"}, {"weight_format", weight_format == DType::Q8_0 ? "q8_0" : "q4_0"}};
}

QuantizeSummary quantize_checkpoint(const fs::path& input, const fs::path& output, const QuantizeOptions& options) {
  const bool official_fp8 = options.weight_format == DType::F8_E4M3;
  const nlohmann::json quantization =
      official_fp8 ? nlohmann::json() : megamoe_quantization_config(options.weight_format);
  if (fs::exists(output)) fail("{}: already exists (quantize writes a new directory)", output.string());
  const bool gguf = input.extension() == ".gguf";
  const std::unique_ptr<Checkpoint> checkpoint = open_checkpoint(input);
  const Checkpoint& ckpt = *checkpoint;
  const ModelConfig c = parse_model_config(ckpt.config(), ckpt.config_source());
  const ScaleLayout layout = scale_layout(c.family);

  // Every tensor is checked (dtype, shape, scales) here, before anything is written.
  QuantizeSummary summary;
  std::vector<TensorToWrite> tensors;
  std::set<std::string> listed;
  for_each_tensor(c, [&](const TensorSpec& spec) {
    const std::string scale = Checkpoint::scale_name(spec.name, layout);
    listed.insert(spec.name);
    listed.insert(scale);
    if (!is_matrix_role(spec.role)) {
      static constexpr DType kPlain[] = {DType::F32, DType::F16, DType::BF16, DType::I32, DType::I64};
      tensors.push_back(copy_as_is(&ckpt.require(spec.name, kPlain, spec.shape)));
      ++summary.kept_tensors;
      return;
    }
    if (spec.role == TensorRole::EngramTable) {
      // Read a few rows per token, not multiplied: F8 rows stay as they are in every format (their
      // scales are per row, not per block); a float table becomes F8 rows only for --dtype fp8.
      static constexpr DType kTable[] = {DType::F8_E4M3, DType::BF16, DType::F32};
      const TensorInfo& table = ckpt.require(spec.name, kTable, spec.shape);
      if (table.dtype == DType::F8_E4M3 || !official_fp8) {
        tensors.push_back(copy_as_is(&table));
        if (table.dtype == DType::F8_E4M3) {
          static constexpr DType kScale[] = {DType::F8_E8M0};
          const int64_t scale_shape[] = {spec.shape[0], spec.shape[1] / kQuantBlock};
          tensors.push_back(copy_as_is(&ckpt.require(scale, kScale, scale_shape)));
        }
        ++summary.kept_tensors;
        return;
      }
    }
    const WeightView w =
        ckpt.weight(spec.name, spec.shape[0], spec.shape[1], layout, block_format(spec, c.weight_format));
    if (official_fp8) {
      if (const std::optional<StoredFormat> format = official_fp8_format(spec, c)) {
        add_encoded_tensor(&tensors, spec, *format, scale, [w] { return dequantize_matrix(w); });
        tensors.back().fill = [fill = std::move(tensors.back().fill), weight = ckpt.find(spec.name),
                               scale = ckpt.find(scale)](std::byte* dst) {
          fill(dst);
          release_pages(weight);
          release_pages(scale);
        };
        ++summary.blocked_tensors;
        return;
      }
    }
    const std::optional<DType> block = official_fp8 ? std::nullopt : block_format(spec, options.weight_format);
    const bool fallback = !block && !official_fp8 && (spec.role == TensorRole::Linear || spec.role == TensorRole::Head);
    const bool plain = w.dtype == DType::F32 || w.dtype == DType::F16 || w.dtype == DType::BF16;
    if (!block && !fallback && plain) {
      tensors.push_back(copy_as_is(ckpt.find(spec.name)));
      ++summary.kept_tensors;
      return;
    }
    // Blocks; or BF16 for a quantized role that cannot be blocked, or a kept role stored quantized.
    const DType format = block ? *block : DType::BF16;
    const std::vector<int64_t> shape = block ? block_tensor_shape(format, w.rows, w.cols) : spec.shape;
    tensors.push_back({spec.name, block ? DType::U8 : DType::BF16, shape,
                       [w, format, weight = ckpt.find(spec.name), scale = ckpt.find(scale)](std::byte* dst) {
                         convert_rows(dst, w, format);
                         release_pages(weight);
                         release_pages(scale);
                       }});
    if (block) ++summary.blocked_tensors;
    else if (fallback) summary.bf16_fallbacks.push_back(spec.name);
    else ++summary.kept_tensors;
  });
  for (const TensorInfo* tensor : ckpt.tensors()) {
    summary.bytes_before += int64_t(tensor->nbytes);
    if (listed.count(tensor->name)) continue;
    if (dtype_block_size(tensor->dtype) > 1) {  // a GGUF file's MTP layers, in ggml blocks safetensors cannot hold
      ++summary.dropped_tensors;
      continue;
    }
    tensors.push_back(copy_as_is(tensor));
    ++summary.unused_tensors;
  }

  nlohmann::json config = ckpt.config();
  config.erase("expert_dtype");  // V4's FP4 experts are blocks now like every other linear layer (or FP4 again)
  if (official_fp8) set_official_fp8_config(&config, c.family);
  else config["quantization_config"] = quantization;
  std::vector<fs::path> extra_files;      // the tokenizer and whatever else sits beside the weights
  std::optional<fs::path> tokenizer_dir;  // a GGUF file's tokenizer, written out for the copy
  if (gguf) {
    tokenizer_dir = fs::path(output.string() + ".tokenizer-tmp");
    try {
      const auto [tokenizer, tokenizer_config] =
          hf_tokenizer_from_ggml(read_ggml_vocab(*GgufFile::open(input)), input.string());
      fs::create_directories(*tokenizer_dir);
      for (const auto& [name, json] :
           {std::pair{"tokenizer.json", &tokenizer}, {"tokenizer_config.json", &tokenizer_config}}) {
        std::ofstream out(*tokenizer_dir / name, std::ios::binary);
        out << json->dump(2) << "\n";
        if (!out.flush()) fail("{}: cannot write", (*tokenizer_dir / name).string());
        extra_files.push_back(*tokenizer_dir / name);
      }
    } catch (const Error& e) {
      std::fprintf(stderr, "megamoe: warning: %s; %s gets no tokenizer (give --tokenizer when running it)\n", e.what(),
                   output.string().c_str());
    }
  } else {
    for (const fs::directory_entry& entry : fs::directory_iterator(input)) {
      const std::string name = entry.path().filename().string();
      if (entry.is_regular_file() && name != "config.json" && name != "model.safetensors.index.json" &&
          entry.path().extension() != ".safetensors")
        extra_files.push_back(entry.path());
    }
  }

  for (const TensorToWrite& t : tensors) summary.bytes_after += tensor_bytes(t);
  const int64_t shards = options.shard_size > 0 ? (summary.bytes_after + options.shard_size - 1) / options.shard_size
                                                : int64_t(ckpt.stored_files().size());
  summary.shards = int(std::clamp<int64_t>(shards, 1, std::max<int64_t>(1, int64_t(tensors.size()))));
  write_checkpoint(output, config, tensors, summary.shards, extra_files, "quantize");
  if (tokenizer_dir) fs::remove_all(*tokenizer_dir);
  return summary;
}

}  // namespace megamoe
