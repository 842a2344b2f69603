// Flatten: exact against a naive reference, including channels_first's move of the channels to
// the end as Keras does; shape rules, configs, concurrency.

#include <keel/layers/reshaping/flatten.hpp>

#include <nlohmann/json.hpp>

#include "support/layer_test_support.hpp"

namespace keel {
namespace {

using layer_testing::expect_error;

TEST(Flatten, ChannelsLastKeepsTheOrder) {
    const Tensor input = layer_testing::random_tensor({3, 5, 7, 17}, 1);
    Flatten layer;
    const Tensor output = layer.call(input);
    EXPECT_EQ(output.shape(), (Shape{3, 5 * 7 * 17}));
    EXPECT_EQ(output.to_floats(), input.to_floats());
}

TEST(Flatten, ChannelsFirstMovesChannelsLastFirst) {
    FlattenOptions options;
    options.data_format = "channels_first";
    Flatten layer(options);
    for (const Shape& shape : {Shape{3, 17, 5, 7}, Shape{1, 3, 130, 1}, Shape{2, 4, 3, 2, 5}}) {
        const Tensor input = layer_testing::random_tensor(shape, 2);
        const std::int64_t batch = shape[0], channels = shape[1];
        const std::int64_t spatial = input.element_count() / (batch * channels);
        std::vector<float> expected;
        for (std::int64_t n = 0; n < batch; ++n) {
            for (std::int64_t s = 0; s < spatial; ++s) {
                for (std::int64_t c = 0; c < channels; ++c) {
                    expected.push_back(input.get((n * channels + c) * spatial + s));
                }
            }
        }
        const Tensor output = layer.call(input);
        EXPECT_EQ(output.shape(), (Shape{batch, channels * spatial}));
        EXPECT_EQ(output.to_floats(), expected) << shape_to_string(shape);
    }
    // Rank 2 has nothing to move.
    const Tensor matrix = layer_testing::random_tensor({2, 6}, 3);
    EXPECT_EQ(layer_testing::run(layer, {matrix}).to_floats(), matrix.to_floats());
}

TEST(Flatten, RankOneGainsAFeatureAxis) {
    Flatten layer;
    const Tensor output = layer.call(Tensor::from_floats({3}, std::vector<float>{1, 2, 3}));
    EXPECT_EQ(output.shape(), (Shape{3, 1}));
    expect_error([&] { layer.compute_output_shape({}); }, ErrorCategory::shape_mismatch,
                 "input shape = []");
}

TEST(Flatten, InfersShapesWithUnknownDimensions) {
    Flatten layer;
    EXPECT_EQ(layer.compute_output_shape({-1, 2, 3, 4}), (Shape{-1, 24}));
    EXPECT_EQ(layer.compute_output_shape({-1, -1, 3}), (Shape{-1, -1}));
    EXPECT_EQ(layer.compute_output_shape({5, 0, 3}), (Shape{5, 0}));
}

TEST(Flatten, SharesOwnedStorageAndCopiesViews) {
    Flatten layer;
    const Tensor owned = layer_testing::random_tensor({2, 3, 4}, 4);
    EXPECT_EQ(layer_testing::run(layer, {owned}).data(), owned.data());
    std::vector<float> caller(24, 1.5f);
    const Tensor view = Tensor::view(caller.data(), {2, 3, 4}, DType::f32);
    const Tensor output = layer_testing::run(layer, {view});
    EXPECT_NE(output.data(), static_cast<const void*>(caller.data()));
    EXPECT_EQ(output.to_floats(), caller);
}

TEST(Flatten, ArgumentsAndConfigs) {
    FlattenOptions options;
    options.data_format = "channels_sideways";
    expect_error([&] { Flatten layer(options); }, ErrorCategory::invalid_argument,
                 "data_format = \"channels_sideways\"");
    const nlohmann::json keras2 = {{"name", "flatten"},
                                   {"trainable", true},
                                   {"dtype", "float32"},
                                   {"data_format", "channels_first"}};
    EXPECT_EQ(Flatten::from_config(keras2)->get_config(), keras2);
    const auto keras3 = Flatten::from_config({{"name", "flatten_3"},
                                              {"trainable", true},
                                              {"dtype",
                                               {{"module", "keras"},
                                                {"class_name", "DTypePolicy"},
                                                {"config", {{"name", "float32"}}},
                                                {"registered_name", nullptr}}},
                                              {"data_format", nullptr}});
    EXPECT_EQ(keras3->get_config()["data_format"], "channels_last");
    EXPECT_EQ(Flatten::from_config(keras3->get_config())->get_config(), keras3->get_config());
    expect_error(
        [] {
            Flatten::from_config({{"data_format", 1}});
        },
        ErrorCategory::invalid_argument, "data_format");
    expect_error(
        [] {
            Flatten::from_config({{"start_dim", 1}});
        },
        ErrorCategory::invalid_argument, "start_dim");
}

TEST(Flatten, ConcurrentForwardIsIdentical) {
    FlattenOptions options;
    options.data_format = "channels_first";
    Flatten layer(options);
    layer_testing::expect_concurrent_forward_identical(
        layer, {layer_testing::random_tensor({3, 33, 41, 43}, 5)});
}

}  // namespace
}  // namespace keel
