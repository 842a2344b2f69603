#include <keel/layers/convolutional/depthwise_conv2d.hpp>

#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

using ::testing::HasSubstr;

struct DepthwiseCase {
    bool channels_last = true;
    std::int64_t batch = 1, height = 9, width = 8, channels = 5, multiplier = 1;
    std::int64_t kernel_h = 3, kernel_w = 3, stride = 1, dilation = 1;
    bool same = false;
    bool use_bias = true;

    std::string describe() const {
        return std::string(channels_last ? "NHWC" : "NCHW") + " N" + std::to_string(batch) + " C" +
               std::to_string(channels) + " M" + std::to_string(multiplier) + " k" +
               std::to_string(kernel_h) + "x" + std::to_string(kernel_w) + " s" +
               std::to_string(stride) + " d" + std::to_string(dilation) +
               (same ? " same" : " valid") + (use_bias ? " bias" : " no-bias");
    }
    Shape input_shape() const {
        if (channels_last) return {batch, height, width, channels};
        return {batch, channels, height, width};
    }
    Shape kernel_shape() const { return {kernel_h, kernel_w, channels, multiplier}; }
};

std::vector<float> random_values(std::size_t count, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> distribution(-1.0f, 1.0f);
    std::vector<float> values(count);
    for (float& value : values) value = distribution(generator);
    return values;
}

// tf.nn.depthwise_conv2d written out: output channel c·M + m sums kernel[kh][kw][c][m] times
// input channel c over the window (TF's 'same' padding: total = max((out−1)·s + extent − in, 0),
// floor(total / 2) before). Compares with f32 output within (K+1)·2^-23·Σ|terms|, K = kh·kw
// products per output (the bound derived in conv2d_test.cpp).
void expect_matches_reference(const DepthwiseCase& c, const std::vector<float>& x,
                              const std::vector<float>& kernel, const std::vector<float>& bias,
                              const Tensor& actual) {
    const auto out_size = [&](std::int64_t in, std::int64_t k) {
        const std::int64_t extent = (k - 1) * c.dilation + 1;
        return c.same ? (in + c.stride - 1) / c.stride : (in - extent) / c.stride + 1;
    };
    const auto before = [&](std::int64_t in, std::int64_t out, std::int64_t k) {
        const std::int64_t extent = (k - 1) * c.dilation + 1;
        return c.same ? std::max<std::int64_t>((out - 1) * c.stride + extent - in, 0) / 2 : 0;
    };
    const std::int64_t oh_count = out_size(c.height, c.kernel_h);
    const std::int64_t ow_count = out_size(c.width, c.kernel_w);
    const std::int64_t top = before(c.height, oh_count, c.kernel_h);
    const std::int64_t left = before(c.width, ow_count, c.kernel_w);
    const std::int64_t filters = c.channels * c.multiplier;
    const Shape expected_shape = c.channels_last ? Shape{c.batch, oh_count, ow_count, filters}
                                                 : Shape{c.batch, filters, oh_count, ow_count};
    ASSERT_EQ(actual.shape(), expected_shape) << c.describe();
    const float* data = actual.data_as<float>();
    const double terms = static_cast<double>(c.kernel_h * c.kernel_w + 1);
    for (std::int64_t n = 0; n < c.batch; ++n) {
        for (std::int64_t ch = 0; ch < c.channels; ++ch) {
            for (std::int64_t m = 0; m < c.multiplier; ++m) {
                const std::int64_t f = ch * c.multiplier + m;
                for (std::int64_t oh = 0; oh < oh_count; ++oh) {
                    for (std::int64_t ow = 0; ow < ow_count; ++ow) {
                        double sum = c.use_bias ? bias[static_cast<std::size_t>(f)] : 0.0;
                        double magnitude = std::abs(sum);
                        for (std::int64_t kh = 0; kh < c.kernel_h; ++kh) {
                            for (std::int64_t kw = 0; kw < c.kernel_w; ++kw) {
                                const std::int64_t ih = oh * c.stride + kh * c.dilation - top;
                                const std::int64_t iw = ow * c.stride + kw * c.dilation - left;
                                if (ih < 0 || ih >= c.height || iw < 0 || iw >= c.width) continue;
                                const std::int64_t xi =
                                    c.channels_last
                                        ? ((n * c.height + ih) * c.width + iw) * c.channels + ch
                                        : ((n * c.channels + ch) * c.height + ih) * c.width + iw;
                                const double term =
                                    static_cast<double>(kernel[static_cast<std::size_t>(
                                        ((kh * c.kernel_w + kw) * c.channels + ch) * c.multiplier +
                                        m)]) *
                                    x[static_cast<std::size_t>(xi)];
                                sum += term;
                                magnitude += std::abs(term);
                            }
                        }
                        const std::int64_t yi =
                            c.channels_last ? ((n * oh_count + oh) * ow_count + ow) * filters + f
                                            : ((n * filters + f) * oh_count + oh) * ow_count + ow;
                        const double error = std::abs(data[yi] - sum);
                        ASSERT_LE(error, terms * std::ldexp(1.0, -23) * magnitude)
                            << c.describe() << " n" << n << " f" << f << " (" << oh << ", " << ow
                            << ")";
                    }
                }
            }
        }
    }
}

