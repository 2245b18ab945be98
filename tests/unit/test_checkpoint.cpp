#include "io/checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <numeric>

#include "io/checkpoint_writer.h"
#include "ops/quant.h"
#include "test_support.h"
#include "util/json_file.h"

namespace megamoe {
namespace {
namespace fs = std::filesystem;
using testing::expect_error;
using testing::TempDir;
using testing::write_file;

template <typename T>
TensorToWrite tensor_of(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<T> values) {
  return {std::move(name), dtype, std::move(shape),
          [values](std::byte* out) { std::memcpy(out, values.data(), values.size() * sizeof(T)); }};
}

// A tensor whose bytes are 0, 1, 2, ... (mod 256).
TensorToWrite counting(std::string name, DType dtype, std::vector<int64_t> shape) {
  int64_t bytes = int64_t(dtype_size(dtype));
  for (int64_t dim : shape) bytes *= dim;
  return {std::move(name), dtype, std::move(shape), [bytes](std::byte* out) {
            for (int64_t i = 0; i < bytes; ++i) out[i] = std::byte(i);
          }};
}

std::vector<float> iota_floats(size_t n) {
  std::vector<float> values(n);
  std::iota(values.begin(), values.end(), 1.f);
  return values;
}

constexpr DType kF32[] = {DType::F32};

struct CheckpointTest : ::testing::Test {
  TempDir dir;
  void SetUp() override { write_file(dir / "config.json", R"({"hidden_size": 4, "architectures": ["X"]})"); }
  std::unique_ptr<Checkpoint> open() { return Checkpoint::open(dir.path()); }
};

TEST_F(CheckpointTest, SingleFile) {
  write_safetensors(dir / "model.safetensors",
                    {tensor_of<float>("norm", DType::F32, {4}, {1, 2, 3, 4}),
                     tensor_of<uint16_t>("norm16", DType::F16, {2}, {0x3c00, 0xc000}),   // 1, -2
                     tensor_of<uint16_t>("normbf", DType::BF16, {2}, {0x3fc0, 0x4040}),  // 1.5, 3
                     tensor_of<float>("w", DType::F32, {2, 3}, iota_floats(6)),
                     tensor_of<int32_t>("ids", DType::I32, {2, 2}, {1, 2, 3, 4})});
  const auto ckpt = open();
  EXPECT_EQ(ckpt->dir(), dir.path());
  EXPECT_EQ(ckpt->config()["hidden_size"], 4);
  EXPECT_EQ(ckpt->stored_files().size(), 1u);
  EXPECT_EQ(ckpt->tensors().size(), 5u);
  EXPECT_TRUE(ckpt->contains("w"));
  EXPECT_FALSE(ckpt->contains("v"));

  EXPECT_EQ(ckpt->vector_f32("norm", 4), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(ckpt->vector_f32("norm16", 2), (std::vector<float>{1, -2}));
  EXPECT_EQ(ckpt->vector_f32("normbf", 2), (std::vector<float>{1.5, 3}));

  const WeightView w = ckpt->weight("w", 2, 3);
  EXPECT_EQ(w.dtype, DType::F32);
  EXPECT_EQ(w.rows, 2);
  EXPECT_EQ(w.cols, 3);
  EXPECT_EQ(w.scale_inv, nullptr);
  EXPECT_EQ(static_cast<const float*>(w.data)[4], 5.f);
  EXPECT_EQ(w.bytes(), 24);
  const WeightView row1 = w.row_slice(1, 1);
  EXPECT_EQ(static_cast<const float*>(row1.data)[0], 4.f);
  EXPECT_EQ(row1.rows, 1);

  const int64_t ids_shape[] = {2, 2};
  constexpr DType kI32[] = {DType::I32};
  EXPECT_EQ(&ckpt->require("ids", kI32, ids_shape), ckpt->find("ids"));
}

TEST_F(CheckpointTest, RequireNamesWhatIsWrong) {
  write_safetensors(dir / "model.safetensors", {tensor_of<float>("w", DType::F32, {2, 3}, iota_floats(6))});
  const auto ckpt = open();
  const std::string file = (dir / "model.safetensors").string();
  const int64_t shape23[] = {2, 3}, shape32[] = {3, 2};
  constexpr DType kHalf[] = {DType::BF16, DType::F16};
  expect_error([&] { ckpt->require("v", kF32, shape23); },
               {"checkpoint " + dir.path().string() + ": missing tensor v"});
  expect_error([&] { ckpt->require("w", kHalf, shape23); }, {file + ": tensor w has dtype F32, expected BF16 or F16"});
  expect_error([&] { ckpt->require("w", kF32, shape32); }, {file + ": tensor w has shape [2, 3], expected [3, 2]"});
  expect_error([&] { ckpt->weight("w", 3, 2); }, {"tensor w has shape [2, 3], expected [3, 2]"});
  expect_error([&] { ckpt->vector_f32("w", 6); }, {"tensor w has shape [2, 3], expected [6]"});
}

TEST_F(CheckpointTest, WrongDTypeForWeightOrVector) {
  write_safetensors(dir / "model.safetensors", {tensor_of<int8_t>("q", DType::I8, {2, 2}, {1, 2, 3, 4}),
                                                tensor_of<int8_t>("v", DType::I8, {4}, {1, 2, 3, 4})});
  const auto ckpt = open();
  expect_error([&] { ckpt->weight("q", 2, 2); }, {"tensor q has dtype I8", "F8_E4M3"});
  expect_error([&] { ckpt->vector_f32("v", 4); }, {"tensor v has dtype I8"});
}

TEST_F(CheckpointTest, Fp8WeightWithBlockScales) {
  // 300 x 200: scale blocks [3, 2], the last row block and column block partial.
  const std::vector<float> scales = {1, 2, 3, 4, 5, 6};
  write_safetensors(dir / "model.safetensors", {counting("w.weight", DType::F8_E4M3, {300, 200}),
                                                tensor_of<float>("w.weight_scale_inv", DType::F32, {3, 2}, scales)});
  const auto ckpt = open();
  const WeightView w = ckpt->weight("w.weight", 300, 200);
  EXPECT_EQ(w.dtype, DType::F8_E4M3);
  EXPECT_EQ(w.scale_cols(), 2);
  ASSERT_NE(w.scale_inv, nullptr);
  EXPECT_EQ(std::vector<float>(w.scale_inv, w.scale_inv + 6), scales);
  EXPECT_EQ(w.bytes(), 300 * 200 + 6 * 4);

  const WeightView tail = w.row_slice(128, 172);
  EXPECT_EQ(tail.rows, 172);
  EXPECT_EQ(tail.cols, 200);
  EXPECT_EQ(static_cast<const std::byte*>(tail.data) - static_cast<const std::byte*>(w.data), 128 * 200);
  EXPECT_EQ(tail.scale_inv[0], 3.f);  // scale row 1, column 0
  EXPECT_EQ(tail.scale_inv[1], 4.f);
  EXPECT_EQ(tail.bytes(), 172 * 200 + 2 * 2 * 4);
  EXPECT_EQ(w.row_slice(256, 44).scale_inv[0], 5.f);
  EXPECT_EQ(w.row_slice(0, 10).scale_inv, w.scale_inv);

  // A slice inside a scale block keeps that block's scales (DeepSeek's scale[row / 128, col / 128]).
  const WeightView inside = w.row_slice(100, 60);
  EXPECT_EQ(inside.scale_inv, w.scale_inv);
  EXPECT_EQ(inside.scale_row_offset, 100);
  EXPECT_EQ(inside.scale_inv[inside.scale_index(27, 150)], 2.f);  // row 127: scale row 0, column 1
  EXPECT_EQ(inside.scale_inv[inside.scale_index(28, 0)], 3.f);    // row 128: scale row 1
  EXPECT_EQ(inside.bytes(), 60 * 200 + 2 * 2 * 4);
  EXPECT_EQ(inside.row_slice(30, 30).scale_row_offset, 2);  // rows 130..159
  expect_error([&] { w.row_slice(256, 45); }, {"outside", "300 rows"});
  expect_error([&] { w.row_slice(-128, 1); }, {"outside"});
}

TEST_F(CheckpointTest, Fp8WeightNeedsRightScales) {
  write_safetensors(dir / "model.safetensors",
                    {counting("a.weight", DType::F8_E4M3, {129, 128}), counting("b.weight", DType::F8_E4M3, {128, 128}),
                     tensor_of<float>("b.weight_scale_inv", DType::F32, {1, 2}, {1, 1}),
                     counting("c.weight", DType::F8_E4M3, {128, 128}),
                     tensor_of<uint16_t>("c.weight_scale_inv", DType::BF16, {1, 1}, {0x3f80})});
  const auto ckpt = open();
  expect_error([&] { ckpt->weight("a.weight", 129, 128); }, {"missing tensor a.weight_scale_inv"});
  expect_error([&] { ckpt->weight("b.weight", 128, 128); },
               {"tensor b.weight_scale_inv has shape [1, 2], expected [1, 1]"});
  expect_error([&] { ckpt->weight("c.weight", 128, 128); }, {"tensor c.weight_scale_inv has dtype BF16, expected F32"});
}

TEST_F(CheckpointTest, MisalignedTensors) {
  // One byte before the F32 tensors shifts them off 4-byte alignment: both are copied, aligned.
  write_safetensors(dir / "model.safetensors",
                    {tensor_of<uint8_t>("pad", DType::U8, {1}, {0}), tensor_of<float>("w", DType::F32, {1, 1}, {1}),
                     tensor_of<float>("v", DType::F32, {2}, {2, 3})});
  const auto ckpt = open();
  const WeightView w = ckpt->weight("w", 1, 1);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data) % alignof(float), 0u);
  EXPECT_EQ(*static_cast<const float*>(w.data), 1.f);
  EXPECT_EQ(ckpt->vector_f32("v", 2), (std::vector<float>{2, 3}));
}

TEST_F(CheckpointTest, BlockWeightsWhenAsked) {
  // megamoe's q8_0 / q4_0: U8 [rows, cols/32, 34 | 18], here one byte off 2-byte alignment.
  std::vector<float> values(3 * 64);
  for (size_t i = 0; i < values.size(); ++i) values[i] = float(int(i % 17) - 8) * 0.25f;
  const OwnedWeight q8 = quantize_weight(DType::Q8_0, values.data(), 3, 64);
  write_safetensors(dir / "model.safetensors", {tensor_of<uint8_t>("pad", DType::U8, {1}, {0}),
                                                tensor_of<uint8_t>("w", DType::U8, {3, 2, 34}, q8.data),
                                                tensor_of<uint8_t>("bad", DType::U8, {3, 4, 17}, q8.data)});
  const auto ckpt = open();
  const WeightView w = ckpt->weight("w", 3, 64, ScaleLayout::ScaleInvF32, DType::Q8_0);
  EXPECT_EQ(w.dtype, DType::Q8_0);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data) % alignof(BlockQ8_0), 0u);
  EXPECT_EQ(std::memcmp(w.data, q8.data.data(), q8.data.size()), 0);
  EXPECT_EQ(w.bytes(), 3 * 2 * 34);
  expect_error([&] { ckpt->weight("w", 3, 64); }, {"tensor w has dtype U8"});
  expect_error([&] { ckpt->weight("w", 3, 64, ScaleLayout::ScaleInvF32, DType::Q4_0); },
               {"tensor w has shape [3, 2, 34], expected [3, 2, 18]", "Q4_0 blocks of a [3, 64] weight"});
  expect_error([&] { ckpt->weight("bad", 3, 64, ScaleLayout::ScaleInvF32, DType::Q8_0); },
               {"tensor bad has shape [3, 4, 17], expected [3, 2, 34]"});
}

