#include "json_file.hpp"

#include <cstdint>
#include <fstream>
#include <string>
#include <system_error>

#include <keel/engine/error.hpp>

namespace keel::cli {

nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view where,
                              std::string_view argument) {
    // Appended piece by piece: GCC 12 reports a false -Wrestrict for "'" + string + "'".
    std::string quoted(1, '\'');
    quoted += path.string();
    quoted += '\'';
    const auto unreadable = [&](std::string_view problem) {
        return invalid_argument(where, argument, quoted + " (" + std::string(problem) + ")",
                                "a readable JSON file");
    };
    std::error_code status;
    if (!std::filesystem::is_regular_file(path, status)) {
        throw unreadable(std::filesystem::exists(path, status) ? "not a regular file"
                                                               : "no such file");
    }
    const std::uintmax_t size = std::filesystem::file_size(path, status);
    std::ifstream stream(path, std::ios::binary);
    if (status || !stream.is_open()) throw unreadable("cannot be opened");
    std::string text(static_cast<std::size_t>(size), '\0');
    stream.read(text.data(), static_cast<std::streamsize>(text.size()));
    if (stream.gcount() != static_cast<std::streamsize>(text.size()))
        throw unreadable("read error");

    constexpr int kMaxDepth = 64;
    const nlohmann::json::parser_callback_t limit_depth =
        [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
            if (depth > kMaxDepth) {
                throw invalid_argument(
                    where, argument, quoted,
                    "JSON nested at most " + std::to_string(kMaxDepth) + " levels deep");
            }
            return true;
        };
    try {
        return nlohmann::json::parse(text, limit_depth, true, true);
    } catch (const nlohmann::json::exception& error) {
        // Syntax errors, and numbers out of range (e.g. 1e400).
        throw invalid_argument(where, argument, quoted,
                               std::string("well-formed JSON (") + error.what() + ")");
    }
}

}  // namespace keel::cli
