#include "io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "test_support.h"

namespace megamoe {
namespace {
using testing::expect_error;
using testing::TempDir;
using testing::write_file;

// A safetensors file byte for byte: length prefix, header text as given, data.
std::string raw_safetensors(std::string_view header, std::string_view data = "") {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = char((header.size() >> (8 * i)) & 0xff);
  return bytes + std::string(header) + std::string(data);
}

template <typename T>
TensorToWrite tensor_of(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<T> values) {
  return {std::move(name), dtype, std::move(shape),
          [values](std::byte* out) { std::memcpy(out, values.data(), values.size() * sizeof(T)); }};
}

template <typename T>
std::vector<T> values_of(const TensorInfo& tensor) {
  std::vector<T> values(tensor.nbytes / sizeof(T));
  std::memcpy(values.data(), tensor.data, tensor.nbytes);
  return values;
}

class SafetensorsIn : public ::testing::TestWithParam<Residency> {};

TEST_P(SafetensorsIn, RoundTripKeepsOrderValuesAndMetadata) {
  TempDir dir;
  const auto path = dir / "model.safetensors";
  write_safetensors(
      path,
      {tensor_of<float>("z.weight", DType::F32, {2, 3}, {1, 2, 3, 4, 5, 6}),
       tensor_of<uint16_t>("a.bias", DType::BF16, {3}, {0x3f80, 0x4000, 0xc000}),
       tensor_of<uint8_t>("m.fp8", DType::F8_E4M3, {1, 5}, {1, 2, 3, 4, 5}),
       tensor_of<int64_t>("scalar", DType::I64, {}, {-7}), tensor_of<float>("empty", DType::F32, {0, 4}, {})},
      {{"format", "pt"}, {"note", "hi"}});

  const auto file = SafetensorsFile::open(path, GetParam());
  EXPECT_EQ(file->bytes().size(), std::filesystem::file_size(path));
  EXPECT_EQ(file->path(), path);
  EXPECT_EQ(file->metadata(), (std::map<std::string, std::string>{{"format", "pt"}, {"note", "hi"}}));
  ASSERT_EQ(file->tensors().size(), 5u);
  // tensors() is in file order, which is the order written.
  const char* order[] = {"z.weight", "a.bias", "m.fp8", "scalar", "empty"};
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(file->tensors()[i].name, order[i]);

  const TensorInfo* z = file->find("z.weight");
  ASSERT_NE(z, nullptr);
  EXPECT_EQ(z->dtype, DType::F32);
  EXPECT_EQ(z->shape_string(), "[2, 3]");
  EXPECT_EQ(z->numel(), 6);
  EXPECT_EQ(*z->file, path);
  EXPECT_EQ(values_of<float>(*z), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(values_of<uint16_t>(*file->find("a.bias")), (std::vector<uint16_t>{0x3f80, 0x4000, 0xc000}));
  EXPECT_EQ(values_of<uint8_t>(*file->find("m.fp8")), (std::vector<uint8_t>{1, 2, 3, 4, 5}));
  const TensorInfo* scalar = file->find("scalar");
  EXPECT_EQ(scalar->shape_string(), "[]");
  EXPECT_EQ(scalar->numel(), 1);
  EXPECT_EQ(values_of<int64_t>(*scalar), (std::vector<int64_t>{-7}));
  EXPECT_EQ(file->find("empty")->nbytes, 0u);
  EXPECT_EQ(file->find("empty")->numel(), 0);
  EXPECT_EQ(file->find("absent"), nullptr);
}

TEST(Safetensors, HeaderIsPaddedJsonWithConsecutiveOffsets) {
  TempDir dir;
  const auto path = dir / "x.safetensors";
  write_safetensors(
      path, {tensor_of<uint16_t>("b", DType::F16, {3}, {1, 2, 3}), tensor_of<float>("a", DType::F32, {1}, {9})});
  std::ifstream in(path, std::ios::binary);
  const std::string bytes{std::istreambuf_iterator<char>(in), {}};
  uint64_t header_length = 0;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_length + 6 + 4);
  const std::string header = bytes.substr(8, header_length);
  EXPECT_EQ(header.find_last_not_of(' ') + 1, header.find_last_of('}') + 1);  // only spaces after the JSON
  EXPECT_LT(header.find("\"b\""), header.find("\"a\""));                      // caller's order
  const auto json = nlohmann::json::parse(header);
  EXPECT_EQ(json["b"]["data_offsets"], nlohmann::json({0, 6}));
  EXPECT_EQ(json["a"]["data_offsets"], nlohmann::json({6, 10}));
  EXPECT_EQ(json["a"]["dtype"], "F32");
  EXPECT_FALSE(json.contains("__metadata__"));  // none given, none written
}

TEST(Safetensors, EmptyTensorListWritesAValidFile) {
  TempDir dir;
  write_safetensors(dir / "e.safetensors", {});
  EXPECT_TRUE(SafetensorsFile::open(dir / "e.safetensors")->tensors().empty());
}

TEST(Safetensors, WriteFailureLeavesNothingBehind) {
  TempDir dir;
  const auto path = dir / "w.safetensors";
  TensorToWrite failing{"t", DType::F32, {2}, [](std::byte*) { throw Error("source tensor unreadable"); }};
  EXPECT_THROW(write_safetensors(path, {failing}), Error);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));

