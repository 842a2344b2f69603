// Multiply: bit-exact against the same left-to-right f32 products Keras computes; shape rules,
// configs, concurrency.

#include <keel/layers/merging/multiply.hpp>

#include <nlohmann/json.hpp>

#include "support/layer_test_support.hpp"

namespace keel {
namespace {

using layer_testing::expect_error;

TEST(Multiply, MultipliesLeftToRightExactlyAsKeras) {
    for (const Shape& shape : {Shape{1, 3, 5, 7}, Shape{3, 61, 67, 19}}) {
        for (const std::size_t count : {2, 4}) {
            std::vector<Tensor> inputs;
            for (std::size_t i = 0; i < count; ++i) {
                inputs.push_back(layer_testing::random_tensor(shape, static_cast<unsigned>(i + 9)));
            }
            std::vector<float> expected = inputs[0].to_floats();
            for (std::size_t i = 1; i < count; ++i) {
                const std::vector<float> next = inputs[i].to_floats();
                for (std::size_t k = 0; k < expected.size(); ++k) expected[k] *= next[k];
            }
            Multiply layer;
            EXPECT_EQ(layer.call(inputs).to_floats(), expected) << shape_to_string(shape);
        }
    }
}

TEST(Multiply, ConvertsSixteenBitInputs) {
    Multiply layer;
    const Tensor a = layer_testing::random_tensor({2, 5}, 1);
    const Tensor b = layer_testing::random_tensor({2, 5}, 2).to(DType::bf16);
    const std::vector<float> av = a.to_floats();
    const std::vector<float> bv = b.to_floats();  // bf16 widened exactly
    const Tensor output = layer.call(std::vector<Tensor>{a, b});
    EXPECT_EQ(output.dtype(), DType::f32);
    for (std::size_t i = 0; i < av.size(); ++i)
        EXPECT_EQ(output.get(static_cast<std::int64_t>(i)), av[i] * bv[i]);
}

TEST(Multiply, ShapeRulesAndConfig) {
    Multiply layer;
    const std::vector<Shape> shapes{{-1, 8}, {-1, 8}, {5, 8}};
    EXPECT_EQ(layer.infer_output_shape(shapes), (Shape{5, 8}));
    const std::vector<Shape> mismatch{{5, 8}, {5, 8}, {5, 9}};
    expect_error([&] { layer.infer_output_shape(mismatch); }, ErrorCategory::shape_mismatch,
                 "input 2 shape = [5, 9]; expected the shape of input 0, [5, 8]");
    const nlohmann::json config = {{"name", "mul"},
                                   {"trainable", true},
                                   {"dtype", "float32"},
                                   {"batch_input_shape", {nullptr, 8}}};
    const auto restored = Multiply::from_config(config);
    EXPECT_EQ(restored->get_config(), config);
    expect_error(
        [&] {
            restored->build(std::vector<Shape>{{-1, 9}, {-1, 9}});
        },
        ErrorCategory::shape_mismatch, "batch_input_shape");
}

TEST(Multiply, ConcurrentForwardIsIdentical) {
    Multiply layer;
    layer_testing::expect_concurrent_forward_identical(
        layer, {layer_testing::random_tensor({2, 50, 50, 17}, 4),
                layer_testing::random_tensor({2, 50, 50, 17}, 5)});
}

}  // namespace
}  // namespace keel
