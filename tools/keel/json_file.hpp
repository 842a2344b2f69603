#pragma once

#include <filesystem>
#include <string_view>

#include <nlohmann/json.hpp>

namespace keel::cli {

// Reads and parses a JSON file given on the command line. `//` comments are allowed (scripts and
// configs explain themselves); nesting is limited to 64 levels, because nlohmann's parser, copies
// and dump() recurse per level and a hostile file would otherwise overflow the stack. Every problem
// (missing or unreadable file, syntax, numbers out of range, nesting) is a keel::Error
// (invalid_argument) naming `where`, `argument` and the path.
nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view where,
                              std::string_view argument);

}  // namespace keel::cli
