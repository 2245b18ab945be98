// GGUF (io/gguf.h): what write_gguf lays out, GgufFile reads back, and every malformed header
// (truncated anywhere, counts, lengths, types, shapes, offsets) is refused by name, never a crash.
#include "io/gguf.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "util/error.h"

#include "test_support.h"

namespace megamoe {
namespace {

using nlohmann::json;
using testing::expect_error;

std::function<void(std::byte*)> pattern(size_t bytes, int seed) {
  return [bytes, seed](std::byte* out) {
    for (size_t i = 0; i < bytes; ++i) out[i] = std::byte((i * 131 + size_t(seed) * 7) & 0xff);
  };
}

std::vector<GgufKeyValue> sample_metadata() {
  return {
      {"general.architecture", GgufValueType::String, GgufValueType::U8, "deepseek2"},
      {"a.u8", GgufValueType::U8, GgufValueType::U8, 200},
      {"a.i8", GgufValueType::I8, GgufValueType::U8, -5},
      {"a.u16", GgufValueType::U16, GgufValueType::U8, 60000},
      {"a.i16", GgufValueType::I16, GgufValueType::U8, -30000},
      {"a.u32", GgufValueType::U32, GgufValueType::U8, 4000000000u},
      {"a.i32", GgufValueType::I32, GgufValueType::U8, -2000000000},
      {"a.f32", GgufValueType::F32, GgufValueType::U8, 0.5},
      {"a.bool", GgufValueType::Bool, GgufValueType::U8, true},
      {"a.u64", GgufValueType::U64, GgufValueType::U8, 18000000000000000000ull},
      {"a.i64", GgufValueType::I64, GgufValueType::U8, -9000000000000000000ll},
      {"a.f64", GgufValueType::F64, GgufValueType::U8, 1e300},
      {"tokenizer.ggml.tokens", GgufValueType::Array, GgufValueType::String, json::array({"a", "é", "<｜User｜>", ""})},
      {"a.ids", GgufValueType::Array, GgufValueType::I32, json::array({1, -2, 3})},
  };
}

std::vector<GgufTensorToWrite> sample_tensors() {
  return {{"token_embd.weight", *ggml_type_of("F32"), {3, 5}, pattern(60, 1)},
          {"blk.0.attn_k_b.weight", *ggml_type_of("Q8_0"), {2, 4, 64}, pattern(2 * 4 * 2 * 34, 2)},
          {"blk.0.ffn_down_exps.weight", *ggml_type_of("Q4_K"), {2, 256}, pattern(2 * 144, 3)},
          {"output_norm.weight", *ggml_type_of("F32"), {7}, pattern(28, 4)}};
}

std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(Gguf, TypeTable) {
  EXPECT_EQ(ggml_type_info(12)->name, "Q4_K");
  EXPECT_EQ(ggml_type_info(12)->block_bytes, 144);
  EXPECT_EQ(ggml_type_info(14)->block_bytes, 210);
  EXPECT_EQ(ggml_type_info(10)->block_bytes, 84);
  EXPECT_EQ(ggml_type_info(6)->block_bytes, 22);
  EXPECT_EQ(ggml_type_info(30)->name, "BF16");
  EXPECT_FALSE(ggml_type_info(4));  // Q4_2, removed from ggml
  EXPECT_EQ(ggml_type_of("Q6_K"), 14u);
  EXPECT_FALSE(ggml_type_of("Q9_K"));
}

TEST(Gguf, WritesAndReadsBack) {
  testing::TempDir dir;
  for (uint32_t alignment : {32u, 64u}) {
    SCOPED_TRACE(alignment);
    const auto path = dir / "model.gguf";
    write_gguf(path, sample_metadata(), sample_tensors(), alignment);
    const auto file = GgufFile::open(path);
    EXPECT_EQ(file->version(), 3u);
    EXPECT_EQ(file->alignment(), alignment);
    for (const GgufKeyValue& expected : sample_metadata()) {
      const GgufKeyValue* read = file->find_key(expected.key);
      ASSERT_NE(read, nullptr) << expected.key;
      EXPECT_EQ(read->type, expected.type) << expected.key;
      EXPECT_EQ(read->value, expected.value) << expected.key;
      if (expected.type == GgufValueType::Array) {
        EXPECT_EQ(read->element, expected.element);
      }
    }
    EXPECT_EQ(file->string("general.architecture"), "deepseek2");
    expect_error([&] { file->integer("a.u64"); }, {"a.u64", "not an integer of at most 63 bits"});
    EXPECT_EQ(file->integer("a.i32"), -2000000000);
    EXPECT_EQ(file->number("a.f32"), 0.5);
    expect_error([&] { file->integer("a.f32"); }, {"model.gguf", "a.f32", "not an integer"});
    EXPECT_EQ(file->integer("a.u32"), 4000000000);
    expect_error([&] { file->string("missing.key"); }, {"missing.key", "missing"});
    ASSERT_EQ(file->tensors().size(), sample_tensors().size());
    for (const GgufTensorToWrite& expected : sample_tensors()) {
      const GgufTensor* t = file->find(expected.name);
      ASSERT_NE(t, nullptr) << expected.name;
      EXPECT_EQ(t->type, expected.type);
      EXPECT_EQ(t->shape, expected.shape);
      EXPECT_EQ(t->offset % alignment, 0u);
      std::vector<std::byte> bytes(t->nbytes);
      expected.fill(bytes.data());
      EXPECT_EQ(std::memcmp(bytes.data(), t->data, t->nbytes), 0) << expected.name;
    }
    EXPECT_EQ(file->find("blk.0.ffn_down_exps.weight")->nbytes, 288u);
    EXPECT_EQ(file->find("blk.0.attn_k_b.weight")->shape_string(), "[2, 4, 64]");
  }
}

TEST(Gguf, EveryTruncationIsAnError) {
  testing::TempDir dir;
  write_gguf(dir / "whole.gguf", sample_metadata(), sample_tensors());
  const std::string whole = read_bytes(dir / "whole.gguf");
  for (size_t length = 1; length < whole.size(); length += length < 600 ? 1 : 37) {
    write_bytes(dir / "cut.gguf", whole.substr(0, length));
    EXPECT_THROW(GgufFile::open(dir / "cut.gguf"), Error) << length;
  }
}

// A header built by hand, for the malformed files a writer would never make.
struct Header {
  std::string bytes;
  template <class T>
  Header& put(T value) {
    bytes.append(reinterpret_cast<const char*>(&value), sizeof(T));
    return *this;
  }
  Header& text(const std::string& s) {
    put<uint64_t>(s.size());
    bytes += s;
    return *this;
  }
  // GGUF v3 with the given counts.
  static Header start(uint64_t tensors, uint64_t keys, uint32_t version = 3) {
    Header h;
    h.bytes = "GGUF";
    return h.put(version).put(tensors).put(keys);
  }
  // One tensor info: name, dims (outermost first), type, offset.
  Header& tensor(const std::string& name, std::vector<int64_t> shape, uint32_t type, uint64_t offset) {
    text(name).put(uint32_t(shape.size()));
    for (auto d = shape.rbegin(); d != shape.rend(); ++d) put(*d);
    return put(type).put(offset);
  }
  Header& pad(size_t to = 32, size_t data = 0) {
    bytes.append((to - bytes.size() % to) % to, '\0');
    bytes.append(data, '\x01');
    return *this;
  }
};

TEST(Gguf, MalformedHeadersAreNamed) {
  testing::TempDir dir;
  const auto path = dir / "bad.gguf";
  auto expect = [&](const Header& h, std::initializer_list<std::string_view> fragments) {
    write_bytes(path, h.bytes);
    expect_error([&] { GgufFile::open(path); }, fragments);
  };
  Header wrong_magic = Header::start(0, 0);
  wrong_magic.bytes[0] = 'X';
  expect(wrong_magic, {"not a GGUF file"});
  expect(Header::start(0, 0, 2), {"version 2"});
  expect(Header::start(0, uint64_t(1) << 60), {"metadata entries cannot fit"});
  expect(Header::start(uint64_t(1) << 60, 0), {"tensors cannot fit"});
  expect(Header::start(0, 1).text("k").put(uint32_t(8)).put(uint64_t(1) << 40), {"'k'", "bytes long"});
  expect(Header::start(0, 1).text("k").put(uint32_t(8)).put(uint64_t(1000)), {"'k'", "past the end"});
  expect(Header::start(0, 1).text("k").put(uint32_t(13)), {"'k'", "unknown value type 13"});
  expect(Header::start(0, 1).text("k").put(uint32_t(9)).put(uint32_t(4)).put(uint64_t(1) << 50),
         {"'k'", "claims", "elements"});
  expect(Header::start(0, 1).text("k").put(uint32_t(7)).put(uint8_t(2)), {"'k'", "bool"});
  expect(Header::start(0, 2).text("k").put(uint32_t(4)).put(uint32_t(1)).text("k").put(uint32_t(4)).put(uint32_t(1)),
         {"'k'", "twice"});
  expect(Header::start(0, 1).text("general.alignment").put(uint32_t(4)).put(uint32_t(48)), {"not a power of two"});
  expect(Header::start(0, 1).text("general.alignment").put(uint32_t(5)).put(int32_t(64)), {"must be a uint32"});
  expect(Header::start(1, 0).text("t").put(uint32_t(5)).pad(32, 64), {"tensor t", "5 dimensions"});
  expect(Header::start(1, 0).text("t").put(uint32_t(1)).put(int64_t(-3)).pad(32, 64), {"tensor t", "negative"});
  expect(Header::start(1, 0).tensor("t", {4}, 4, 0).pad(32, 64), {"tensor t", "unknown ggml type 4"});
  expect(Header::start(1, 0).tensor("t", {2, 100}, 12, 0).pad(32, 4096), {"tensor t", "not whole blocks of 256"});
  expect(Header::start(1, 0).tensor("t", {1 << 20, 1 << 20, 1 << 20, 1 << 20}, 0, 0).pad(), {"tensor t", "too large"});
  expect(Header::start(1, 0).tensor("t", {16}, 0, 16).pad(32, 64), {"tensor t", "not a multiple of the alignment"});
  expect(Header::start(1, 0).tensor("t", {16}, 0, 0).pad(32, 63), {"tensor t", "outside the file"});
  expect(Header::start(1, 0).tensor("t", {16}, 0, uint64_t(-32)).pad(32, 64), {"tensor t", "outside the file"});
  expect(Header::start(2, 0).tensor("t", {16}, 0, 0).tensor("u", {16}, 0, 32).pad(32, 128), {"t and u overlap"});
  expect(Header::start(2, 0).tensor("t", {8}, 0, 0).tensor("t", {8}, 0, 32).pad(32, 64), {"empty or repeated"});
}

// gguf-split's parts: any part opens the model; missing, foreign or repeated parts are named.
TEST(Gguf, SplitModelsOpenFromAnyPart) {
  testing::TempDir dir;
  const std::vector<GgufTensorToWrite> tensors = sample_tensors();
  const auto write_part = [&](int k, int n, int no, std::vector<GgufTensorToWrite> part) {
    std::vector<GgufKeyValue> keys = {{"split.no", GgufValueType::U16, GgufValueType::U8, no},
                                      {"split.count", GgufValueType::U16, GgufValueType::U8, n},
                                      {"split.tensors.count", GgufValueType::I32, GgufValueType::U8, 4}};
    if (k == 1) keys.push_back({"general.architecture", GgufValueType::String, GgufValueType::U8, "deepseek2"});
    write_gguf(gguf_split_path(dir / "model", k, n), keys, part);
  };
  write_part(1, 3, 0, {tensors[0], tensors[1]});
  write_part(2, 3, 1, {tensors[2]});
  write_part(3, 3, 2, {tensors[3]});
  EXPECT_EQ(gguf_split_path(dir / "model", 2, 3).filename(), "model-00002-of-00003.gguf");
  for (int k = 1; k <= 3; ++k) {
    const auto model = GgufModel::open(gguf_split_path(dir / "model", k, 3));
    EXPECT_EQ(model->parts().size(), 3u);
    EXPECT_EQ(model->tensors().size(), 4u);
    EXPECT_EQ(model->first().string("general.architecture"), "deepseek2");
    ASSERT_NE(model->find("output_norm.weight"), nullptr);
    EXPECT_EQ(model->find("output_norm.weight")->shape, std::vector<int64_t>{7});
  }
  write_part(3, 3, 1, {tensors[3]});  // says it is the second part
  expect_error([&] { GgufModel::open(dir / "model-00001-of-00003.gguf"); },
               {"model-00003-of-00003.gguf", "part 3 of 3"});
  write_part(3, 3, 2, {tensors[0]});  // a tensor of the first part again
  expect_error([&] { GgufModel::open(dir / "model-00001-of-00003.gguf"); }, {"token_embd.weight", "earlier part"});
  std::filesystem::remove(gguf_split_path(dir / "model", 3, 3));
  expect_error([&] { GgufModel::open(dir / "model-00002-of-00003.gguf"); }, {"part 3 of the 3 parts", "missing"});
  write_gguf(dir / "single.gguf", sample_metadata(), sample_tensors());  // not split: one part
  EXPECT_EQ(GgufModel::open(dir / "single.gguf")->parts().size(), 1u);
}

}  // namespace
}  // namespace megamoe