DepthwiseConv2DOptions options_for(const DepthwiseCase& c) {
    DepthwiseConv2DOptions options;
    options.kernel_size = {c.kernel_h, c.kernel_w};
    options.strides = {c.stride, c.stride};
    options.dilation_rate = {c.dilation, c.dilation};
    options.padding = c.same ? "same" : "valid";
    options.depth_multiplier = c.multiplier;
    options.data_format = c.channels_last ? "channels_last" : "channels_first";
    options.use_bias = c.use_bias;
    return options;
}

TEST(DepthwiseConv2D, MatchesTheReferenceOverTheMatrix) {
    std::uint32_t seed = 900;
    int index = 0;
    for (bool channels_last : {true, false}) {
        for (std::int64_t multiplier : {1, 2, 3}) {
            for (int motion = 0; motion < 3; ++motion) {
                for (bool same : {false, true}) {
                    DepthwiseCase c;
                    c.channels_last = channels_last;
                    c.multiplier = multiplier;
                    c.stride = motion == 1 ? 2 : 1;
                    c.dilation = motion == 2 ? 2 : 1;
                    c.same = same;
                    c.batch = index % 2 == 0 ? 1 : 3;
                    c.use_bias = index % 3 != 2;
                    c.channels = index % 4 < 2 ? 5 : 32;
                    if (index % 5 == 3) {
                        c.kernel_h = 5;
                        c.kernel_w = 2;
                    }
                    ++index;
                    const auto x = random_values(
                        static_cast<std::size_t>(element_count(c.input_shape())), ++seed);
                    const auto kernel = random_values(
                        static_cast<std::size_t>(element_count(c.kernel_shape())), ++seed);
                    const auto bias =
                        random_values(static_cast<std::size_t>(c.channels * c.multiplier), ++seed);
                    DepthwiseConv2D layer(options_for(c));
                    layer.build(c.input_shape());
                    layer.set_variable("depthwise_kernel",
                                       Tensor::from_floats(c.kernel_shape(), kernel));
                    if (c.use_bias) {
                        layer.set_variable("bias",
                                           Tensor::from_floats({c.channels * c.multiplier}, bias));
                    }
                    const Tensor y = layer.call(Tensor::from_floats(c.input_shape(), x));
                    expect_matches_reference(c, x, kernel, bias, y);
                }
            }
        }
    }
}

TEST(DepthwiseConv2D, VariablesAndShapes) {
    DepthwiseConv2DOptions options;
    options.kernel_size = {3, 2};
    options.depth_multiplier = 3;
    options.padding = "same";
    options.strides = {2, 2};
    DepthwiseConv2D layer(options);
    EXPECT_EQ(layer.compute_output_shape({-1, 9, 8, 4}), (Shape{-1, 5, 4, 12}));
    layer.build(Shape{-1, 9, 8, 4});
    EXPECT_EQ(layer.variable_names(), (std::vector<std::string>{"depthwise_kernel", "bias"}));
    EXPECT_EQ(layer.variable("depthwise_kernel").shape(), (Shape{3, 2, 4, 3}));
    EXPECT_EQ(layer.variable("bias").shape(), (Shape{12}));
    EXPECT_EQ(layer.call(Tensor::filled({2, 9, 8, 4}, 1.0f)).shape(), (Shape{2, 5, 4, 12}));

    options.data_format = "channels_first";
    options.use_bias = false;
    DepthwiseConv2D first(options);
    EXPECT_EQ(first.compute_output_shape({-1, 4, 9, -1}), (Shape{-1, 12, 5, -1}));
    first.build(Shape{-1, 4, 9, 8});
    EXPECT_EQ(first.variable_names(), (std::vector<std::string>{"depthwise_kernel"}));
}

template <typename Function>
void expect_error(Function&& function, ErrorCategory category, const std::string& fragment) {
    try {
        function();
        ADD_FAILURE() << "no keel::Error; expected one mentioning " << fragment;
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), category) << error.what();
        EXPECT_THAT(error.what(), HasSubstr(fragment));
    }
}

