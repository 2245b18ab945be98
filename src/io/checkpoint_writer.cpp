#include "io/checkpoint_writer.h"

#include <fmt/format.h>

#include <memory>

#include "util/atomic_file.h"
#include "util/error.h"
#include "util/progress.h"

namespace megamoe {
namespace {

void write_json(const std::filesystem::path& path, const nlohmann::json& j) {
  AtomicFile file(path);
  file.write(j.dump(2) + "\n");
  file.commit();
}

int64_t tensor_bytes(const TensorToWrite& t) {
  int64_t n = int64_t(dtype_size(t.dtype));
  for (int64_t d : t.shape) n *= d;
  return n;
}

}  // namespace

std::vector<int64_t> block_tensor_shape(DType format, int64_t rows, int64_t cols) {
  if (format != DType::Q8_0 && format != DType::Q4_0) fail("{} is not a block format", dtype_name(format));
  return {rows, cols / dtype_block_size(format), int64_t(dtype_size(format))};
}

void write_checkpoint(const std::filesystem::path& output, const nlohmann::json& config,
                      const std::vector<TensorToWrite>& tensors_in, int shards,
                      const std::vector<std::filesystem::path>& extra_files, const std::string& progress_label) {
  if (shards < 1) fail("the number of shards must be at least 1, got {}", shards);
  std::vector<TensorToWrite> tensors = tensors_in;
  std::unique_ptr<Progress> progress;
  int64_t done = 0;
  if (!progress_label.empty()) {
    constexpr int64_t kMiB = 1 << 20;
    int64_t total = 0;
    for (const TensorToWrite& t : tensors) total += tensor_bytes(t);
    progress = std::make_unique<Progress>(progress_label, (total + kMiB - 1) / kMiB, "MiB");
    for (TensorToWrite& t : tensors)
      t.fill = [fill = std::move(t.fill), bytes = tensor_bytes(t), &done, &progress](std::byte* dst) {
        fill(dst);
        done += bytes;
        progress->update(done / kMiB);
      };
  }
  AtomicDirectory dir(output);
  write_json(dir.path() / "config.json", config);
  for (const auto& file : extra_files) std::filesystem::copy_file(file, dir.path() / file.filename());
  const size_t n = tensors.size();
  shards = std::min<int>(shards, std::max<int>(1, int(n)));
  if (shards == 1) {
    write_safetensors(dir.path() / "model.safetensors", tensors, {{"format", "pt"}});
  } else {
    // Contiguous runs of tensors per shard, as Hugging Face's save_pretrained does: shard s ends at the
    // last tensor within (s+1)/shards of the bytes, keeping at least one tensor for each shard.
    std::vector<int64_t> before(n + 1, 0);  // bytes of tensors [0, i)
    for (size_t i = 0; i < n; ++i) before[i + 1] = before[i] + tensor_bytes(tensors[i]);
    nlohmann::json weight_map = nlohmann::json::object();
    size_t begin = 0;
    for (int s = 0; s < shards; ++s) {
      size_t end = begin + 1;
      const size_t last_end = n - size_t(shards - 1 - s);
      while (end < last_end && before[end + 1] * shards <= before[n] * (s + 1)) ++end;
      if (s == shards - 1) end = n;
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards);
      const std::vector<TensorToWrite> part(tensors.begin() + begin, tensors.begin() + end);
      for (const TensorToWrite& t : part) weight_map[t.name] = file;
      write_safetensors(dir.path() / file, part, {{"format", "pt"}});
      begin = end;
    }
    write_json(dir.path() / "model.safetensors.index.json",
               {{"metadata", {{"total_size", before[n]}}}, {"weight_map", weight_map}});
  }
  dir.commit();
  if (progress) progress->finish();
}

}  // namespace megamoe
