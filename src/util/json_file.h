// Reading JSON files with errors that name the file.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>

namespace megamoe {

nlohmann::json read_json_file(const std::filesystem::path& path);  // Error: cannot open / invalid JSON
// Writes `j` indented, whole or not at all (AtomicFile).
void write_json_file(const std::filesystem::path& path, const nlohmann::json& j);

}  // namespace megamoe
