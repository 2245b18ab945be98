// NumPy .npy files (format 1.0, little-endian float32, C order), written atomically.
#pragma once
#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace megamoe {

void write_npy(const std::filesystem::path& path, std::span<const float> data, std::span<const int64_t> shape);

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
NpyArray read_npy(const std::filesystem::path& path);  // float32 (<f4) only; Error otherwise

}  // namespace megamoe
