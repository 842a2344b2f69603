// Add: bit-exact against the same left-to-right f32 sums Keras computes; shape rules, configs,
// concurrency.

#include <keel/layers/merging/add.hpp>

#include <nlohmann/json.hpp>

#include "support/layer_test_support.hpp"

namespace keel {
namespace {

using layer_testing::expect_error;

TEST(Add, SumsLeftToRightExactlyAsKeras) {
    // Sizes below and above the parallel grain; element counts not multiples of 8 or 16.
    for (const Shape& shape : {Shape{1, 3, 5, 7}, Shape{3, 17}, Shape{3, 61, 67, 19}}) {
        for (const std::size_t count : {2, 3, 5}) {
            std::vector<Tensor> inputs;
            for (std::size_t i = 0; i < count; ++i) {
                inputs.push_back(layer_testing::random_tensor(shape, static_cast<unsigned>(i + 1)));
            }
            std::vector<float> expected = inputs[0].to_floats();
            for (std::size_t i = 1; i < count; ++i) {
                const std::vector<float> next = inputs[i].to_floats();
                for (std::size_t k = 0; k < expected.size(); ++k) expected[k] += next[k];
            }
            Add layer;
            const Tensor output = layer.call(inputs);
            EXPECT_EQ(output.shape(), shape);
            EXPECT_EQ(output.to_floats(), expected) << shape_to_string(shape) << " x" << count;
        }
    }
}

TEST(Add, OrderMattersAndIsKeras) {
    // (1e8 + -1e8) + 1 = 1 in f32, while 1e8 + (-1e8 + 1) = 0: Keras folds left to right.
    Add layer;
    const std::vector<Tensor> inputs{Tensor::filled({1, 1}, 1e8f), Tensor::filled({1, 1}, -1e8f),
                                     Tensor::filled({1, 1}, 1.0f)};
    EXPECT_EQ(layer.call(inputs).to_floats(), std::vector<float>{1.0f});
}

TEST(Add, SingleInputIsPassedThrough) {
    Add layer;
    const Tensor input = layer_testing::random_tensor({2, 3}, 5);
    EXPECT_EQ(layer.call(std::vector<Tensor>{input}).to_floats(), input.to_floats());
}

TEST(Add, ShapeRules) {
    Add layer;
    const std::vector<Shape> unknown_batch{{-1, 4, 5}, {3, 4, 5}};
    EXPECT_EQ(layer.infer_output_shape(unknown_batch), (Shape{3, 4, 5}));
    const std::vector<Shape> both_unknown{{-1, 4}, {-1, 4}};
    EXPECT_EQ(layer.infer_output_shape(both_unknown), (Shape{-1, 4}));
    const std::vector<Shape> mismatch{{-1, 4, 5}, {-1, 4, 6}};
    expect_error([&] { layer.infer_output_shape(mismatch); }, ErrorCategory::shape_mismatch,
                 "input 1 shape = [-1, 4, 6]; expected the shape of input 0, [-1, 4, 5]");
    const std::vector<Shape> broadcast{{2, 4, 5}, {2, 1, 5}};
    expect_error([&] { layer.infer_output_shape(broadcast); }, ErrorCategory::shape_mismatch,
                 "[2, 1, 5]");
    const std::vector<Shape> ranks{{2, 4, 5}, {2, 20}};
    expect_error([&] { layer.infer_output_shape(ranks); }, ErrorCategory::shape_mismatch,
                 "[2, 20]");
    expect_error([&] { layer.infer_output_shape({}); }, ErrorCategory::invalid_argument,
                 "inputs = 0 tensors");
    // At run time the batch must match too.
    const std::vector<Tensor> batches{Tensor({2, 3}, DType::f32), Tensor({3, 3}, DType::f32)};
    expect_error([&] { layer_testing::run(layer, batches); }, ErrorCategory::shape_mismatch,
                 "input 1 shape = [3, 3]");
}

TEST(Add, ArgumentsAndConfigs) {
    AddOptions options;
    options.dtype = "mixed_float16";
    expect_error([&] { Add layer(options); }, ErrorCategory::unsupported, "dtype");
    const nlohmann::json keras2 = {{"name", "add_1"}, {"trainable", true}, {"dtype", "float32"}};
    EXPECT_EQ(Add::from_config(keras2)->get_config(), keras2);
    const auto keras3 = Add::from_config({{"name", "add_3"},
                                          {"trainable", true},
                                          {"dtype",
                                           {{"module", "keras"},
                                            {"class_name", "DTypePolicy"},
                                            {"config", {{"name", "float32"}}},
                                            {"registered_name", nullptr}}}});
    EXPECT_EQ(keras3->get_config(),
              (nlohmann::json{{"name", "add_3"}, {"trainable", true}, {"dtype", "float32"}}));
    expect_error([] { Add::from_config({{"axis", 1}}); }, ErrorCategory::invalid_argument, "axis");
    EXPECT_EQ(Add().class_name(), "Add");
}

TEST(Add, ConcurrentForwardIsIdentical) {
    Add layer;
    layer_testing::expect_concurrent_forward_identical(
        layer, {layer_testing::random_tensor({3, 40, 40, 33}, 1),
                layer_testing::random_tensor({3, 40, 40, 33}, 2),
                layer_testing::random_tensor({3, 40, 40, 33}, 3)});
}

}  // namespace
}  // namespace keel
