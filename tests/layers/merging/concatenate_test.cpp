// Concatenate: exact against a naive concatenation for every axis; shape rules, configs,
// concurrency.

#include <keel/layers/merging/concatenate.hpp>

#include <nlohmann/json.hpp>

#include "support/layer_test_support.hpp"

namespace keel {
namespace {

using layer_testing::expect_error;

// Naive: walk the output's indices and read the input that owns each position along `axis`.
std::vector<float> reference_concatenate(const std::vector<Tensor>& inputs, int axis) {
    const Shape& first = inputs[0].shape();
    std::int64_t outer = 1, inner = 1;
    for (int d = 0; d < axis; ++d) outer *= first[static_cast<std::size_t>(d)];
    for (std::size_t d = static_cast<std::size_t>(axis) + 1; d < first.size(); ++d)
        inner *= first[d];
    std::vector<float> output;
    for (std::int64_t o = 0; o < outer; ++o) {
        for (const Tensor& input : inputs) {
            const std::int64_t length = input.shape()[static_cast<std::size_t>(axis)] * inner;
            for (std::int64_t k = 0; k < length; ++k) output.push_back(input.get(o * length + k));
        }
    }
    return output;
}

TEST(Concatenate, MatchesReferenceOnEveryAxis) {
    unsigned seed = 1;
    for (const int axis : {-1, 0, 1, 2, 3, -3}) {
        const int resolved = axis < 0 ? axis + 4 : axis;
        std::vector<Tensor> inputs;
        for (const std::int64_t size : {3, 17, 1}) {
            Shape shape{3, 7, 9, 5};
            shape[static_cast<std::size_t>(resolved)] = size;
            inputs.push_back(layer_testing::random_tensor(shape, seed++));
        }
        ConcatenateOptions options;
        options.axis = axis;
        Concatenate layer(options);
        const Tensor output = layer.call(inputs);
        Shape expected_shape{3, 7, 9, 5};
        expected_shape[static_cast<std::size_t>(resolved)] = 21;
        EXPECT_EQ(output.shape(), expected_shape);
        EXPECT_EQ(output.to_floats(), reference_concatenate(inputs, resolved)) << "axis " << axis;
    }
}

TEST(Concatenate, LargeChannelsLastConcatenation) {
    std::vector<Tensor> inputs{layer_testing::random_tensor({3, 56, 56, 24}, 1),
                               layer_testing::random_tensor({3, 56, 56, 40}, 2)};
    Concatenate layer;
    EXPECT_EQ(layer.call(inputs).to_floats(), reference_concatenate(inputs, 3));
}

TEST(Concatenate, ShapeRules) {
    Concatenate layer;
    const std::vector<Shape> shapes{{-1, 4, 3}, {2, 4, 5}};
    EXPECT_EQ(layer.infer_output_shape(shapes), (Shape{2, 4, 8}));
    const std::vector<Shape> unknown_axis{{-1, 4, -1}, {-1, 4, 5}};
    EXPECT_EQ(layer.infer_output_shape(unknown_axis), (Shape{-1, 4, -1}));
    const std::vector<Shape> mismatch{{-1, 4, 3}, {-1, 5, 3}};
    expect_error([&] { layer.infer_output_shape(mismatch); }, ErrorCategory::shape_mismatch,
                 "input 1 shape = [-1, 5, 3]; expected the shape of input 0, [-1, 4, 3], in every "
                 "dimension but axis 2");
    const std::vector<Shape> ranks{{2, 4, 3}, {2, 12}};
    expect_error([&] { layer.infer_output_shape(ranks); }, ErrorCategory::shape_mismatch,
                 "[2, 12]");
    ConcatenateOptions options;
    options.axis = 3;
    Concatenate bad_axis(options);
    expect_error([&] { bad_axis.infer_output_shape(shapes); }, ErrorCategory::invalid_argument,
                 "axis = 3; expected an axis in [-3, 3)");
    const std::vector<Tensor> batches{Tensor({2, 3}, DType::f32), Tensor({3, 3}, DType::f32)};
    expect_error([&] { layer_testing::run(layer, batches); }, ErrorCategory::shape_mismatch,
                 "input 1 shape = [3, 3]");
}

TEST(Concatenate, ConfigsRoundTrip) {
    const nlohmann::json keras2 = {
        {"name", "concat"}, {"trainable", true}, {"dtype", "float32"}, {"axis", 1}};
    const auto layer = Concatenate::from_config(keras2);
    EXPECT_EQ(layer->options().axis, 1);
    EXPECT_EQ(layer->get_config(), keras2);
    const auto keras3 = Concatenate::from_config({{"name", "c3"},
                                                  {"trainable", true},
                                                  {"dtype",
                                                   {{"module", "keras"},
                                                    {"class_name", "DTypePolicy"},
                                                    {"config", {{"name", "float32"}}},
                                                    {"registered_name", nullptr}}},
                                                  {"axis", -1}});
    EXPECT_EQ(Concatenate::from_config(keras3->get_config())->get_config(), keras3->get_config());
    expect_error(
        [] {
            Concatenate::from_config({{"axis", "last"}});
        },
        ErrorCategory::invalid_argument, "axis");
    expect_error(
        [] {
            Concatenate::from_config({{"axes", 1}});
        },
        ErrorCategory::invalid_argument, "axes");
}

TEST(Concatenate, ConcurrentForwardIsIdentical) {
    Concatenate layer;
    layer_testing::expect_concurrent_forward_identical(
        layer, {layer_testing::random_tensor({3, 30, 30, 13}, 6),
                layer_testing::random_tensor({3, 30, 30, 7}, 7)});
}

}  // namespace
}  // namespace keel
