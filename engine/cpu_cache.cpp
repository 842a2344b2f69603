#include "engine/cpu_cache.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <string>

namespace keel {
namespace {

constexpr std::int64_t kFallbackBytes = std::int64_t{32} << 20;

// "32768K" / "1M" / "512" as sysfs writes cache sizes; 0 when unreadable.
std::int64_t parse_size(const std::string& text) {
    std::size_t digits = 0;
    while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) {
        ++digits;
    }
    if (digits == 0 || digits > 12) return 0;
    std::int64_t value = std::stoll(text.substr(0, digits));
    const char unit = digits < text.size() ? text[digits] : ' ';
    if (unit == 'K') value <<= 10;
    if (unit == 'M') value <<= 20;
    if (unit == 'G') value <<= 30;
    return value;
}

std::int64_t largest_sysfs_data_cache() {
    std::int64_t largest = 0;
    for (int index = 0; index < 16; ++index) {
        const std::string directory =
            "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
        std::ifstream type_file(directory + "type");
        if (!type_file) break;
        std::string type;
        type_file >> type;
        if (type == "Instruction") continue;
        std::ifstream size_file(directory + "size");
        std::string size;
        size_file >> size;
        largest = std::max(largest, parse_size(size));
    }
    return largest;
}

std::int64_t detect_last_level_cache_bytes() {
    if (const std::int64_t sysfs = largest_sysfs_data_cache(); sysfs > 0) return sysfs;
    for (const int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
        if (const long bytes = sysconf(name); bytes > 0) return bytes;
    }
    return kFallbackBytes;
}

}  // namespace

std::int64_t last_level_cache_bytes() {
    static const std::int64_t bytes = detect_last_level_cache_bytes();
    return bytes;
}

}  // namespace keel
