#include <keel/version.hpp>

namespace keel {

std::string_view version() noexcept { return KEEL_VERSION_STRING; }

}  // namespace keel
