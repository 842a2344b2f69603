#include "layers/convolutional/tf_padding.hpp"

#include <algorithm>

namespace keel::convolutional {
namespace {

// Python's floor division for a positive divisor (Keras' `//` on possibly negative lengths).
std::int64_t floor_divide(std::int64_t numerator, std::int64_t divisor) noexcept {
    const std::int64_t quotient = numerator / divisor;
    return (numerator % divisor != 0 && numerator < 0) ? quotient - 1 : quotient;
}

}  // namespace

std::string_view padding_name(Padding padding) noexcept {
    return padding == Padding::same ? "same" : "valid";
}

std::int64_t dilated_kernel(const Window& window) noexcept {
    return (window.kernel - 1) * window.dilation + 1;
}

std::int64_t output_size(std::int64_t input, const Window& window, Padding padding) noexcept {
    if (input < 0) return -1;
    const std::int64_t length =
        padding == Padding::same ? input : input - dilated_kernel(window) + 1;
    return floor_divide(length + window.stride - 1, window.stride);
}

PaddingSplit padding_split(std::int64_t input, const Window& window, Padding padding) noexcept {
    if (padding == Padding::valid) return {};
    const std::int64_t output = (input + window.stride - 1) / window.stride;
    const std::int64_t total =
        std::max<std::int64_t>((output - 1) * window.stride + dilated_kernel(window) - input, 0);
    return {total / 2, total - total / 2};
}

}  // namespace keel::convolutional
