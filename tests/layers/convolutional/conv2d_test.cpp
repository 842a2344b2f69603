#include <keel/layers/convolutional/conv2d.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

#include "layers/convolutional/convolution.hpp"

namespace keel {
namespace {

using convolutional::ConvolutionPath;
using convolutional::ConvolutionProblem;
using convolutional::ConvolutionReport;
using convolutional::DataFormat;
using convolutional::Padding;
using ::testing::HasSubstr;

// One convolution case of the test matrix.
struct Case {
    DataFormat format = DataFormat::channels_last;
    std::int64_t batch = 1, height = 11, width = 9, channels = 6, filters = 4, groups = 1;
    std::int64_t kernel_h = 3, kernel_w = 3, stride_h = 1, stride_w = 1;
    std::int64_t dilation_h = 1, dilation_w = 1;
    Padding padding = Padding::valid;
    bool use_bias = true;

    std::string describe() const {
        return std::string(format == DataFormat::channels_last ? "NHWC" : "NCHW") + " N" +
               std::to_string(batch) + " " + std::to_string(height) + "x" + std::to_string(width) +
               " C" + std::to_string(channels) + " F" + std::to_string(filters) + " G" +
               std::to_string(groups) + " k" + std::to_string(kernel_h) + "x" +
               std::to_string(kernel_w) + " s" + std::to_string(stride_h) + "," +
               std::to_string(stride_w) + " d" + std::to_string(dilation_h) + "," +
               std::to_string(dilation_w) + (padding == Padding::same ? " same" : " valid") +
               (use_bias ? " bias" : " no-bias");
    }
    Shape input_shape() const {
        if (format == DataFormat::channels_last) return {batch, height, width, channels};
        return {batch, channels, height, width};
    }
    Shape kernel_shape() const { return {kernel_h, kernel_w, channels / groups, filters}; }
};

std::vector<float> random_values(std::size_t count, std::uint32_t seed) {
    std::mt19937 generator(seed);
    std::uniform_real_distribution<float> distribution(-1.0f, 1.0f);
    std::vector<float> values(count);
    for (float& value : values) value = distribution(generator);
    return values;
}

// Per output element: the exact (double) result and Σ|terms| (products and bias), which bounds
// the f32 rounding error below.
struct Expected {
    Shape shape;
    std::vector<double> value;
    std::vector<double> magnitude;
};

// TensorFlow's convolution written out with its own padding arithmetic (independent of
// tf_padding.cpp): 'same' gives ceil(in / s) outputs and pads total = max((out−1)·s + extent −
// in, 0), floor(total / 2) before.
Expected reference_convolution(const Case& c, const std::vector<float>& x,
                               const std::vector<float>& kernel, const std::vector<float>& bias) {
    const auto out_size = [&](std::int64_t in, std::int64_t k, std::int64_t s, std::int64_t d) {
        const std::int64_t extent = (k - 1) * d + 1;
        return c.padding == Padding::same ? (in + s - 1) / s : (in - extent) / s + 1;
    };
    const auto pad_before = [&](std::int64_t in, std::int64_t out, std::int64_t k, std::int64_t s,
                                std::int64_t d) {
        const std::int64_t extent = (k - 1) * d + 1;
        if (c.padding == Padding::valid) return std::int64_t{0};
        return std::max<std::int64_t>((out - 1) * s + extent - in, 0) / 2;
    };
    const std::int64_t oh_count = out_size(c.height, c.kernel_h, c.stride_h, c.dilation_h);
    const std::int64_t ow_count = out_size(c.width, c.kernel_w, c.stride_w, c.dilation_w);
    const std::int64_t top = pad_before(c.height, oh_count, c.kernel_h, c.stride_h, c.dilation_h);
    const std::int64_t left = pad_before(c.width, ow_count, c.kernel_w, c.stride_w, c.dilation_w);
    const bool last = c.format == DataFormat::channels_last;
    const auto x_at = [&](std::int64_t n, std::int64_t ch, std::int64_t h, std::int64_t w) {
        return last ? x[static_cast<std::size_t>(((n * c.height + h) * c.width + w) * c.channels +
                                                 ch)]
                    : x[static_cast<std::size_t>(((n * c.channels + ch) * c.height + h) * c.width +
                                                 w)];
    };
    const std::int64_t cin_group = c.channels / c.groups;
    const std::int64_t f_group = c.filters / c.groups;
    Expected expected;
    expected.shape = last ? Shape{c.batch, oh_count, ow_count, c.filters}
                          : Shape{c.batch, c.filters, oh_count, ow_count};
    const auto count = static_cast<std::size_t>(c.batch * oh_count * ow_count * c.filters);
    expected.value.assign(count, 0.0);
    expected.magnitude.assign(count, 0.0);
    for (std::int64_t n = 0; n < c.batch; ++n) {
        for (std::int64_t f = 0; f < c.filters; ++f) {
            const std::int64_t group = f / f_group;
            for (std::int64_t oh = 0; oh < oh_count; ++oh) {
                for (std::int64_t ow = 0; ow < ow_count; ++ow) {
                    double sum = c.use_bias ? bias[static_cast<std::size_t>(f)] : 0.0;
                    double magnitude = std::abs(sum);
                    for (std::int64_t kh = 0; kh < c.kernel_h; ++kh) {
                        for (std::int64_t kw = 0; kw < c.kernel_w; ++kw) {
                            const std::int64_t ih = oh * c.stride_h + kh * c.dilation_h - top;
                            const std::int64_t iw = ow * c.stride_w + kw * c.dilation_w - left;
                            if (ih < 0 || ih >= c.height || iw < 0 || iw >= c.width) continue;
                            for (std::int64_t i = 0; i < cin_group; ++i) {
                                const double w = kernel[static_cast<std::size_t>(
                                    ((kh * c.kernel_w + kw) * cin_group + i) * c.filters + f)];
                                const double term = w * x_at(n, group * cin_group + i, ih, iw);
                                sum += term;
                                magnitude += std::abs(term);
                            }
                        }
                    }
                    const std::int64_t index =
                        last ? ((n * oh_count + oh) * ow_count + ow) * c.filters + f
                             : ((n * c.filters + f) * oh_count + oh) * ow_count + ow;
                    expected.value[static_cast<std::size_t>(index)] = sum;
                    expected.magnitude[static_cast<std::size_t>(index)] = magnitude;
                }
            }
        }
    }
    return expected;
}

// A sum of K products plus a bias, each product rounded once and each of the K additions
// rounded once in f32 in any order (oneDNN blocks and reorders the sum), errs by at most
// γ(K+1)·Σ|terms| with γ(n) = n·u/(1 − n·u), u = 2^-24. (K+1)·2^-23·Σ|terms| is twice the
// first-order bound, which covers the 1/(1 − n·u) factor for any K here.
double tolerance(const Case& c, double magnitude) {
    const double terms = static_cast<double>(c.kernel_h * c.kernel_w * (c.channels / c.groups) + 1);
    return terms * std::ldexp(1.0, -23) * magnitude;
}

void expect_close(const Case& c, const Expected& expected, const Tensor& actual,
                  const std::string& label) {
    ASSERT_EQ(actual.shape(), expected.shape) << label;
    ASSERT_EQ(actual.dtype(), DType::f32);
    const float* data = actual.data_as<float>();
    std::size_t failures = 0;
    for (std::size_t i = 0; i < expected.value.size() && failures < 5; ++i) {
        const double error = std::abs(data[i] - expected.value[i]);
        if (!(error <= tolerance(c, expected.magnitude[i]))) {
            ++failures;
            ADD_FAILURE() << label << " element " << i << ": got " << data[i] << ", expected "
                          << expected.value[i] << " (error " << error << ", tolerance "
                          << tolerance(c, expected.magnitude[i]) << ")";
        }
    }
}

Conv2DOptions options_for(const Case& c) {
    Conv2DOptions options;
    options.filters = c.filters;
    options.kernel_size = {c.kernel_h, c.kernel_w};
    options.strides = {c.stride_h, c.stride_w};
    options.dilation_rate = {c.dilation_h, c.dilation_w};
    options.padding = c.padding == Padding::same ? "same" : "valid";
    options.data_format =
        c.format == DataFormat::channels_last ? "channels_last" : "channels_first";
    options.groups = c.groups;
    options.use_bias = c.use_bias;
    return options;
}

// The matrix: both layouts; kernels 1x1, 3x3, 5x2; stride 1, stride 2 or dilation 2; 'valid'
// and 'same'; groups 1 and 2; batch 1 and 3 and bias on and off alternating; odd (11x9) and
// even (10x6) inputs, so that 'same' pads odd totals (e.g. 3 at stride 2 on 10: total 1; 2
// at stride 1: total 1) and even ones (3 at stride 1: total 2).
std::vector<Case> test_matrix() {
    std::vector<Case> cases;
    int index = 0;
    for (DataFormat format : {DataFormat::channels_last, DataFormat::channels_first}) {
        for (auto [kh, kw] : {std::pair{1, 1}, std::pair{3, 3}, std::pair{5, 2}}) {
            for (int motion = 0; motion < 3; ++motion) {
                for (Padding padding : {Padding::valid, Padding::same}) {
                    for (std::int64_t groups : {1, 2}) {
                        Case c;
                        c.format = format;
                        c.kernel_h = kh;
                        c.kernel_w = kw;
                        c.stride_h = c.stride_w = motion == 1 ? 2 : 1;
                        c.dilation_h = c.dilation_w = motion == 2 ? 2 : 1;
                        c.padding = padding;
                        c.groups = groups;
                        c.batch = index % 2 == 0 ? 1 : 3;
                        c.use_bias = index % 3 != 1;
                        if (index % 4 >= 2) {
                            c.height = 10;
                            c.width = 6;
                        }
                        c.filters = groups == 2 ? 10 : 5;
                        cases.push_back(c);
                        ++index;
                    }
                }
            }
        }
    }
    return cases;
}

struct CaseData {
    std::vector<float> x, kernel, bias;
};

CaseData case_data(const Case& c, std::uint32_t seed) {
    CaseData data;
    data.x = random_values(static_cast<std::size_t>(element_count(c.input_shape())), seed);
    data.kernel =
        random_values(static_cast<std::size_t>(element_count(c.kernel_shape())), seed + 1);
    data.bias = random_values(static_cast<std::size_t>(c.filters), seed + 2);
    return data;
}

Tensor run_layer(Conv2D& layer, const Case& c, const CaseData& data) {
    layer.build(c.input_shape());
    layer.set_variable("kernel", Tensor::from_floats(c.kernel_shape(), data.kernel));
    if (c.use_bias) layer.set_variable("bias", Tensor::from_floats({c.filters}, data.bias));
    return layer.call(Tensor::from_floats(c.input_shape(), data.x));
}

TEST(Conv2D, MatchesTheReferenceOverTheMatrix) {
    std::uint32_t seed = 100;
    for (const Case& c : test_matrix()) {
        const CaseData data = case_data(c, seed += 3);
        Conv2D layer(options_for(c));
        const Tensor y = run_layer(layer, c, data);
        expect_close(c, reference_convolution(c, data.x, data.kernel, data.bias), y, c.describe());
    }
}

ConvolutionProblem problem_for(const Case& c) {
    return convolutional::make_problem(
        c.format, c.input_shape(), c.filters, c.groups, {c.kernel_h, c.stride_h, c.dilation_h},
        {c.kernel_w, c.stride_w, c.dilation_w}, c.padding, c.use_bias);
}

// keel's loops, forced, over the same matrix plus depthwise-shaped problems (groups = channels,
// one and two filters per group), which Conv2D reaches through DepthwiseConv2D.
TEST(Conv2D, DirectLoopsMatchTheReference) {
    std::vector<Case> cases = test_matrix();
    for (DataFormat format : {DataFormat::channels_last, DataFormat::channels_first}) {
        for (std::int64_t multiplier : {1, 2}) {
            for (Padding padding : {Padding::valid, Padding::same}) {
                Case c;
                c.format = format;
                c.channels = 7;
                c.groups = 7;
                c.filters = 7 * multiplier;
                c.batch = 2;
                c.padding = padding;
                c.stride_h = multiplier;
                cases.push_back(c);
            }
        }
    }
    const activation::ActivationFunction linear;
    std::uint32_t seed = 500;
    for (const Case& c : cases) {
        const CaseData data = case_data(c, seed += 3);
        const ConvolutionProblem problem = problem_for(c);
        ConvolutionReport report;
        const Tensor y = convolutional::convolve(
            default_engine(), problem, Tensor::from_floats(c.input_shape(), data.x),
            data.kernel.data(), c.use_bias ? data.bias.data() : nullptr, linear, "test",
            ConvolutionPath::loops, &report);
        EXPECT_EQ(report.implementation, "keel:direct_loops");
        expect_close(c, reference_convolution(c, data.x, data.kernel, data.bias), y,
                     "loops " + c.describe());
    }
}

TEST(Conv2D, OneDnnPathUsesAnOptimizedImplementation) {
    Case c;
    c.channels = 16;
    c.filters = 16;
    c.height = c.width = 14;
    c.padding = Padding::same;
    const CaseData data = case_data(c, 7);
    ConvolutionReport report;
    const activation::ActivationFunction linear;
    convolutional::convolve(default_engine(), problem_for(c),
                            Tensor::from_floats(c.input_shape(), data.x), data.kernel.data(),
                            data.bias.data(), linear, "test", ConvolutionPath::automatic, &report);
    EXPECT_THAT(report.implementation, ::testing::Not(HasSubstr("ref")));
    EXPECT_NE(report.implementation, "keel:direct_loops");
}

// relu is a oneDNN post-op fused into the convolution; relu is 1-Lipschitz, so the bound of the
// convolution holds after it.
TEST(Conv2D, ReluActivationIsFusedAndMatches) {
    for (DataFormat format : {DataFormat::channels_last, DataFormat::channels_first}) {
        Case c;
        c.format = format;
        c.padding = Padding::same;
        c.batch = 2;
        const CaseData data = case_data(c, 31);
        Conv2DOptions options = options_for(c);
        options.activation = "relu";
        Conv2D layer(options);
        const Tensor y = run_layer(layer, c, data);
        Expected expected = reference_convolution(c, data.x, data.kernel, data.bias);
        for (double& value : expected.value) value = std::max(value, 0.0);
        expect_close(c, expected, y, "relu " + c.describe());

        ConvolutionReport report;
        const auto relu = activation::ActivationFunction::from_keras("relu", "test", "activation");
        convolutional::convolve(default_engine(), problem_for(c),
                                Tensor::from_floats(c.input_shape(), data.x), data.kernel.data(),
                                data.bias.data(), relu, "test", ConvolutionPath::automatic,
                                &report);
        EXPECT_TRUE(report.activation_fused) << report.implementation;
    }
}

// softmax is no eltwise post-op: it runs after the convolution over the last axis (channels in
// NHWC, columns in NCHW, as Keras' softmax activation does). With each input of the softmax off
// by at most δ (the convolution bound), each output is off by at most s·(e^{2δ} − 1) ≈ 2δ·s, plus
// the f32 softmax's own rounding: exp, the sum of n terms and the division, within (n + 8)·2^-24
// relative; 2^-23 per term doubles that for margin.
TEST(Conv2D, SoftmaxActivationRunsAfterTheConvolutionAndMatches) {
    for (DataFormat format : {DataFormat::channels_last, DataFormat::channels_first}) {
        Case c;
        c.format = format;
        c.batch = 2;
        const CaseData data = case_data(c, 41);
        Conv2DOptions options = options_for(c);
        options.activation = "softmax";
        Conv2D layer(options);
        const Tensor y = run_layer(layer, c, data);
        const Expected conv = reference_convolution(c, data.x, data.kernel, data.bias);
        const std::int64_t row = conv.shape.back();
        const float* actual = y.data_as<float>();
        for (std::size_t start = 0; start < conv.value.size();
             start += static_cast<std::size_t>(row)) {
            double largest = -INFINITY;
            double delta = 0.0;
            for (std::int64_t i = 0; i < row; ++i) {
                largest = std::max(largest, conv.value[start + static_cast<std::size_t>(i)]);
                delta = std::max(delta,
                                 tolerance(c, conv.magnitude[start + static_cast<std::size_t>(i)]));
            }
            double sum = 0.0;
            for (std::int64_t i = 0; i < row; ++i) {
                sum += std::exp(conv.value[start + static_cast<std::size_t>(i)] - largest);
            }
            for (std::int64_t i = 0; i < row; ++i) {
                const std::size_t at = start + static_cast<std::size_t>(i);
                const double expected = std::exp(conv.value[at] - largest) / sum;
                const double bound =
                    expected *
                    (std::expm1(2.0 * delta) + static_cast<double>(row + 8) * std::ldexp(1.0, -23));
                ASSERT_LE(std::abs(actual[at] - expected), bound)
                    << c.describe() << " element " << at;
            }
        }
        ConvolutionReport report;
        const auto softmax =
            activation::ActivationFunction::from_keras("softmax", "test", "activation");
        convolutional::convolve(default_engine(), problem_for(c),
                                Tensor::from_floats(c.input_shape(), data.x), data.kernel.data(),
                                data.bias.data(), softmax, "test", ConvolutionPath::automatic,
                                &report);
        EXPECT_FALSE(report.activation_fused);
    }
}

TEST(Conv2D, Bfloat16InputIsComputedInFloat32) {
    Case c;
    const CaseData data = case_data(c, 51);
    Conv2D layer(options_for(c));
    layer.build(c.input_shape());
    layer.set_variable("kernel", Tensor::from_floats(c.kernel_shape(), data.kernel));
    layer.set_variable("bias", Tensor::from_floats({c.filters}, data.bias));
    const Tensor x16 = Tensor::from_floats(c.input_shape(), data.x, DType::bf16);
    const Tensor y = layer.call(x16);
    const std::vector<float> rounded = x16.to_floats();
    expect_close(c, reference_convolution(c, rounded, data.kernel, data.bias), y, "bf16 input");
}

TEST(Conv2D, VariablesFollowKerasNamesAndShapes) {
    Conv2DOptions options;
    options.filters = 8;
    options.kernel_size = {3, 2};
    options.groups = 2;
    Conv2D layer(options);
    layer.build(Shape{-1, 10, 10, 6});
    EXPECT_EQ(layer.variable_names(), (std::vector<std::string>{"kernel", "bias"}));
    EXPECT_EQ(layer.variable("kernel").shape(), (Shape{3, 2, 3, 8}));
    EXPECT_EQ(layer.variable("bias").shape(), (Shape{8}));
    EXPECT_EQ(layer.variable("bias").to_floats(), std::vector<float>(8, 0.0f));

    options.use_bias = false;
    Conv2D no_bias(options);
    no_bias.build(Shape{1, 10, 10, 6});
    EXPECT_EQ(no_bias.variable_names(), (std::vector<std::string>{"kernel"}));
}

TEST(Conv2D, InfersShapesWithUnknownBatchAndSpatialSizes) {
    Conv2DOptions options;
    options.filters = 5;
    options.kernel_size = {3, 3};
    options.strides = {2, 2};
    options.padding = "same";
    Conv2D layer(options);
    EXPECT_EQ(layer.compute_output_shape({-1, 15, 8, 3}), (Shape{-1, 8, 4, 5}));
    EXPECT_EQ(layer.compute_output_shape({-1, -1, 8, 3}), (Shape{-1, -1, 4, 5}));
    options.padding = "valid";
    options.data_format = "channels_first";
    options.strides = {1, 1};
    options.dilation_rate = {2, 1};
    Conv2D first(options);
    EXPECT_EQ(first.compute_output_shape({-1, 3, 15, 8}), (Shape{-1, 5, 11, 6}));
    first.build(Shape{-1, 3, 15, 8});
    // Built with an unknown batch: any batch runs.
    const Tensor y = first.call(Tensor::filled({2, 3, 15, 8}, 0.5f));
    EXPECT_EQ(y.shape(), (Shape{2, 5, 11, 6}));
    const Tensor empty = first.call(Tensor::filled({0, 3, 15, 8}, 0.5f));
    EXPECT_EQ(empty.shape(), (Shape{0, 5, 11, 6}));
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

Conv2DOptions valid_options() {
    Conv2DOptions options;
    options.filters = 4;
    options.kernel_size = {3, 3};
    options.name = std::string("checked");
    return options;
}

TEST(Conv2D, RejectsBadArguments) {
    const auto with = [](auto change) {
        Conv2DOptions options = valid_options();
        change(options);
        return [options] { Conv2D layer(options); };
    };
    const auto invalid = ErrorCategory::invalid_argument;
    expect_error(with([](Conv2DOptions& o) { o.filters = 0; }), invalid, "filters = 0");
    expect_error(with([](Conv2DOptions& o) {
                     o.kernel_size = {3, 0};
                 }),
                 invalid, "kernel_size = [3, 0]");
    expect_error(with([](Conv2DOptions& o) { o.strides = {0, 1}; }), invalid, "strides = [0, 1]");
    expect_error(with([](Conv2DOptions& o) {
                     o.dilation_rate = {1, -1};
                 }),
                 invalid, "dilation_rate = [1, -1]");
    expect_error(with([](Conv2DOptions& o) {
                     o.strides = {2, 2};
                     o.dilation_rate = {1, 2};
                 }),
                 invalid, "strides = [2, 2] with dilation_rate = [1, 2]");
    expect_error(with([](Conv2DOptions& o) { o.groups = 0; }), invalid, "groups = 0");
    expect_error(with([](Conv2DOptions& o) { o.groups = 3; }), invalid,
                 "groups = 3; expected a divisor of filters = 4");
    expect_error(with([](Conv2DOptions& o) { o.padding = "causal"; }), invalid,
                 "padding = \"causal\"");
    expect_error(with([](Conv2DOptions& o) { o.data_format = "nhwc"; }), invalid,
                 "data_format = \"nhwc\"");
    expect_error(with([](Conv2DOptions& o) { o.activation = "no_such_activation"; }), invalid,
                 "activation");
    expect_error(with([](Conv2DOptions& o) { o.dtype = "float16"; }), ErrorCategory::unsupported,
                 "dtype = \"float16\"");
    expect_error(with([](Conv2DOptions& o) { o.activity_regularizer = "l2"; }),
                 ErrorCategory::unsupported, "activity_regularizer");
    expect_error(with([](Conv2DOptions& o) { o.kernel_initializer = "no_such_initializer"; }),
                 invalid, "kernel_initializer");
    expect_error(with([](Conv2DOptions& o) {
                     o.batch_input_shape = {1, 2, 3};
                 }),
                 invalid, "batch_input_shape");

    // Keras spells padding and data_format in any case; keel normalizes them.
    Conv2DOptions mixed = valid_options();
    mixed.padding = "SAME";
    mixed.data_format = "Channels_First";
    const Conv2D normalized(mixed);
    EXPECT_EQ(normalized.options().padding, "same");
    EXPECT_EQ(normalized.options().data_format, "channels_first");
}

TEST(Conv2D, RejectsBadInputShapes) {
    const auto shape_error = ErrorCategory::shape_mismatch;
    expect_error(
        [] {
            Conv2D(valid_options()).build(Shape{1, 8, 8});
        },
        shape_error, "input shape = [1, 8, 8]");
    expect_error(
        [] {
            Conv2D(valid_options()).build(Shape{1, 8, 8, -1});
        },
        shape_error, "known channel dimension");
    expect_error(
        [] {
            Conv2DOptions options = valid_options();
            options.groups = 2;
            Conv2D(options).build(Shape{1, 8, 8, 3});
        },
        shape_error, "a multiple of groups = 2");
    expect_error(
        [] {
            Conv2D(valid_options()).build(Shape{1, 2, 8, 3});
        },
        shape_error, "output rows 0");
    expect_error(
        [] {
            Conv2DOptions options = valid_options();
            options.batch_input_shape = {nullptr, 8, 8, 3};
            Conv2D(options).build(Shape{1, 9, 8, 3});
        },
        shape_error, "batch_input_shape");

    Conv2D layer(valid_options());
    layer.build(Shape{-1, 8, 8, 3});
    expect_error(
        [&] {
            layer.call(Tensor::filled({1, 8, 8, 4}, 1.0f));
        },
        shape_error, "3 channels on axis 3");
    expect_error(
        [&] {
            layer.call(Tensor::filled({8, 8, 3}, 1.0f));
        },
        shape_error, "input shape = [8, 8, 3]");
    expect_error(
        [&] {
            layer.call(Tensor::filled({1, 2, 8, 3}, 1.0f));
        },
        shape_error, "output rows 0");
    expect_error(
        [&] {
            (void)layer.compute_output_shape({1, 8, 8, 5});
        },
        shape_error, "3 channels, as at build");
    // A rewrite that hands in a kernel of another shape is caught, not read out of bounds.
    std::vector<Tensor> wrong = {Tensor::filled({3, 3, 3, 5}, 1.0f), Tensor::filled({4}, 0.0f)};
    std::vector<VariableUpdate> updates;
    const Tensor x = Tensor::filled({1, 8, 8, 3}, 1.0f);
    expect_error(
        [&] {
            layer.forward({std::span<const Tensor>(&x, 1), wrong, false, updates});
        },
        shape_error, "variable 'kernel'");
}

// A Conv2D as Keras 2.13 (tf.keras in TF 2.13) writes it in model.to_json().
constexpr const char* kKeras213Config = R"({
  "name": "conv2d_3", "trainable": true, "dtype": "float32", "filters": 16,
  "kernel_size": [3, 5], "strides": [2, 2], "padding": "same", "data_format": "channels_last",
  "dilation_rate": [1, 1], "groups": 2, "activation": "relu", "use_bias": true,
  "kernel_initializer": {"module": "keras.initializers", "class_name": "GlorotUniform",
                         "config": {"seed": null}, "registered_name": null},
  "bias_initializer": {"module": "keras.initializers", "class_name": "Zeros", "config": {},
                       "registered_name": null},
  "kernel_regularizer": {"module": "keras.regularizers", "class_name": "L2",
                         "config": {"l2": 0.0005}, "registered_name": null},
  "bias_regularizer": null, "activity_regularizer": null, "kernel_constraint": null,
  "bias_constraint": null})";

// A Conv2D as TF 1.15's tf.keras writes it (first layer of a Sequential model).
constexpr const char* kTf115Config = R"({
  "name": "conv2d_1", "trainable": true, "batch_input_shape": [null, 28, 28, 1],
  "dtype": "float32", "filters": 32, "kernel_size": [3, 3], "strides": [1, 1],
  "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
  "activation": "linear", "use_bias": false,
  "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": null, "dtype": "float32"}},
  "bias_initializer": {"class_name": "Zeros", "config": {"dtype": "float32"}},
  "kernel_regularizer": null, "bias_regularizer": null, "activity_regularizer": null,
  "kernel_constraint": null, "bias_constraint": null})";