TEST_F(CheckpointTest, ShardedWithIndex) {
  write_safetensors(dir / "model-00001-of-00002.safetensors",
                    {tensor_of<float>("a", DType::F32, {2}, {1, 2}), tensor_of<float>("b", DType::F32, {1}, {3})});
  write_safetensors(dir / "model-00002-of-00002.safetensors", {tensor_of<float>("c", DType::F32, {1}, {4})});
  // Not in the index: must be ignored, although it repeats a tensor name.
  write_safetensors(dir / "stray.safetensors", {tensor_of<float>("a", DType::F32, {2}, {9, 9})});
  write_file(dir / "model.safetensors.index.json",
             R"({"metadata": {"total_size": 16}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                 "b": "model-00001-of-00002.safetensors", "c": "model-00002-of-00002.safetensors"}})");
  const auto ckpt = open();
  EXPECT_EQ(ckpt->stored_files().size(), 2u);
  EXPECT_EQ(ckpt->tensors().size(), 3u);
  EXPECT_EQ(ckpt->vector_f32("a", 2), (std::vector<float>{1, 2}));
  EXPECT_EQ(ckpt->vector_f32("c", 1), (std::vector<float>{4}));
  EXPECT_EQ(*ckpt->find("c")->file, dir / "model-00002-of-00002.safetensors");
}

