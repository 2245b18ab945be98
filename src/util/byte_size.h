// Sizes of memory: a user's "1GiB", and what the machine has free.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace megamoe {

// "1GiB", "512MiB", "64KiB", "2GB", "1000000" (bytes) -> bytes; a one-line Error otherwise.
int64_t parse_byte_size(const std::string& text);
// MemAvailable from /proc/meminfo, in bytes (nullopt where the file is not there).
std::optional<int64_t> available_memory();

}  // namespace megamoe
