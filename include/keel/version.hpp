#pragma once

#include <string_view>

namespace keel {

// keel's own version, "MAJOR.MINOR.PATCH".
std::string_view version() noexcept;

}  // namespace keel
