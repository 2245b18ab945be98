#include "util/text_file.h"

#include <fmt/format.h>

#include <fstream>
#include <iterator>

#include "util/error.h"

namespace megamoe {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path.string());
  std::string text(std::istreambuf_iterator<char>(in), {});
  if (in.bad()) fail("{}: read error", path.string());
  return text;
}

std::string content_digest(std::string_view bytes) {
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char ch : bytes) hash = (hash ^ ch) * 1099511628211ull;
  return fmt::format("{:016x}", hash);
}

}  // namespace megamoe
