// Whole files as bytes, and a digest to tell contents apart.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace megamoe {

// The whole file; Error naming it when it cannot be read.
std::string read_text_file(const std::filesystem::path& path);

// A digest of bytes (FNV-1a 64, as hex): equal digests, same bytes (not a defence against forgery).
std::string content_digest(std::string_view bytes);

}  // namespace megamoe
