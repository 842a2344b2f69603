#pragma once

// Internal: TensorFlow's padding arithmetic for 2-D windows ('valid' and 'same'), per spatial
// dimension. Keras computes output sizes with the same rules, so layers, shape inference and the
// kernels agree on every size.

#include <cstdint>
#include <string_view>

namespace keel::convolutional {

enum class Padding { valid, same };

// "valid" or "same" (Keras' spelling, lower case).
std::string_view padding_name(Padding padding) noexcept;

// Zeros added before (top/left) and after (bottom/right) one spatial dimension.
struct PaddingSplit {
    std::int64_t before = 0;
    std::int64_t after = 0;

    friend bool operator==(const PaddingSplit&, const PaddingSplit&) = default;
};

// One spatial dimension of a window: kernel size, stride and dilation (all >= 1).
struct Window {
    std::int64_t kernel = 1;
    std::int64_t stride = 1;
    std::int64_t dilation = 1;
};

// The extent the dilated kernel covers: (kernel − 1)·dilation + 1.
std::int64_t dilated_kernel(const Window& window) noexcept;

// Keras' conv_output_length: 'same' gives ceil(input / stride); 'valid' gives
// ceil((input − dilated_kernel + 1) / stride), which is zero or negative when the input is
// smaller than the dilated kernel (callers reject that, as Keras does). An unknown input (-1)
// gives an unknown output (-1).
std::int64_t output_size(std::int64_t input, const Window& window, Padding padding) noexcept;

// TensorFlow's split: 'valid' pads nothing; 'same' pads
//   total = max((ceil(input / stride) − 1)·stride + dilated_kernel − input, 0)
// with before = floor(total / 2) and after = total − before (the odd zero goes after).
// `input` must be known (>= 0).
PaddingSplit padding_split(std::int64_t input, const Window& window, Padding padding) noexcept;

}  // namespace keel::convolutional