TEST(DepthwiseConv2D, RejectsBadArgumentsAndInputs) {
    const auto with = [](auto change) {
        DepthwiseConv2DOptions options;
        options.kernel_size = {3, 3};
        change(options);
        return [options] { DepthwiseConv2D layer(options); };
    };
    const auto invalid = ErrorCategory::invalid_argument;
    expect_error(with([](DepthwiseConv2DOptions& o) {
                     o.kernel_size = {0, 0};
                 }),
                 invalid, "kernel_size = [0, 0]");
    expect_error(with([](DepthwiseConv2DOptions& o) { o.depth_multiplier = 0; }), invalid,
                 "depth_multiplier = 0");
    expect_error(with([](DepthwiseConv2DOptions& o) {
                     o.strides = {2, 1};
                     o.dilation_rate = {2, 2};
                 }),
                 invalid, "dilation_rate = [2, 2]");
    expect_error(with([](DepthwiseConv2DOptions& o) { o.padding = "full"; }), invalid,
                 "padding = \"full\"");
    expect_error(with([](DepthwiseConv2DOptions& o) { o.depthwise_initializer = 3; }), invalid,
                 "depthwise_initializer");
    expect_error(with([](DepthwiseConv2DOptions& o) { o.dtype = "bfloat16"; }),
                 ErrorCategory::unsupported, "dtype");

    DepthwiseConv2DOptions options;
    options.kernel_size = {3, 3};
    expect_error(
        [&] {
            DepthwiseConv2D(options).build(Shape{1, 8, 8, -1});
        },
        ErrorCategory::shape_mismatch, "known channel dimension");
    DepthwiseConv2D layer(options);
    layer.build(Shape{-1, 8, 8, 3});
    expect_error(
        [&] {
            layer.call(Tensor::filled({1, 8, 8, 2}, 1.0f));
        },
        ErrorCategory::shape_mismatch, "3 channels");
}

// DepthwiseConv2D as Keras 2.13 writes it: Conv's keys minus filters/kernel_*, with groups 1.
constexpr const char* kKeras213Config = R"({
  "name": "depthwise_conv2d", "trainable": true, "dtype": "float32", "kernel_size": [3, 3],
  "strides": [1, 1], "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1],
  "groups": 1, "activation": "linear", "use_bias": false,
  "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                       "registered_name": null},
  "bias_regularizer": null, "activity_regularizer": null, "bias_constraint": null,
  "depth_multiplier": 2,
  "depthwise_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                            "config": {"seed": null}, "registered_name": null},
  "depthwise_regularizer": null, "depthwise_constraint": null})";

constexpr const char* kTf115Config = R"({
  "name": "conv_dw_1", "trainable": true, "dtype": "float32", "kernel_size": [3, 3],
  "strides": [2, 2], "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
  "activation": "relu", "use_bias": true,
  "bias_initializer": {"class_name": "Zeros", "config": {"dtype": "float32"}},
  "bias_regularizer": null, "activity_regularizer": null, "bias_constraint": null,
  "depth_multiplier": 1,
  "depthwise_initializer": {"class_name": "GlorotUniform", "config": {"seed": null, "dtype": "float32"}},
  "depthwise_regularizer": null, "depthwise_constraint": null})";

TEST(DepthwiseConv2D, ReadsKerasConfigsAndRoundTrips) {
    const auto keras2 = DepthwiseConv2D::from_config(nlohmann::json::parse(kKeras213Config));
    EXPECT_EQ(keras2->options().depth_multiplier, 2);
    EXPECT_FALSE(keras2->options().use_bias);
    EXPECT_EQ(keras2->compute_output_shape({-1, 7, 7, 8}), (Shape{-1, 7, 7, 16}));
    nlohmann::json config = keras2->get_config();
    EXPECT_EQ(DepthwiseConv2D::from_config(config)->get_config(), config);

    const auto tf1 = DepthwiseConv2D::from_config(nlohmann::json::parse(kTf115Config));
    EXPECT_EQ(tf1->name(), "conv_dw_1");
    EXPECT_EQ(tf1->options().activation, "relu");
    EXPECT_EQ(tf1->compute_output_shape({-1, 9, 9, 8}), (Shape{-1, 4, 4, 8}));
    config = tf1->get_config();
    EXPECT_EQ(DepthwiseConv2D::from_config(config)->get_config(), config);

    nlohmann::json grouped = nlohmann::json::parse(kKeras213Config);
    grouped["groups"] = 2;
    expect_error([&] { DepthwiseConv2D::from_config(grouped); }, ErrorCategory::unsupported,
                 "groups");
    nlohmann::json unknown = nlohmann::json::parse(kKeras213Config);
    unknown["filters"] = 3;
    expect_error([&] { DepthwiseConv2D::from_config(unknown); }, ErrorCategory::invalid_argument,
                 "filters");
}

TEST(DepthwiseConv2D, ConcurrentForwardGivesIdenticalResults) {
    DepthwiseCase c;
    c.batch = 3;
    c.channels = 24;
    c.multiplier = 2;
    c.same = true;
    DepthwiseConv2D layer(options_for(c));
    layer.build(c.input_shape());
    const Tensor x = Tensor::from_floats(
        c.input_shape(),
        random_values(static_cast<std::size_t>(element_count(c.input_shape())), 5));
    const Tensor reference = layer.call(x);
    const VariableSnapshot snapshot = layer.variables_snapshot();
    constexpr int kThreads = 4;
    std::vector<int> mismatches(kThreads, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (int r = 0; r < 10; ++r) {
                std::vector<VariableUpdate> updates;
                const Tensor y =
                    layer.forward({std::span<const Tensor>(&x, 1), *snapshot, false, updates});
                if (y.to_floats() != reference.to_floats()) ++mismatches[t];
            }
        });
    }
    for (std::thread& thread : threads) thread.join();
    EXPECT_EQ(mismatches, std::vector<int>(kThreads, 0));
}

}  // namespace
}  // namespace keel