TEST(CheckpointWriter, ShardsOfAboutEqualBytes) {
  const std::vector<TensorToWrite> tensors = {counting("a", DType::U8, {1000}), counting("b", DType::U8, {10}),
                                              counting("c", DType::U8, {10}), counting("d", DType::U8, {1000})};
  auto shard_of = [&](int shards) {
    TempDir dir;
    write_checkpoint(dir / "model", {{"architectures", {"X"}}}, tensors, shards);
    const nlohmann::json index = read_json_file(dir / "model" / "model.safetensors.index.json");
    std::map<std::string, std::string> files;
    for (auto it = index.at("weight_map").begin(); it != index.at("weight_map").end(); ++it)
      files[it.key()] = it.value().get<std::string>().substr(6, 5);  // "model-00001-of-..." -> "00001"
    return files;
  };
  using Files = std::map<std::string, std::string>;
  EXPECT_EQ(shard_of(2), (Files{{"a", "00001"}, {"b", "00001"}, {"c", "00002"}, {"d", "00002"}}));
  // Every shard keeps at least one tensor, however uneven the bytes.
  EXPECT_EQ(shard_of(4), (Files{{"a", "00001"}, {"b", "00002"}, {"c", "00003"}, {"d", "00004"}}));
  EXPECT_EQ(shard_of(9), shard_of(4));  // at most one shard per tensor
}

