#include "layers/convolutional/tf_padding.hpp"

#include <gtest/gtest.h>

namespace keel::convolutional {
namespace {

TEST(TfPadding, ValidPadsNothingAndDropsTheRemainder) {
    EXPECT_EQ(padding_split(9, {3, 2, 1}, Padding::valid), (PaddingSplit{0, 0}));
    EXPECT_EQ(output_size(9, {3, 2, 1}, Padding::valid), 4);   // rows 0..8: windows at 0,2,4,6
    EXPECT_EQ(output_size(10, {3, 2, 1}, Padding::valid), 4);  // row 9 is left over
    EXPECT_EQ(output_size(7, {3, 1, 2}, Padding::valid), 3);   // dilated extent 5
    EXPECT_EQ(output_size(4, {3, 1, 2}, Padding::valid), 0);   // extent 5 does not fit
    EXPECT_EQ(output_size(2, {5, 1, 1}, Padding::valid), -2);  // Keras' (2 - 5 + 1) // 1
    EXPECT_EQ(output_size(-1, {3, 1, 1}, Padding::valid), -1);
}

TEST(TfPadding, SameSplitsTheTotalWithTheOddZeroAfter) {
    // 3x3 stride 1: total 2 (even), one each side.
    EXPECT_EQ(padding_split(7, {3, 1, 1}, Padding::same), (PaddingSplit{1, 1}));
    // stride 2 on 8: output 4, total (4-1)·2 + 3 − 8 = 1 (odd): nothing before, one after.
    EXPECT_EQ(padding_split(8, {3, 2, 1}, Padding::same), (PaddingSplit{0, 1}));
    EXPECT_EQ(output_size(8, {3, 2, 1}, Padding::same), 4);
    // stride 2 on 9: output 5, total 2.
    EXPECT_EQ(padding_split(9, {3, 2, 1}, Padding::same), (PaddingSplit{1, 1}));
    // kernel 2: total 1, after.
    EXPECT_EQ(padding_split(6, {2, 1, 1}, Padding::same), (PaddingSplit{0, 1}));
    // kernel 5 dilation 2: extent 9, total 8.
    EXPECT_EQ(padding_split(10, {5, 1, 2}, Padding::same), (PaddingSplit{4, 4}));
    // A stride larger than the kernel can make the formula negative: clamped to 0.
    EXPECT_EQ(padding_split(8, {1, 3, 1}, Padding::same), (PaddingSplit{0, 0}));
    EXPECT_EQ(output_size(8, {1, 3, 1}, Padding::same), 3);
    EXPECT_EQ(output_size(-1, {3, 2, 1}, Padding::same), -1);
}

// Over a grid of sizes: 'same' gives ceil(in / stride), the padded input yields exactly that
// many windows (the identity oneDNN checks), and the split is floor(total / 2) before.
TEST(TfPadding, SameIsConsistentOverAGrid) {
    for (std::int64_t input = 1; input <= 23; ++input) {
        for (std::int64_t kernel = 1; kernel <= 6; ++kernel) {
            for (std::int64_t stride = 1; stride <= 4; ++stride) {
                for (std::int64_t dilation = 1; dilation <= 3; ++dilation) {
                    const Window window{kernel, stride, dilation};
                    const std::int64_t out = output_size(input, window, Padding::same);
                    ASSERT_EQ(out, (input + stride - 1) / stride);
                    const PaddingSplit split = padding_split(input, window, Padding::same);
                    const std::int64_t total = split.before + split.after;
                    ASSERT_EQ(split.before, total / 2);
                    ASSERT_GE(total, 0);
                    const std::int64_t extent = (kernel - 1) * dilation + 1;
                    ASSERT_EQ(total,
                              std::max<std::int64_t>((out - 1) * stride + extent - input, 0));
                    ASSERT_EQ((input + total - extent) / stride + 1, out)
                        << input << " " << kernel << " " << stride << " " << dilation;
                    const std::int64_t valid = output_size(input, window, Padding::valid);
                    if (input >= extent) {
                        ASSERT_EQ(valid, (input - extent) / stride + 1);
                    }
                }
            }
        }
    }
}

}  // namespace
}  // namespace keel::convolutional