TEST(Conv2D, ReadsKeras213Config) {
    const auto layer = Conv2D::from_config(nlohmann::json::parse(kKeras213Config));
    const Conv2DOptions& options = layer->options();
    EXPECT_EQ(layer->name(), "conv2d_3");
    EXPECT_EQ(options.filters, 16);
    EXPECT_EQ(options.kernel_size, (std::array<std::int64_t, 2>{3, 5}));
    EXPECT_EQ(options.strides, (std::array<std::int64_t, 2>{2, 2}));
    EXPECT_EQ(options.padding, "same");
    EXPECT_EQ(options.groups, 2);
    EXPECT_EQ(options.activation, "relu");
    EXPECT_EQ(layer->compute_output_shape({-1, 9, 9, 4}), (Shape{-1, 5, 5, 16}));
    layer->build(Shape{-1, 9, 9, 4});
    EXPECT_EQ(layer->variable("kernel").shape(), (Shape{3, 5, 2, 16}));
    ASSERT_EQ(layer->regularization_losses().size(), 1u);

    const nlohmann::json config = layer->get_config();
    EXPECT_EQ(config["activation"], "relu");
    EXPECT_EQ(config["kernel_regularizer"]["class_name"], "L2");
    EXPECT_EQ(Conv2D::from_config(config)->get_config(), config);
}

