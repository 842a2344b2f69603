// AveragePooling2D against a naive double-precision reference ('same' padding excluded from the
// count), on the path keel picks and on keel's own kernel; errors, configs, concurrency.

#include <keel/layers/pooling/average_pooling2d.hpp>

#include <nlohmann/json.hpp>

#include "layers/pooling/pooling_2d.hpp"
#include "layers/pooling/pooling_test_support.hpp"

namespace keel {
namespace {

using pooling_test::Case;
using pooling_test::expect_error;

constexpr double kUnitRoundoff = 0x1p-24;

AveragePooling2DOptions options_for(const Case& c) {
    AveragePooling2DOptions options;
    options.pool_size = {c.pool_h, c.pool_w};
    options.strides = std::array<std::int64_t, 2>{c.stride_h, c.stride_w};
    options.padding = c.same ? "same" : "valid";
    options.data_format = c.channels_first ? "channels_first" : "channels_last";
    return options;
}

// An f32 sum of n terms in any order is off by at most (n-1)·u·Σ|x| (u = 2^-24); dividing by n
// divides that error by n and rounds once more (u·|mean|). So |y - mean| <= u·(Σ|x| + |mean|)
// bounds it (Σ|x|/n·(n-1) <= Σ|x|), with a sliver for the double reference's own rounding.
void expect_matches_reference(const Tensor& output, const pooling_test::Reference& reference,
                              const std::string& what) {
    ASSERT_EQ(output.shape(), reference.shape) << what;
    const std::vector<float> values = output.to_floats();
    for (std::size_t i = 0; i < values.size(); ++i) {
        const pooling_test::Pooled& expected = reference.outputs[i];
        const double tolerance =
            kUnitRoundoff * (expected.magnitude + std::abs(expected.value)) * 1.001;
        ASSERT_NEAR(values[i], expected.value, tolerance) << what << " at " << i;
    }
}

TEST(AveragePooling2D, MatchesReferenceOverTheMatrixOnBothPaths) {
    unsigned seed = 100;
    for (const Case& c : pooling_test::case_matrix()) {
        const Tensor input = pooling_test::random_tensor(c.input_shape(), seed++);
        const auto reference = pooling_test::reference_pool(input, c, /*max=*/false);
        AveragePooling2D layer(options_for(c));
        const std::string implementation = layer.implementation(c.input_shape());
        EXPECT_THAT(implementation, ::testing::Not(::testing::HasSubstr("ref")));
        expect_matches_reference(layer.call(input), reference,
                                 c.describe() + " on " + implementation);

        pooling::Window window;
        window.pool_size = {c.pool_h, c.pool_w};
        window.strides = {c.stride_h, c.stride_w};
        window.same_padding = c.same;
        window.channels_first = c.channels_first;
        const pooling::Geometry geometry = pooling::make_geometry("test", window, c.input_shape());
        expect_matches_reference(pooling::pool(default_engine(), pooling::PoolingKind::average,
                                               geometry, input, pooling::Path::keel_kernel),
                                 reference, c.describe() + " on keel's kernel");
    }
}

TEST(AveragePooling2D, SamePaddingIsExcludedFromTheCount) {
    // Ones everywhere: a count that included the padding would give less than 1 at the borders.
    AveragePooling2DOptions options;
    options.pool_size = {3, 3};
    options.strides = std::array<std::int64_t, 2>{1, 1};
    options.padding = "same";
    for (const char* format : {"channels_last", "channels_first"}) {
        options.data_format = format;
        AveragePooling2D layer(options);
        for (const float value : layer.call(Tensor::filled({2, 5, 5, 5}, 1.0f)).to_floats()) {
            EXPECT_EQ(value, 1.0f) << format;
        }
    }
}

TEST(AveragePooling2D, InfersShapesWithUnknownBatch) {
    AveragePooling2DOptions options;
    options.pool_size = {3, 3};
    options.strides = std::array<std::int64_t, 2>{2, 2};
    options.padding = "same";
    AveragePooling2D layer(options);
    EXPECT_EQ(layer.compute_output_shape({-1, 7, 8, 3}), (Shape{-1, 4, 4, 3}));
    options.padding = "valid";
    AveragePooling2D valid(options);
    EXPECT_EQ(valid.compute_output_shape({-1, 7, 8, 3}), (Shape{-1, 3, 3, 3}));
}

TEST(AveragePooling2D, ArgumentErrorsNameTheArgument) {
    AveragePooling2DOptions options;
    options.pool_size = {2, -1};
    expect_error([&] { AveragePooling2D layer(options); }, ErrorCategory::invalid_argument,
                 "pool_size = [2, -1]");
    options.pool_size = {2, 2};
    options.padding = "causal";
    expect_error([&] { AveragePooling2D layer(options); }, ErrorCategory::invalid_argument,
                 "padding");
    options.padding = "valid";
    options.dtype = "bfloat16";
    expect_error([&] { AveragePooling2D layer(options); }, ErrorCategory::unsupported, "dtype");
    AveragePooling2D layer;
    expect_error(
        [&] {
            layer.call(Tensor({2, 4, 4, 3, 1}, DType::f32));
        },
        ErrorCategory::shape_mismatch, "[2, 4, 4, 3, 1]");
}

TEST(AveragePooling2D, ConfigRoundTripsInEverySpelling) {
    const nlohmann::json keras2 = {{"name", "avg"},
                                   {"trainable", false},
                                   {"dtype", "float32"},
                                   {"pool_size", {2, 3}},
                                   {"padding", "same"},
                                   {"strides", {1, 2}},
                                   {"data_format", "channels_first"}};
    const auto layer = AveragePooling2D::from_config(keras2);
    EXPECT_FALSE(layer->trainable());
    EXPECT_EQ(layer->get_config(), keras2);
    const nlohmann::json keras3 = {{"name", "avg3"},
                                   {"trainable", true},
                                   {"dtype",
                                    {{"module", "keras"},
                                     {"class_name", "DTypePolicy"},
                                     {"config", {{"name", "float32"}}},
                                     {"registered_name", nullptr}}},
                                   {"pool_size", {2, 2}},
                                   {"padding", "valid"},
                                   {"strides", {2, 2}},
                                   {"data_format", "channels_last"}};
    nlohmann::json expected = keras3;
    expected["dtype"] = "float32";
    EXPECT_EQ(AveragePooling2D::from_config(keras3)->get_config(), expected);
    expect_error(
        [] {
            AveragePooling2D::from_config({{"pool_size", 2}, {"unknown", 1}});
        },
        ErrorCategory::invalid_argument, "unknown");
}

TEST(AveragePooling2D, ConcurrentForwardIsIdentical) {
    AveragePooling2DOptions options;
    options.pool_size = {3, 3};
    options.strides = std::array<std::int64_t, 2>{1, 1};
    options.padding = "same";
    options.data_format = "channels_first";
    AveragePooling2D layer(options);
    const std::vector<Tensor> inputs{pooling_test::random_tensor({3, 19, 29, 31}, 12)};
    pooling_test::expect_concurrent_forward_identical(layer, inputs);
}

}  // namespace
}  // namespace keel
