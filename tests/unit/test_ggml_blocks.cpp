// ggml's block formats (ops/ggml_blocks.h) against values ggml itself computed from the same
// bytes (tests/data/ggml-dequant, made by ggml's scalar dequantize_row_* functions): bit for bit.
#include "ops/ggml_blocks.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "ops/matmul.h"
#include "ops/quant.h"
#include "util/error.h"

namespace megamoe {
namespace {

namespace fs = std::filesystem;

nlohmann::json vectors() {
  const fs::path path = fs::path(__FILE__).parent_path().parent_path() / "data" / "ggml-dequant" / "vectors.json";
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

std::vector<std::byte> from_hex(const std::string& hex) {
  std::vector<std::byte> bytes(hex.size() / 2);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = std::byte(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
  return bytes;
}

TEST(GgmlBlocks, LayoutsAreGgmls) {
  EXPECT_EQ(ggml_block_layout(GgmlBlock::Q4_K).bytes, 144);
  EXPECT_EQ(ggml_block_layout(GgmlBlock::Q6_K).bytes, 210);
  EXPECT_EQ(ggml_block_layout(GgmlBlock::IQ4_NL).elements, 32);
  EXPECT_EQ(ggml_block_of("Q3_K"), GgmlBlock::Q3_K);
  EXPECT_FALSE(ggml_block_of("Q8_0"));  // megamoe's own DType::Q8_0
}

TEST(GgmlBlocks, EqualGgmlsDequantizationBitForBit) {
  const nlohmann::json all = vectors();
  int formats = 0;
  for (const auto& [name, v] : all.items()) {
    SCOPED_TRACE(name);
    const std::vector<std::byte> blocks = from_hex(v["blocks"].get<std::string>());
    const std::vector<uint32_t> expected = v["values"].get<std::vector<uint32_t>>();
    std::vector<float> values(expected.size());
    if (const std::optional<GgmlBlock> format = ggml_block_of(name)) {
      EXPECT_EQ(ggml_block_layout(*format).bytes, v["block_bytes"].get<int64_t>());
      EXPECT_EQ(ggml_block_layout(*format).elements, v["block_elements"].get<int64_t>());
      dequantize_ggml_blocks(*format, blocks.data(), values.data(), int64_t(values.size()));
    } else if (name == "Q8_0") {
      dequantize_row_q8_0(values.data(), reinterpret_cast<const BlockQ8_0*>(blocks.data()), int64_t(values.size()));
    } else if (name == "Q4_0") {
      dequantize_row_q4_0(values.data(), reinterpret_cast<const BlockQ4_0*>(blocks.data()), int64_t(values.size()));
    } else {
      ADD_FAILURE() << "no format " << name;
      continue;
    }
    for (size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(values[i]), expected[i])
          << "value " << i << ": " << values[i] << " vs " << std::bit_cast<float>(expected[i]);
    ++formats;
  }
  EXPECT_EQ(formats, 13);
}

// The vectors' 6 blocks as a weight of 3 rows of 2 blocks: dequantize_row gives the vectors' values
// bit for bit, and matmul (every SIMD target, any number of tokens) their products within float
// rounding.
TEST(GgmlBlocks, WeightsOfEveryFormatMultiplyOnEveryTarget) {
  const std::map<std::string, DType> dtypes = {
      {"Q4_0", DType::Q4_0},  {"Q8_0", DType::Q8_0}, {"Q4_1", DType::Q4_1},     {"Q5_0", DType::Q5_0},
      {"Q5_1", DType::Q5_1},  {"Q2_K", DType::Q2_K}, {"Q3_K", DType::Q3_K},     {"Q4_K", DType::Q4_K},
      {"Q5_K", DType::Q5_K},  {"Q6_K", DType::Q6_K}, {"IQ4_NL", DType::IQ4_NL}, {"IQ4_XS", DType::IQ4_XS},
      {"MXFP4", DType::MXFP4}};
  const nlohmann::json all = vectors();
  for (const auto& [name, v] : all.items()) {
    SCOPED_TRACE(name);
    const std::vector<std::byte> blocks = from_hex(v["blocks"].get<std::string>());
    const std::vector<uint32_t> bits = v["values"].get<std::vector<uint32_t>>();
    const int64_t rows = 3, cols = int64_t(bits.size()) / rows;
    const WeightView W{.dtype = dtypes.at(name), .rows = rows, .cols = cols, .data = blocks.data()};
    EXPECT_EQ(W.row_bytes() * rows, int64_t(blocks.size()));
    for (const std::string& target : matmul_targets()) {
      SCOPED_TRACE(target);
      matmul_use_target(target);
      std::vector<float> row(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        dequantize_row(row.data(), W, r);
        for (int64_t k = 0; k < cols; ++k)
          ASSERT_EQ(std::bit_cast<uint32_t>(row[size_t(k)]), bits[size_t(r * cols + k)]);
      }
      if (!ggml_block_of(W.dtype)) continue;  // Q8_0, Q4_0: int8 products in fast numerics, tested in test_kernels
      for (const int64_t T : {1, 3, 9}) {
        std::vector<float> x(size_t(T * cols)), y(size_t(T * rows)), reference(size_t(T * rows));
        for (size_t i = 0; i < x.size(); ++i) x[i] = float(int(i * 37 % 23) - 11) / 8.f;
        matmul(y.data(), x.data(), T, W);
        // Q4_K multiplies in int8 against activations rounded to q8_0 blocks (fast numerics).
        if (matmul_quantizes_activations(W.dtype)) matmul_reference_quantized(reference.data(), x.data(), T, W);
        else matmul_reference(reference.data(), x.data(), T, W);
        for (size_t i = 0; i < y.size(); ++i) {
          double magnitude = 0;
          for (int64_t k = 0; k < cols; ++k)
            magnitude += std::fabs(double(x[i / rows * cols + k]) *
                                   std::bit_cast<float>(bits[size_t(int64_t(i % rows) * cols + k)]));
          ASSERT_NEAR(y[i], reference[i], 1e-5 * magnitude + 1e-30) << "T=" << T << " output " << i;
        }
      }
    }
    matmul_use_target("");
  }
}

// The int8 kernels of every format (fast numerics) on matrices of several tiles and superblocks:
// against the reference on the same rounded activations, on every target, and batch invariant (a
// token's outputs are bit for bit the same alone and among 17).
TEST(GgmlBlocks, KernelsMatchTheReferenceAndAreBatchInvariant) {
  std::mt19937 gen(5);
  std::uniform_int_distribution<int> byte(0, 0x7b);  // every fp16 scale finite
  std::uniform_real_distribution<float> value(-1.f, 1.f);
  for (int format = int(DType::Q4_1); format <= int(DType::MXFP4); ++format) {  // the ggml block formats
    const DType dtype = DType(format);
    SCOPED_TRACE(dtype_name(dtype));
    const int64_t rows = 37, cols = 768, T = 17;
    WeightView W{.dtype = dtype, .rows = rows, .cols = cols};
    std::vector<uint8_t> bytes(static_cast<size_t>(rows * W.row_bytes()));
    for (uint8_t& b : bytes) b = uint8_t(byte(gen));
    W.data = bytes.data();
    std::vector<float> x(static_cast<size_t>(T * cols)), y(static_cast<size_t>(T * rows)),
        one(static_cast<size_t>(rows)), reference(y.size()), row(static_cast<size_t>(cols));
    for (float& v : x) v = value(gen);
    for (const std::string& target : matmul_targets()) {
      SCOPED_TRACE(target);
      matmul_use_target(target);
      matmul(y.data(), x.data(), T, W);
      if (matmul_quantizes_activations(dtype)) matmul_reference_quantized(reference.data(), x.data(), T, W);
      else matmul_reference(reference.data(), x.data(), T, W);
      for (int64_t i = 0; i < T * rows; ++i) {
        dequantize_row(row.data(), W, i % rows);
        double magnitude = 0;
        for (int64_t k = 0; k < cols; ++k)
          magnitude += std::fabs(double(x[size_t(i / rows * cols + k)]) * row[size_t(k)]);
        ASSERT_NEAR(y[size_t(i)], reference[size_t(i)], 1e-5 * magnitude + 1e-30) << "output " << i;
      }
      for (const int64_t t : {0, 9, 16}) {
        matmul(one.data(), x.data() + t * cols, 1, W);
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(std::bit_cast<uint32_t>(one[size_t(r)]), std::bit_cast<uint32_t>(y[size_t(t * rows + r)]))
              << "token " << t << " row " << r;
      }
    }
    matmul_use_target("");
  }
}

TEST(GgmlBlocks, RowsOfPartialBlocksAreRefused) {
  std::vector<std::byte> block(144);
  std::vector<float> out(256);
  EXPECT_THROW(dequantize_ggml_blocks(GgmlBlock::Q4_K, block.data(), out.data(), 128), Error);
}

}  // namespace
}  // namespace megamoe
