// Reshape: exact (a reshape moves nothing); the -1 dimension, element counts checked at shape
// inference when known and at run time otherwise; configs, concurrency.

#include <keel/layers/reshaping/reshape.hpp>

#include <nlohmann/json.hpp>

#include "support/layer_test_support.hpp"

namespace keel {
namespace {

using layer_testing::expect_error;

Reshape make(std::vector<std::int64_t> target) {
    ReshapeOptions options;
    options.target_shape = std::move(target);
    return Reshape(options);
}

TEST(Reshape, ReshapesKeepingTheData) {
    const Tensor input = layer_testing::random_tensor({3, 4, 6}, 1);
    for (const auto& [target, expected] :
         std::vector<std::pair<std::vector<std::int64_t>, Shape>>{{{24}, {3, 24}},
                                                                  {{2, -1}, {3, 2, 12}},
                                                                  {{-1, 2, 3}, {3, 4, 2, 3}},
                                                                  {{6, 4}, {3, 6, 4}}}) {
        Reshape layer = make(target);
        const Tensor output = layer.call(input);
        EXPECT_EQ(output.shape(), expected);
        EXPECT_EQ(output.to_floats(), input.to_floats());
    }
}

TEST(Reshape, ChecksCountsAtInferenceWhenKnown) {
    Reshape layer = make({5, -1});
    EXPECT_EQ(layer.compute_output_shape({-1, 10, 2}), (Shape{-1, 5, 4}));
    expect_error(
        [&] {
            layer.compute_output_shape({-1, 3, 3});
        },
        ErrorCategory::shape_mismatch,
        "input shape = [-1, 3, 3] (9 elements per sample); expected a per-sample element "
        "count divisible by 5");
    Reshape fixed = make({4, 4});
    expect_error(
        [&] {
            fixed.compute_output_shape({-1, 15});
        },
        ErrorCategory::shape_mismatch, "expected 16 elements per sample, as target_shape [4, 4]");
}

TEST(Reshape, ChecksCountsAtRunTimeWhenUnknown) {
    Reshape layer = make({-1, 4});
    // An unknown non-batch dimension leaves the -1 unknown, as Keras.
    EXPECT_EQ(layer.compute_output_shape({-1, -1, 2}), (Shape{-1, -1, 4}));
    Reshape fixed = make({3, 4});
    EXPECT_EQ(fixed.compute_output_shape({-1, -1}), (Shape{-1, 3, 4}));
    EXPECT_EQ(layer_testing::run(layer, {Tensor({2, 6, 2}, DType::f32)}).shape(), (Shape{2, 3, 4}));
    expect_error(
        [&] {
            layer_testing::run(layer, {Tensor({2, 5, 2}, DType::f32)});
        },
        ErrorCategory::shape_mismatch, "input shape = [2, 5, 2]");
    expect_error(
        [&] {
            layer_testing::run(fixed, {Tensor({2, 11}, DType::f32)});
        },
        ErrorCategory::shape_mismatch, "input shape = [2, 11]");
}

TEST(Reshape, TargetShapeErrorsNameTheArgument) {
    expect_error(
        [] {
            make({-1, -1});
        },
        ErrorCategory::invalid_argument, "target_shape = [-1, -1]");
    expect_error([] { make({2, -2}); }, ErrorCategory::invalid_argument, "target_shape = [2, -2]");
    expect_error([] { make({0, -1}); }, ErrorCategory::invalid_argument, "target_shape = [0, -1]");
    expect_error(
        [] {
            make({1, 1, 1, 1, 1, 1, 1, 1});
        },
        ErrorCategory::invalid_argument, "target_shape");
}

TEST(Reshape, ConfigsRoundTrip) {
    const nlohmann::json keras2 = {{"name", "reshape"},
                                   {"trainable", true},
                                   {"dtype", "float32"},
                                   {"target_shape", {7, 7, -1}}};
    const auto layer = Reshape::from_config(keras2);
    EXPECT_EQ(layer->get_config(), keras2);
    const auto keras3 = Reshape::from_config({{"name", "reshape_3"},
                                              {"trainable", true},
                                              {"dtype",
                                               {{"module", "keras"},
                                                {"class_name", "DTypePolicy"},
                                                {"config", {{"name", "float32"}}},
                                                {"registered_name", nullptr}}},
                                              {"target_shape", {12}}});
    EXPECT_EQ(Reshape::from_config(keras3->get_config())->get_config(), keras3->get_config());
    expect_error(
        [] {
            Reshape::from_config({{"name", "r"}});
        },
        ErrorCategory::invalid_argument, "target_shape = (missing)");
    expect_error(
        [] {
            Reshape::from_config({{"target_shape", {2, 2}}, {"shape", 1}});
        },
        ErrorCategory::invalid_argument, "shape");
}

TEST(Reshape, ConcurrentForwardIsIdentical) {
    Reshape layer = make({-1, 7});
    layer_testing::expect_concurrent_forward_identical(
        layer, {layer_testing::random_tensor({3, 49, 5}, 3)});
}

}  // namespace
}  // namespace keel
