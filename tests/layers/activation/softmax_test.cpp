// tf.keras.layers.Softmax: rows sum to 1, large inputs do not overflow, any axis (and adjacent
// axis lists) against a double reference, config round trip and argument errors.

#include <keel/layers/activation/softmax.hpp>

#include <cmath>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

using ::testing::HasSubstr;

constexpr double kUnit = 0x1p-24;

template <typename Action>
void expect_error(Action&& action, ErrorCategory category, const std::string& fragment) {
    try {
        action();
        ADD_FAILURE() << "expected keel::Error containing '" << fragment << "'";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), category) << error.what();
        EXPECT_THAT(error.what(), HasSubstr(fragment));
    }
}

std::vector<float> pattern(std::size_t count, float scale) {
    std::vector<float> values(count);
    for (std::size_t i = 0; i < count; ++i) {
        values[i] = static_cast<float>(static_cast<int>(i * 31 % 17) - 8) * scale;
    }
    return values;
}

// Softmax over dimensions [first, last] of a row-major `shape`, in double.
std::vector<double> reference(const std::vector<float>& x, const Shape& shape, int first,
                              int last) {
    std::int64_t outer = 1, length = 1, inner = 1;
    for (int i = 0; i < static_cast<int>(shape.size()); ++i) {
        (i < first ? outer : i <= last ? length : inner) *= shape[static_cast<std::size_t>(i)];
    }
    std::vector<double> y(x.size());
    for (std::int64_t o = 0; o < outer; ++o) {
        for (std::int64_t j = 0; j < inner; ++j) {
            double sum = 0.0;
            for (std::int64_t i = 0; i < length; ++i) {
                sum += std::exp(
                    static_cast<double>(x[static_cast<std::size_t>((o * length + i) * inner + j)]));
            }
            for (std::int64_t i = 0; i < length; ++i) {
                const auto index = static_cast<std::size_t>((o * length + i) * inner + j);
                y[index] = std::exp(static_cast<double>(x[index])) / sum;
            }
        }
    }
    return y;
}

void expect_softmax(std::variant<int, std::vector<int>> axis, const Shape& shape, int first,
                    int last) {
    SoftmaxOptions options;
    options.axis = axis;
    Softmax layer(options);
    const std::vector<float> x = pattern(static_cast<std::size_t>(element_count(shape)), 0.4f);
    const std::vector<float> y = layer.call(Tensor::from_floats(shape, x)).to_floats();
    const std::vector<double> expected = reference(x, shape, first, last);
    // The inputs span 16·0.4 = 6.4: x − max rounds with relative error u, so each exp carries
    // (2 + 6.4)u, the sum the same, plus the sum's and division's roundings: 20u relative.
    for (std::size_t i = 0; i < y.size(); ++i) {
        EXPECT_NEAR(y[i], expected[i], 20 * kUnit * expected[i]) << i;
    }
}

TEST(SoftmaxLayer, AnyAxisMatchesTheReference) {
    expect_softmax(-1, {3, 5}, 1, 1);
    expect_softmax(1, {2, 7, 3}, 1, 1);
    expect_softmax(0, {4, 3}, 0, 0);
    expect_softmax(-3, {2, 5, 3, 2}, 1, 1);
    expect_softmax(std::vector<int>{1, 2}, {2, 3, 4, 5}, 1, 2);
    expect_softmax(std::vector<int>{-1, -2}, {2, 3, 5}, 1, 2);
    expect_softmax(std::vector<int>{2}, {2, 3, 5}, 2, 2);
}

TEST(SoftmaxLayer, RowsSumToOneAndLargeInputsDoNotOverflow) {
    Softmax layer;
    const Shape shape = {64, 33};
    std::vector<float> x = pattern(64 * 33, 25.0f);  // values up to ±200: e^200 overflows f32
    x[5] = 3e38f;
    const std::vector<float> y = layer.call(Tensor::from_floats(shape, x)).to_floats();
    for (int row = 0; row < 64; ++row) {
        double sum = 0.0;
        for (int i = 0; i < 33; ++i) {
            const float value = y[static_cast<std::size_t>(row * 33 + i)];
            ASSERT_TRUE(std::isfinite(value));
            sum += value;
        }
        // x − max is exact here (multiples of 25), so each output carries exp's 2 ulp, the f32
        // sum's and the division's rounding: <= 4u of itself. The outputs add to 1 in exact
        // arithmetic, so their double sum is within 4u of 1; 8u leaves margin.
        EXPECT_NEAR(sum, 1.0, 8 * kUnit) << row;
    }
    EXPECT_EQ(y[5], 1.0f);
}

TEST(SoftmaxLayer, AxisErrors) {
    SoftmaxOptions options;
    options.axis = 2;
    Softmax layer(options);
    expect_error(
        [&] {
            layer.compute_output_shape({4, 3});
        },
        ErrorCategory::invalid_argument, "axis = [2]; expected axes in [-2, 2)");
    options.axis = std::vector<int>{0, 2};
    Softmax gapped(options);
    expect_error(
        [&] {
            gapped.compute_output_shape({4, 3, 2});
        },
        ErrorCategory::unsupported, "adjacent");
    options.axis = std::vector<int>{1, -1};
    Softmax duplicate(options);
    expect_error(
        [&] {
            duplicate.compute_output_shape({4, 3});
        },
        ErrorCategory::invalid_argument, "duplicate");
    options.axis = std::vector<int>{};
    expect_error([&] { Softmax empty(options); }, ErrorCategory::invalid_argument, "axis = []");
}

TEST(SoftmaxLayer, ConfigRoundTrip) {
    for (const nlohmann::json& axis : {nlohmann::json(-1), nlohmann::json({1, 2})}) {
        const auto layer =
            Softmax::from_config({{"name", "s"}, {"axis", axis}, {"trainable", false}});
        const nlohmann::json config = layer->get_config();
        EXPECT_EQ(config["axis"], axis);
        EXPECT_EQ(Softmax::from_config(config)->get_config(), config);
    }
    expect_error(
        [] {
            Softmax::from_config({{"axis", "last"}});
        },
        ErrorCategory::invalid_argument, "Softmax config: axis = \"last\"");
    expect_error(
        [] {
            Softmax::from_config({{"beta", 1.0}});
        },
        ErrorCategory::invalid_argument, "beta = 1.0");
}

TEST(SoftmaxLayer, ShapeInferenceWithUnknownBatch) {
    Softmax layer;
    EXPECT_EQ(layer.compute_output_shape({-1, 10}), (Shape{-1, 10}));
}

}  // namespace
}  // namespace keel