  expect_error([&] { write_safetensors(dir / "no_such_dir" / "w.safetensors", {}); }, {"w.safetensors"});
  expect_error(
      [&] {
        write_safetensors(path,
                          {tensor_of<float>("t", DType::F32, {1}, {1}), tensor_of<float>("t", DType::F32, {1}, {2})});
      },
      {"w.safetensors", "\"t\"", "repeated"});
  expect_error([&] { write_safetensors(path, {tensor_of<float>("t", DType::F32, {-1}, {})}); }, {"\"t\"", "negative"});
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

// Every malformed file names itself; those about one tensor name the tensor too.
struct BadFile {
  const char* what;
  std::string bytes;
  std::vector<std::string_view> fragments;
};

std::vector<BadFile> bad_files() {
  const std::string eight_floats(32, '\0');
  std::string huge_length(8, '\xff');
  return {
      {"empty", "", {"empty"}},
      {"shorter than the length", "abc", {"too short"}},
      {"header longer than file", raw_safetensors("{}").substr(0, 9), {"header length 2", "truncated"}},
      {"absurd header length", huge_length + "{}", {"header length 18446744073709551615"}},
      {"truncated data",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", eight_floats).substr(0, 80),
       {"\"t\"", "past the end"}},
      {"corrupt header", raw_safetensors(R"({"t":{"dtype":"F32",)"), {"not valid JSON"}},
      {"header is an array", raw_safetensors("[1, 2]"), {"not a JSON object"}},
      {"entry not an object", raw_safetensors(R"({"t": 5})"), {"\"t\"", "not a JSON object"}},
      {"missing dtype",
       raw_safetensors(R"({"t":{"shape":[8],"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "dtype"}},
      {"dtype not a string",
       raw_safetensors(R"({"t":{"dtype":4,"shape":[8],"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "dtype"}},
      {"unknown dtype",
       raw_safetensors(R"({"t":{"dtype":"F4","shape":[8],"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "unknown dtype \"F4\""}},
      {"missing shape",
       raw_safetensors(R"({"t":{"dtype":"F32","data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "shape"}},
      {"shape not a list",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":8,"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "shape"}},
      {"fractional dim",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8.5],"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "not an integer"}},
      {"negative dim",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[-8],"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "negative"}},
      {"missing offsets",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8]}})", eight_floats),
       {"\"t\"", "data_offsets"}},
      {"one offset",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[32]}})", eight_floats),
       {"\"t\"", "data_offsets"}},
      {"negative offset",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[-1,31]}})", eight_floats),
       {"\"t\"", "non-negative"}},
      {"string offset",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8],"data_offsets":["0",32]}})", eight_floats),
       {"\"t\"", "non-negative"}},
      {"byte count wrong",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[7],"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "holds 32 bytes", "need 28"}},
      {"numel overflows",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,32]}})", eight_floats),
       {"\"t\"", "more than 2^64"}},
      {"offsets past end",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[4,36]}})", eight_floats),
       {"\"t\"", "past the end"}},
      {"begin after end",
       raw_safetensors(R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[32,0]}})", eight_floats),
       {"\"t\"", "begin after"}},
      {"overlap",
       raw_safetensors(R"({"a":{"dtype":"F32","shape":[5],"data_offsets":[0,20]},)"
                       R"("b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})",
                       eight_floats),
       {"\"a\"", "\"b\"", "overlap"}},
      {"metadata not strings", raw_safetensors(R"({"__metadata__":{"format":1}})"), {"__metadata__", "format"}},
      {"metadata not an object", raw_safetensors(R"({"__metadata__":"pt"})"), {"__metadata__"}},
  };
}

TEST_P(SafetensorsIn, RejectsEveryMalformedFile) {
  TempDir dir;
  for (const BadFile& bad : bad_files()) {
    SCOPED_TRACE(bad.what);
    const auto path = dir / "bad.safetensors";
    write_file(path, bad.bytes);
    try {
      SafetensorsFile::open(path, GetParam());
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path.string()), std::string::npos) << message;
      for (std::string_view fragment : bad.fragments)
        EXPECT_NE(message.find(fragment), std::string::npos) << message << " lacks " << fragment;
    }
  }
}

TEST(Safetensors, AcceptsHandWrittenEdgeCases) {
  TempDir dir;
  const auto path = dir / "ok.safetensors";
  // Unpadded header, a gap before the data, zero-length tensors sharing an offset.
  write_file(path, raw_safetensors(R"({"e1":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                                   R"("e2":{"dtype":"BF16","shape":[2,0],"data_offsets":[4,4]},)"
                                   R"("t":{"dtype":"I32","shape":[1],"data_offsets":[4,8]}})",
                                   std::string("\0\0\0\0\x2a\0\0\0", 8)));
  const auto file = SafetensorsFile::open(path);
  EXPECT_EQ(file->tensors().size(), 3u);
  EXPECT_EQ(values_of<int32_t>(*file->find("t")), std::vector<int32_t>{42});
}

TEST_P(SafetensorsIn, MissingFileOrDirectoryIsAnError) {
  TempDir dir;
  expect_error([&] { SafetensorsFile::open(dir / "absent.safetensors", GetParam()); },
               {"absent.safetensors", "cannot open"});
  expect_error([&] { SafetensorsFile::open(dir.path(), GetParam()); }, {dir.path().string(), "not a regular file"});
}

// Read into huge pages or mapped, a file opens alike.
INSTANTIATE_TEST_SUITE_P(Residencies, SafetensorsIn, ::testing::Values(Residency::Mapped, Residency::HugePages),
                         [](const auto& info) { return info.param == Residency::Mapped ? "Mapped" : "HugePages"; });

}  // namespace
}  // namespace megamoe
