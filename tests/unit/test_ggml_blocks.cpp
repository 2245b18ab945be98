// ggml's block formats (ops/ggml_blocks.h) against values ggml itself computed from the same
// bytes (tests/data/ggml-dequant, made by ggml's scalar dequantize_row_* functions): bit for bit.
#include "ops/ggml_blocks.h"

#include <gtest/gtest.h>

#include <bit>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

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
  EXPECT_EQ(formats, 12);
}

TEST(GgmlBlocks, RowsOfPartialBlocksAreRefused) {
  std::vector<std::byte> block(144);
  std::vector<float> out(256);
  EXPECT_THROW(dequantize_ggml_blocks(GgmlBlock::Q4_K, block.data(), out.data(), 128), Error);
}

}  // namespace
}  // namespace megamoe
