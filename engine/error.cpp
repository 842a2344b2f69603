#include <keel/engine/error.hpp>

#include <string>

namespace keel {

std::string_view category_name(ErrorCategory category) noexcept {
    switch (category) {
        case ErrorCategory::invalid_argument:
            return "invalid_argument";
        case ErrorCategory::shape_mismatch:
            return "shape_mismatch";
        case ErrorCategory::unsupported:
            return "unsupported";
        case ErrorCategory::internal:
            return "internal";
    }
    return "unknown";
}

Error::Error(ErrorCategory category, const std::string& message)
    : std::runtime_error(message), category_(category) {}

namespace {

std::string argument_message(std::string_view where, std::string_view argument,
                             std::string_view value, std::string_view expected) {
    std::string message;
    message.reserve(where.size() + argument.size() + value.size() + expected.size() + 16);
    message.append(where).append(": ").append(argument).append(" = ").append(value);
    message.append("; expected ").append(expected);
    return message;
}

}  // namespace

Error invalid_argument(std::string_view where, std::string_view argument, std::string_view value,
                       std::string_view expected) {
    return Error(ErrorCategory::invalid_argument,
                 argument_message(where, argument, value, expected));
}

Error shape_mismatch(std::string_view where, std::string_view argument, std::string_view value,
                     std::string_view expected) {
    return Error(ErrorCategory::shape_mismatch, argument_message(where, argument, value, expected));
}

Error unsupported(std::string_view where, std::string_view what, std::string_view why) {
    std::string message;
    message.append(where).append(": ").append(what).append(" is not supported: ").append(why);
    return Error(ErrorCategory::unsupported, message);
}

Error internal_error(std::string_view where, std::string_view what) {
    std::string message;
    message.append(where).append(": internal error: ").append(what);
    return Error(ErrorCategory::internal, message);
}

}  // namespace keel