TEST(Conv2D, ReadsTf115Config) {
    const auto layer = Conv2D::from_config(nlohmann::json::parse(kTf115Config));
    EXPECT_EQ(layer->options().filters, 32);
    EXPECT_EQ(layer->options().groups, 1);
    EXPECT_FALSE(layer->options().use_bias);
    EXPECT_EQ(layer->options().batch_input_shape, nlohmann::json::parse("[null, 28, 28, 1]"));
    EXPECT_EQ(layer->compute_output_shape({-1, 28, 28, 1}), (Shape{-1, 26, 26, 32}));
    layer->build(Shape{-1, 28, 28, 1});
    EXPECT_EQ(layer->variable_names(), (std::vector<std::string>{"kernel"}));
    const nlohmann::json config = layer->get_config();
    EXPECT_EQ(config["batch_input_shape"], nlohmann::json::parse("[null, 28, 28, 1]"));
    EXPECT_EQ(Conv2D::from_config(config)->get_config(), config);
}

TEST(Conv2D, ConfigRoundTripsAndRejectsWhatKeelDoesNotImplement) {
    Conv2DOptions options = valid_options();
    options.name = "round_trip";
    options.data_format = "channels_first";
    options.dilation_rate = {2, 1};
    options.activation = "gelu";
    options.kernel_constraint = "max_norm";
    const Conv2D layer(options);
    const nlohmann::json config = layer.get_config();
    EXPECT_EQ(Conv2D::from_config(config)->get_config(), config);
    EXPECT_EQ(config["kernel_size"], nlohmann::json::parse("[3, 3]"));
    EXPECT_EQ(config["data_format"], "channels_first");

    // Keras 3 spells dtype as a policy and may write lora_rank: null.
    nlohmann::json keras3 = config;
    keras3["dtype"] = {{"module", "keras"},
                       {"class_name", "DTypePolicy"},
                       {"config", {{"name", "float32"}}},
                       {"registered_name", nullptr}};
    keras3["lora_rank"] = nullptr;
    EXPECT_EQ(Conv2D::from_config(keras3)->get_config(), config);

    nlohmann::json unknown = config;
    unknown["fancy"] = 1;
    expect_error([&] { Conv2D::from_config(unknown); }, ErrorCategory::invalid_argument, "fancy");
    nlohmann::json lora = config;
    lora["lora_rank"] = 4;
    expect_error([&] { Conv2D::from_config(lora); }, ErrorCategory::unsupported, "lora_rank");
    nlohmann::json regularized = config;
    regularized["activity_regularizer"] = "l1";
    expect_error([&] { Conv2D::from_config(regularized); }, ErrorCategory::unsupported,
                 "activity_regularizer");
    nlohmann::json missing = config;
    missing.erase("filters");
    expect_error([&] { Conv2D::from_config(missing); }, ErrorCategory::invalid_argument, "filters");
    nlohmann::json mistyped = config;
    mistyped["strides"] = "2";
    expect_error([&] { Conv2D::from_config(mistyped); }, ErrorCategory::invalid_argument,
                 "strides");
}

TEST(Conv2D, ConcurrentForwardGivesIdenticalResults) {
    for (DataFormat format : {DataFormat::channels_last, DataFormat::channels_first}) {
        Case c;
        c.format = format;
        c.batch = 3;
        c.height = c.width = 17;
        c.channels = 8;
        c.filters = 12;
        c.padding = Padding::same;
        const CaseData data = case_data(c, 77);
        Conv2D layer(options_for(c));
        const Tensor reference = run_layer(layer, c, data);
        const Tensor x = Tensor::from_floats(c.input_shape(), data.x);
        const VariableSnapshot snapshot = layer.variables_snapshot();

        constexpr int kThreads = 4;
        constexpr int kRepeats = 10;
        std::vector<int> mismatches(kThreads, 0);
        std::vector<std::thread> threads;
        for (int t = 0; t < kThreads; ++t) {
            threads.emplace_back([&, t] {
                for (int r = 0; r < kRepeats; ++r) {
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
}

}  // namespace
}  // namespace keel
