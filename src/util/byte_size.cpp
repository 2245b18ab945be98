#include "util/byte_size.h"

#include <charconv>
#include <fstream>
#include <string_view>
#include <utility>

#include "util/error.h"

namespace megamoe {

int64_t parse_byte_size(const std::string& text) {
  static const std::pair<const char*, int64_t> kUnits[] = {
      {"", 1},      {"B", 1},        {"KiB", 1ll << 10}, {"MiB", 1ll << 20},   {"GiB", 1ll << 30}, {"TiB", 1ll << 40},
      {"KB", 1000}, {"MB", 1000000}, {"GB", 1000000000}, {"TB", 1000000000000}};
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [rest, error] = std::from_chars(text.data(), end, value);
  if (error == std::errc() && value >= 0 && rest != text.data())
    for (const auto& [unit, scale] : kUnits)
      if (std::string_view(rest, end) == unit && value * double(scale) < 9e18) {
        const double bytes = value * double(scale);
        if (bytes >= 1) return int64_t(bytes);
      }
  fail("\"{}\" is not a memory size (e.g. 1GiB, 512MiB, 1500000 bytes)", text);
}

std::optional<int64_t> available_memory() {
  std::ifstream meminfo("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0;
  while (meminfo >> key >> kib >> unit)
    if (key == "MemAvailable:") return kib * 1024;
  return std::nullopt;
}

}  // namespace megamoe
