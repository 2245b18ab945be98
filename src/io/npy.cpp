#include "io/npy.h"

#include <bit>
#include <charconv>
#include <cstring>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>

#include "util/atomic_file.h"
#include "util/error.h"

namespace megamoe {
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "npy files are written as '<f4'");

namespace {

constexpr std::string_view kMagic = "\x93NUMPY";
constexpr size_t kDataAlignment = 64;  // what NumPy itself pads to

// Python's spelling of a shape tuple: "()", "(3,)", "(3, 4)".
std::string python_tuple(std::span<const int64_t> shape) {
  if (shape.size() == 1) return fmt::format("({},)", shape[0]);
  return fmt::format("({})", fmt::join(shape, ", "));
}

std::string_view trim(std::string_view text) {
  const size_t first = text.find_first_not_of(" \t\n");
  if (first == std::string_view::npos) return {};
  return text.substr(first, text.find_last_not_of(" \t\n") - first + 1);
}

// The inside of a shape tuple: "3, 4", "3," or "".
std::vector<int64_t> parse_shape(std::string_view dims, const fs::path& path) {
  std::vector<int64_t> shape;
  for (std::string_view rest = dims; !trim(rest).empty();) {
    const size_t comma = rest.find(',');
    const std::string_view item = trim(rest.substr(0, comma));
    int64_t dim = -1;
    const auto [end, error] = std::from_chars(item.data(), item.data() + item.size(), dim);
    if (error != std::errc() || end != item.data() + item.size() || dim < 0)
      fail("{}: cannot read npy shape ({})", path.string(), dims);
    shape.push_back(dim);
    rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
  }
  return shape;
}

}  // namespace

void write_npy(const fs::path& path, std::span<const float> data, std::span<const int64_t> shape) {
  int64_t numel = 1;
  for (int64_t dim : shape) {
    if (dim < 0) fail("{}: negative dimension in shape {}", path.string(), python_tuple(shape));
    numel *= dim;
  }
  if (size_t(numel) != data.size())
    fail("{}: shape {} needs {} values, got {}", path.string(), python_tuple(shape), numel, data.size());

  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}", python_tuple(shape));
  const size_t preamble = kMagic.size() + 2 + 2;  // magic, version 1.0, uint16 header length
  header.append(kDataAlignment - (preamble + header.size() + 1) % kDataAlignment, ' ');
  header += '\n';
  if (header.size() > UINT16_MAX) fail("{}: shape {} too long for an npy 1.0 header", path.string(), header.size());

  AtomicFile out(path);
  out.write(kMagic);
  const char version_and_length[] = {1, 0, char(header.size() & 0xff), char(header.size() >> 8)};
  out.write(std::string_view(version_and_length, 4));
  out.write(header);
  out.write(std::as_bytes(data));
  out.commit();
}

NpyArray read_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  const std::string bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (bytes.size() < 10 || std::string_view(bytes).substr(0, 6) != kMagic) fail("{}: not an npy file", path.string());

  // Version 1.0 has a 2-byte header length; 2.0 and 3.0 have 4 bytes.
  const auto byte_at = [&](size_t i) { return size_t(uint8_t(bytes[i])); };
  const int major = bytes[6];
  if (major < 1 || major > 3) fail("{}: unknown npy version {}", path.string(), major);
  const size_t length_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + length_bytes) fail("{}: truncated npy header", path.string());
  size_t header_length = 0;
  for (size_t i = 0; i < length_bytes; ++i) header_length |= byte_at(8 + i) << (8 * i);
  const size_t data_start = 8 + length_bytes + header_length;
  if (data_start > bytes.size()) fail("{}: truncated npy header", path.string());
  const std::string header = bytes.substr(8 + length_bytes, header_length);

  // The header is a Python dict literal; NumPy always writes these three keys.
  std::smatch match;
  if (!std::regex_search(header, match, std::regex(R"('descr'\s*:\s*'([^']*)')")))
    fail("{}: npy header has no 'descr'", path.string());
  if (match[1] != "<f4")
    fail("{}: element type '{}', only float32 ('<f4') is supported", path.string(), match[1].str());
  if (!std::regex_search(header, match, std::regex(R"('fortran_order'\s*:\s*(True|False))")))
    fail("{}: npy header has no 'fortran_order'", path.string());
  if (match[1] == "True") fail("{}: Fortran-ordered arrays are not supported", path.string());
  if (!std::regex_search(header, match, std::regex(R"('shape'\s*:\s*\(([^)]*)\))")))
    fail("{}: npy header has no 'shape'", path.string());

  NpyArray array{.shape = parse_shape(match[1].str(), path), .data = {}};
  uint64_t numel = 1;
  for (int64_t dim : array.shape)
    if (__builtin_mul_overflow(numel, uint64_t(dim), &numel) || numel > bytes.size())
      fail("{}: npy shape {} is larger than the file", path.string(), python_tuple(array.shape));
  if (bytes.size() - data_start != numel * sizeof(float))
    fail("{}: shape {} needs {} data bytes, the file holds {}", path.string(), python_tuple(array.shape),
         numel * sizeof(float), bytes.size() - data_start);
  array.data.resize(numel);
  if (numel > 0) std::memcpy(array.data.data(), bytes.data() + data_start, numel * sizeof(float));
  return array;
}

}  // namespace megamoe
