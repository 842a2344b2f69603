#pragma once

// Shared pieces of keel's libFuzzer harnesses: quiet, single-threaded keel; JSON parsed the way
// keel's own readers do; and a bound on the sizes a fuzzed config may ask for.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>

namespace keel::fuzz {

// One thread per operation and no log lines: runs stay reproducible and fast, and libFuzzer's
// output stays readable.
inline void quiet_single_threaded_keel() {
    ::setenv("KEEL_NUM_THREADS", "1", 1);
    ::setenv("KEEL_LOG_LEVEL", "off", 1);
}

// A keel::Error is the promised answer to bad input. KEEL_FUZZ_VERBOSE=1 prints it, to see why a
// seed is refused.
inline void expected_error(const keel::Error& error) {
    static const bool verbose = std::getenv("KEEL_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "keel::Error: %s\n", error.what());
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// The JSON in `text`, or nullopt when it is not JSON or nests deeper than keel's CLI reader
// allows (tools/keel/json_file.cpp, 64 levels: copies and dump() recurse per level). Such input
// never reaches keel's loaders in practice, so the harnesses skip it. `//` comments are allowed,
// as in the CLI.
inline std::optional<nlohmann::json> parse_json(std::string_view text) {
    constexpr int kMaxDepth = 64;
    bool too_deep = false;
    const nlohmann::json::parser_callback_t limit_depth =
        [&](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
            if (depth > kMaxDepth) too_deep = true;
            return !too_deep;
        };
    nlohmann::json value = nlohmann::json::parse(text, limit_depth, false, true);
    if (too_deep || value.is_discarded()) return std::nullopt;
    return value;
}

// Whether `value` holds an integer between 64 and 2^32 in magnitude. Such sizes (units, filters,
// kernel_size, input dimensions) legitimately ask for tensors of megabytes to gigabytes: building
// and running them measures the machine, not the parser, so the harnesses stop before building.
// Smaller ones give tiny tensors; larger ones must be refused by keel's own size checks (more
// than the machine's memory, or an element count that overflows), so those are still built.
inline bool asks_for_large_tensors(const nlohmann::json& value) {
    constexpr std::int64_t kSmall = 64;
    constexpr std::int64_t kHuge = std::int64_t{1} << 32;
    if (value.is_number_unsigned()) {
        const auto number = value.get<std::uint64_t>();
        return number > static_cast<std::uint64_t>(kSmall) &&
               number < static_cast<std::uint64_t>(kHuge);
    }
    if (value.is_number_integer()) {
        const auto number = value.get<std::int64_t>();
        return (number > kSmall && number < kHuge) || (number < -kSmall && number > -kHuge);
    }
    if (value.is_structured()) {
        for (const nlohmann::json& element : value) {
            if (asks_for_large_tensors(element)) return true;
        }
    }
    return false;
}

}  // namespace keel::fuzz
