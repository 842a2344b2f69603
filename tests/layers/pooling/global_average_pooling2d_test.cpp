// GlobalAveragePooling2D against a naive double-precision reference, on 56x56 and 7x7 images in
// both data formats, with and without keepdims; errors, configs, concurrency.

#include <keel/layers/pooling/global_average_pooling2d.hpp>

#include <nlohmann/json.hpp>

#include "layers/pooling/global_average.hpp"
#include "layers/pooling/pooling_test_support.hpp"

namespace keel {
namespace {

using pooling_test::expect_error;

struct GlobalCase {
    std::int64_t batch, channels, height, width;
    bool channels_first;
    bool keepdims;
};

// Two paths, two bounds from their arithmetic (u = 2^-24, n = rows·cols):
// - oneDNN sums n f32 terms (error <= (n-1)·u·Σ|x|), divides by n (or multiplies by 1/n: two
//   more roundings), so |y - mean| <= ((n-1)/n)·u·Σ|x| + 2u·|mean|;
// - keel's kernel sums in double (error <= n·2^-53·Σ|x|, negligible) and rounds the mean once
//   (u·|mean|), so its bound is far tighter.
void expect_close(const std::vector<float>& y, const std::vector<float>& x, const GlobalCase& c,
                  bool exact_sum, const std::string& path) {
    const std::int64_t pixels = c.height * c.width;
    const double n = static_cast<double>(pixels);
    for (std::int64_t b = 0; b < c.batch; ++b) {
        for (std::int64_t ch = 0; ch < c.channels; ++ch) {
            double sum = 0.0, magnitude = 0.0;
            for (std::int64_t p = 0; p < pixels; ++p) {
                const std::int64_t index = c.channels_first ? (b * c.channels + ch) * pixels + p
                                                            : (b * pixels + p) * c.channels + ch;
                sum += x[static_cast<std::size_t>(index)];
                magnitude += std::abs(x[static_cast<std::size_t>(index)]);
            }
            const double mean = sum / n;
            const double tolerance =
                exact_sum ? 0x1p-24 * std::abs(mean) + n * 0x1p-52 * magnitude
                          : (n - 1) / n * 0x1p-24 * magnitude + 0x1p-23 * std::abs(mean);
            ASSERT_NEAR(y[static_cast<std::size_t>(b * c.channels + ch)], mean, tolerance)
                << path << ": N" << c.batch << " C" << c.channels << " " << c.height << "x"
                << c.width << (c.channels_first ? " NCHW" : " NHWC") << " at n=" << b
                << " c=" << ch;
        }
    }
}

void expect_matches_reference(const GlobalCase& c, unsigned seed) {
    const Shape shape = c.channels_first ? Shape{c.batch, c.channels, c.height, c.width}
                                         : Shape{c.batch, c.height, c.width, c.channels};
    const Tensor input = pooling_test::random_tensor(shape, seed);
    GlobalAveragePooling2DOptions options;
    options.data_format = c.channels_first ? "channels_first" : "channels_last";
    options.keepdims = c.keepdims;
    GlobalAveragePooling2D layer(options);
    const Tensor output = layer.call(input);
    const Shape expected_shape = !c.keepdims
                                     ? Shape{c.batch, c.channels}
                                     : (c.channels_first ? Shape{c.batch, c.channels, 1, 1}
                                                         : Shape{c.batch, 1, 1, c.channels});
    ASSERT_EQ(output.shape(), expected_shape);
    const std::vector<float> x = input.to_floats();
    expect_close(output.to_floats(), x, c, /*exact_sum=*/false, "layer");

    std::vector<float> kernel(static_cast<std::size_t>(c.batch * c.channels));
    pooling::global_average(default_engine(), input.data_as<float>(), kernel.data(), c.batch,
                            c.channels, c.height * c.width, c.channels_first);
    expect_close(kernel, x, c, /*exact_sum=*/true, "keel's kernel");
}

TEST(GlobalAveragePooling2D, MatchesReferenceOn56x56And7x7) {
    unsigned seed = 200;
    for (const bool channels_first : {false, true}) {
        for (const bool keepdims : {false, true}) {
            for (const std::int64_t batch : {1, 3}) {
                for (const std::int64_t channels : {3, 17, 130}) {
                    expect_matches_reference({batch, channels, 56, 56, channels_first, keepdims},
                                             seed++);
                    expect_matches_reference({batch, channels, 7, 7, channels_first, keepdims},
                                             seed++);
                }
            }
            expect_matches_reference({2, 9, 5, 3, channels_first, keepdims}, seed++);
        }
    }
}

TEST(GlobalAveragePooling2D, EmptyImagesGiveNaNAsReduceMean) {
    GlobalAveragePooling2D layer;
    const Tensor output = layer.call(Tensor({2, 0, 4, 3}, DType::f32));
    ASSERT_EQ(output.shape(), (Shape{2, 3}));
    for (const float value : output.to_floats()) EXPECT_TRUE(std::isnan(value));
    EXPECT_EQ(layer.compute_output_shape({0, 5, 5, 3}), (Shape{0, 3}));
}

TEST(GlobalAveragePooling2D, InfersShapesWithUnknownDimensions) {
    GlobalAveragePooling2D flat;
    EXPECT_EQ(flat.compute_output_shape({-1, -1, -1, 64}), (Shape{-1, 64}));
    GlobalAveragePooling2DOptions options;
    options.keepdims = true;
    options.data_format = "channels_first";
    GlobalAveragePooling2D kept(options);
    EXPECT_EQ(kept.compute_output_shape({-1, 64, 7, 7}), (Shape{-1, 64, 1, 1}));
    expect_error(
        [&] {
            kept.compute_output_shape({-1, 64, 7});
        },
        ErrorCategory::shape_mismatch, "input shape = [-1, 64, 7]");
}

TEST(GlobalAveragePooling2D, ArgumentErrorsNameTheArgument) {
    GlobalAveragePooling2DOptions options;
    options.data_format = "channels_middle";
    expect_error([&] { GlobalAveragePooling2D layer(options); }, ErrorCategory::invalid_argument,
                 "data_format = \"channels_middle\"");
    options.data_format.reset();
    options.dtype = "float64";
    expect_error([&] { GlobalAveragePooling2D layer(options); }, ErrorCategory::unsupported,
                 "dtype");
}

TEST(GlobalAveragePooling2D, ConfigRoundTripsInEverySpelling) {
    const nlohmann::json keras2 = {{"name", "gap"},
                                   {"trainable", true},
                                   {"dtype", "float32"},
                                   {"data_format", "channels_last"},
                                   {"keepdims", true}};
    EXPECT_EQ(GlobalAveragePooling2D::from_config(keras2)->get_config(), keras2);
    // TF 1.15 wrote no keepdims; Keras 3 a dtype policy.
    const auto tf115 = GlobalAveragePooling2D::from_config({{"name", "gap1"},
                                                            {"trainable", true},
                                                            {"dtype", "float32"},
                                                            {"data_format", "channels_first"}});
    EXPECT_EQ(tf115->get_config()["keepdims"], false);
    EXPECT_EQ(tf115->compute_output_shape({-1, 8, 3, 3}), (Shape{-1, 8}));
    const auto keras3 = GlobalAveragePooling2D::from_config({{"name", "gap3"},
                                                             {"trainable", true},
                                                             {"dtype",
                                                              {{"module", "keras"},
                                                               {"class_name", "DTypePolicy"},
                                                               {"config", {{"name", "float32"}}},
                                                               {"registered_name", nullptr}}},
                                                             {"data_format", "channels_last"},
                                                             {"keepdims", false}});
    EXPECT_EQ(GlobalAveragePooling2D::from_config(keras3->get_config())->get_config(),
              keras3->get_config());
    expect_error(
        [] {
            GlobalAveragePooling2D::from_config({{"keepdims", 1}});
        },
        ErrorCategory::invalid_argument, "keepdims");
    expect_error(
        [] {
            GlobalAveragePooling2D::from_config({{"pool_size", 2}});
        },
        ErrorCategory::invalid_argument, "pool_size");
}

TEST(GlobalAveragePooling2D, ConcurrentForwardIsIdentical) {
    for (const char* format : {"channels_last", "channels_first"}) {
        GlobalAveragePooling2DOptions options;
        options.data_format = format;
        GlobalAveragePooling2D layer(options);
        const std::vector<Tensor> inputs{pooling_test::random_tensor({3, 56, 56, 70}, 13)};
        pooling_test::expect_concurrent_forward_identical(layer, inputs);
    }
}

}  // namespace
}  // namespace keel
