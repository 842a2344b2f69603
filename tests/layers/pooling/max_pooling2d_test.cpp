// MaxPooling2D against a naive reference (exact: a maximum rounds nothing), on the path keel
// picks and on keel's own kernel; argument errors, shape inference, Keras configs, concurrency.

#include <keel/layers/pooling/max_pooling2d.hpp>

#include <nlohmann/json.hpp>

#include "layers/pooling/pooling_2d.hpp"
#include "layers/pooling/pooling_test_support.hpp"

namespace keel {
namespace {

using pooling_test::Case;
using pooling_test::expect_error;

MaxPooling2DOptions options_for(const Case& c) {
    MaxPooling2DOptions options;
    options.pool_size = {c.pool_h, c.pool_w};
    options.strides = std::array<std::int64_t, 2>{c.stride_h, c.stride_w};
    options.padding = c.same ? "same" : "valid";
    options.data_format = c.channels_first ? "channels_first" : "channels_last";
    return options;
}

void expect_matches_reference(const Tensor& output, const pooling_test::Reference& reference,
                              const std::string& what) {
    ASSERT_EQ(output.shape(), reference.shape) << what;
    const std::vector<float> values = output.to_floats();
    for (std::size_t i = 0; i < values.size(); ++i) {
        // The reference's maximum is an input value widened to double: exact equality.
        ASSERT_EQ(values[i], static_cast<float>(reference.outputs[i].value)) << what << " at " << i;
    }
}

TEST(MaxPooling2D, MatchesReferenceOverTheMatrixOnBothPaths) {
    unsigned seed = 1;
    for (const Case& c : pooling_test::case_matrix()) {
        const Tensor input = pooling_test::random_tensor(c.input_shape(), seed++);
        const auto reference = pooling_test::reference_pool(input, c, /*max=*/true);
        MaxPooling2D layer(options_for(c));
        const Tensor output = layer.call(input);
        expect_matches_reference(output, reference,
                                 c.describe() + " on " + layer.implementation(c.input_shape()));
        EXPECT_THAT(layer.implementation(c.input_shape()),
                    ::testing::Not(::testing::HasSubstr("ref")));

        pooling::Window window;
        window.pool_size = {c.pool_h, c.pool_w};
        window.strides = {c.stride_h, c.stride_w};
        window.same_padding = c.same;
        window.channels_first = c.channels_first;
        const pooling::Geometry geometry = pooling::make_geometry("test", window, c.input_shape());
        const Tensor kernel_output = pooling::pool(default_engine(), pooling::PoolingKind::max,
                                                   geometry, input, pooling::Path::keel_kernel);
        expect_matches_reference(kernel_output, reference, c.describe() + " on keel's kernel");
    }
}

TEST(MaxPooling2D, SamePaddingCountsAsMinusInfinity) {
    // All inputs negative: a zero-padded max would return 0 at the borders.
    MaxPooling2DOptions options;
    options.pool_size = {3, 3};
    options.strides = std::array<std::int64_t, 2>{1, 1};
    options.padding = "same";
    MaxPooling2D layer(options);
    const Tensor input = Tensor::filled({1, 4, 4, 2}, -5.0f);
    for (const float value : layer.call(input).to_floats()) EXPECT_EQ(value, -5.0f);
}

TEST(MaxPooling2D, StridesDefaultToPoolSize) {
    MaxPooling2DOptions options;
    options.pool_size = {3, 2};
    MaxPooling2D layer(options);
    EXPECT_EQ(layer.compute_output_shape({2, 9, 8, 5}), (Shape{2, 3, 4, 5}));
    EXPECT_EQ(layer.get_config()["strides"], nlohmann::json({3, 2}));
}

TEST(MaxPooling2D, InfersShapesWithUnknownDimensions) {
    MaxPooling2D valid;
    EXPECT_EQ(valid.compute_output_shape({-1, 7, 9, 3}), (Shape{-1, 3, 4, 3}));
    EXPECT_EQ(valid.compute_output_shape({-1, -1, 9, -1}), (Shape{-1, -1, 4, -1}));
    MaxPooling2DOptions options;
    options.padding = "SAME";  // case-insensitive, as Keras
    options.data_format = "channels_first";
    MaxPooling2D same(options);
    EXPECT_EQ(same.compute_output_shape({-1, 3, 7, 9}), (Shape{-1, 3, 4, 5}));
}

TEST(MaxPooling2D, EmptyBatchGivesEmptyOutput) {
    MaxPooling2D layer;
    const Tensor output = layer.call(Tensor({0, 4, 4, 3}, DType::f32));
    EXPECT_EQ(output.shape(), (Shape{0, 2, 2, 3}));
}

TEST(MaxPooling2D, ConvertsSixteenBitInputsToFloat32) {
    const Tensor input = pooling_test::random_tensor({1, 4, 4, 3}, 7).to(DType::bf16);
    MaxPooling2D layer;
    const Tensor output = layer.call(input);
    EXPECT_EQ(output.dtype(), DType::f32);
    MaxPooling2D f32_layer;
    EXPECT_EQ(output.to_floats(), f32_layer.call(input.to(DType::f32)).to_floats());
}

TEST(MaxPooling2D, ArgumentErrorsNameTheArgument) {
    auto build = [](auto change) {
        MaxPooling2DOptions options;
        change(options);
        MaxPooling2D layer(options);
    };
    expect_error([&] { build([](auto& o) {
                           o.pool_size = {0, 2};
                       }); },
                 ErrorCategory::invalid_argument, "pool_size = [0, 2]");
    expect_error([&] { build([](auto& o) {
                           o.strides = std::array<std::int64_t, 2>{2, 0};
                       }); },
                 ErrorCategory::invalid_argument, "strides = [2, 0]");
    expect_error([&] { build([](auto& o) { o.padding = "full"; }); },
                 ErrorCategory::invalid_argument, "padding = \"full\"");
    expect_error([&] { build([](auto& o) { o.data_format = "NHWC"; }); },
                 ErrorCategory::invalid_argument, "data_format = \"NHWC\"");
    expect_error([&] { build([](auto& o) { o.dtype = "float16"; }); }, ErrorCategory::unsupported,
                 "dtype = \"float16\"");
    expect_error([&] { build([](auto& o) {
                           o.batch_input_shape = {1, -3, 2, 2};
                       }); },
                 ErrorCategory::invalid_argument, "batch_input_shape");
}

TEST(MaxPooling2D, ShapeErrorsNameTheShape) {
    MaxPooling2D layer;
    expect_error(
        [&] {
            layer.compute_output_shape({2, 4, 4});
        },
        ErrorCategory::shape_mismatch, "input shape = [2, 4, 4]");
    MaxPooling2DOptions options;
    options.pool_size = {3, 3};
    MaxPooling2D large(options);
    expect_error(
        [&] {
            large.compute_output_shape({1, 2, 5, 1});
        },
        ErrorCategory::shape_mismatch, "input rows = 2");
    expect_error(
        [&] {
            large.call(Tensor({1, 5, 2, 1}, DType::f32));
        },
        ErrorCategory::shape_mismatch, "input cols = 2");
    expect_error(
        [&] {
            const std::vector<Tensor> two{Tensor({1, 4, 4, 1}, DType::f32),
                                          Tensor({1, 4, 4, 1}, DType::f32)};
            large.call(two);
        },
        ErrorCategory::invalid_argument, "inputs = 2 tensors");
    MaxPooling2DOptions declared;
    declared.batch_input_shape = {nullptr, 8, 8, 3};
    MaxPooling2D with_declared(declared);
    expect_error(
        [&] {
            with_declared.build(Shape{-1, 8, 8, 4});
        },
        ErrorCategory::shape_mismatch, "batch_input_shape");
}

TEST(MaxPooling2D, ReadsKeras2Config) {
    const nlohmann::json config = {{"name", "pool1"},
                                   {"trainable", true},
                                   {"dtype", "float32"},
                                   {"pool_size", {3, 3}},
                                   {"padding", "same"},
                                   {"strides", {2, 2}},
                                   {"data_format", "channels_last"}};
    const auto layer = MaxPooling2D::from_config(config);
    EXPECT_EQ(layer->name(), "pool1");
    EXPECT_EQ(layer->get_config(), config);
    EXPECT_EQ(MaxPooling2D::from_config(layer->get_config())->get_config(), config);
}

TEST(MaxPooling2D, ReadsKeras3AndTf115Configs) {
    const nlohmann::json keras3 = {{"name", "max_pooling2d_7"},
                                   {"trainable", true},
                                   {"dtype",
                                    {{"module", "keras"},
                                     {"class_name", "DTypePolicy"},
                                     {"config", {{"name", "float32"}}},
                                     {"registered_name", nullptr}}},
                                   {"pool_size", {2, 2}},
                                   {"padding", "valid"},
                                   {"strides", nullptr},
                                   {"data_format", nullptr}};
    const auto layer = MaxPooling2D::from_config(keras3);
    EXPECT_EQ(layer->get_config()["strides"], nlohmann::json({2, 2}));
    EXPECT_EQ(layer->get_config()["data_format"], "channels_last");
    EXPECT_EQ(layer->get_config()["dtype"], "float32");

    const nlohmann::json tf115 = {{"name", "p"},
                                  {"trainable", true},
                                  {"batch_input_shape", {nullptr, 8, 8, 3}},
                                  {"dtype", "float32"},
                                  {"pool_size", 2},
                                  {"padding", "valid"},
                                  {"strides", 1},
                                  {"data_format", "channels_first"}};
    const auto old = MaxPooling2D::from_config(tf115);
    EXPECT_EQ(old->get_config()["pool_size"], nlohmann::json({2, 2}));
    EXPECT_EQ(old->get_config()["strides"], nlohmann::json({1, 1}));
    EXPECT_EQ(old->get_config()["batch_input_shape"], nlohmann::json({nullptr, 8, 8, 3}));
    EXPECT_EQ(MaxPooling2D::from_config(old->get_config())->get_config(), old->get_config());
}

TEST(MaxPooling2D, ConfigErrorsNameTheKey) {
    expect_error(
        [] {
            MaxPooling2D::from_config({{"pool_size", 2}, {"dilation_rate", 1}});
        },
        ErrorCategory::invalid_argument, "dilation_rate");
    expect_error(
        [] {
            MaxPooling2D::from_config({{"pool_size", {2, 2, 2}}});
        },
        ErrorCategory::invalid_argument, "pool_size");
    expect_error(
        [] {
            MaxPooling2D::from_config({{"padding", "causal"}});
        },
        ErrorCategory::invalid_argument, "padding");
}

TEST(MaxPooling2D, ConcurrentForwardIsIdentical) {
    MaxPooling2DOptions options;
    options.pool_size = {3, 3};
    options.strides = std::array<std::int64_t, 2>{2, 2};
    options.padding = "same";
    MaxPooling2D layer(options);
    const std::vector<Tensor> inputs{pooling_test::random_tensor({3, 29, 31, 19}, 11)};
    layer.build(inputs[0].shape());
    pooling_test::expect_concurrent_forward_identical(layer, inputs);
}

}  // namespace
}  // namespace keel
