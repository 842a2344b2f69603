#pragma once

#include <stdexcept>
#include <string>
#include <string_view>

namespace keel {

enum class ErrorCategory { invalid_argument, shape_mismatch, unsupported, internal };

// "invalid_argument", "shape_mismatch", "unsupported", "internal".
std::string_view category_name(ErrorCategory category) noexcept;

// The one exception type keel throws. Messages follow one grammar, built by the helpers below:
//   "<where>: <argument> = <value>; expected <rule>"
// e.g. "BatchNormalization 'bn1': momentum = 1.5; expected a value in [0, 1]".
class Error : public std::runtime_error {
  public:
    Error(ErrorCategory category, const std::string& message);
    ErrorCategory category() const noexcept { return category_; }

  private:
    ErrorCategory category_;
};

// Builders for the common shapes of message. `where` names the object ("BatchNormalization 'bn1'",
// "npy file 'x.npy'"); `argument` the argument; `value` what was received; `expected` the rule.
Error invalid_argument(std::string_view where, std::string_view argument, std::string_view value,
                       std::string_view expected);
Error shape_mismatch(std::string_view where, std::string_view argument, std::string_view value,
                     std::string_view expected);
Error unsupported(std::string_view where, std::string_view what, std::string_view why);
Error internal_error(std::string_view where, std::string_view what);

}  // namespace keel