TEST_F(CheckpointTest, IndexProblems) {
  write_safetensors(dir / "one.safetensors", {tensor_of<float>("a", DType::F32, {1}, {1})});
  const auto index = dir / "model.safetensors.index.json";
  const std::string index_name = index.string();

  write_file(index, R"({"weight_map": {"a": "one.safetensors", "b": "one.safetensors"}})");
  expect_error([&] { open(); }, {(dir / "one.safetensors").string(), "\"b\"", index_name});

  write_file(index, R"({"weight_map": {"a": "one.safetensors", "b": "two.safetensors"}})");
  expect_error([&] { open(); }, {index_name, (dir / "two.safetensors").string(), "does not exist"});

  write_file(index, R"({"weight_map": {"a": "one.safetensors",)");
  expect_error([&] { open(); }, {index_name, "not valid JSON"});

  write_file(index, R"({"metadata": {}})");
  expect_error([&] { open(); }, {index_name, "weight_map"});

  write_file(index, R"({"weight_map": {"a": "../one.safetensors"}})");
  expect_error([&] { open(); }, {index_name, "\"a\"", "not a file name"});

  write_file(index, R"({"weight_map": {}})");
  expect_error([&] { open(); }, {"no .safetensors files"});
}

TEST_F(CheckpointTest, DirectoryProblems) {
  expect_error([&] { Checkpoint::open(dir / "absent"); }, {"absent", "not a directory"});
  expect_error([&] { open(); }, {dir.path().string(), "no .safetensors files"});

  write_safetensors(dir / "a.safetensors", {tensor_of<float>("t", DType::F32, {1}, {1})});
  write_safetensors(dir / "b.safetensors", {tensor_of<float>("t", DType::F32, {1}, {2})});
  expect_error([&] { open(); }, {"\"t\"", "a.safetensors", "b.safetensors"});

  fs::remove(dir / "b.safetensors");
  write_file(dir / "b.safetensors", "junk");
  expect_error([&] { open(); }, {(dir / "b.safetensors").string()});

  fs::remove(dir / "b.safetensors");
  write_file(dir / "config.json", "{\"hidden_size\": ");
  expect_error([&] { open(); }, {(dir / "config.json").string(), "not valid JSON"});
  write_file(dir / "config.json", "[1]");
  expect_error([&] { open(); }, {(dir / "config.json").string(), "not a JSON object"});
  fs::remove(dir / "config.json");
  expect_error([&] { open(); }, {"config.json"});
}

}  // namespace
}  // namespace megamoe
