// tf.keras.layers.ReLU: Keras' exact arithmetic at the edges (x at the threshold, at max_value,
// all three parameters together), argument checks, config round trip and concurrent calls.

#include <keel/layers/activation/relu.hpp>

#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

template <typename Action>
void expect_error(Action&& action, ErrorCategory category, const std::string& fragment) {
    try {
        action();
        ADD_FAILURE() << "expected keel::Error containing '" << fragment << "'";
    } catch (const Error& error) {
        EXPECT_EQ(error.category(), category) << error.what();
        EXPECT_THAT(error.what(), HasSubstr(fragment));
    }
}

std::vector<float> run(ReLUOptions options, const std::vector<float>& inputs) {
    ReLU layer(std::move(options));
    const Tensor x = Tensor::from_floats({static_cast<std::int64_t>(inputs.size())}, inputs);
    return layer.call(x).to_floats();
}

ReLUOptions relu(std::optional<double> max_value, double negative_slope, double threshold) {
    ReLUOptions options;
    options.max_value = max_value;
    options.negative_slope = negative_slope;
    options.threshold = threshold;
    return options;
}

// Keras' documented examples (tf_keras and Keras 3 docstrings); every value is exact in f32.
TEST(ReLULayer, KerasDocumentationExamples) {
    EXPECT_THAT(run({}, {-3, -1, 0, 2}), ElementsAreArray({0.0f, 0.0f, 0.0f, 2.0f}));
    EXPECT_THAT(run(relu(1.0, 0, 0), {-3, -1, 0, 2}), ElementsAreArray({0.0f, 0.0f, 0.0f, 1.0f}));
    EXPECT_THAT(run(relu(std::nullopt, 1.0, 0), {-3, -1, 0, 2}),
                ElementsAreArray({-3.0f, -1.0f, 0.0f, 2.0f}));
    EXPECT_THAT(run(relu(std::nullopt, 0, 1.5), {-3, -1, 1, 2}),
                ElementsAreArray({0.0f, 0.0f, 0.0f, 2.0f}));
    EXPECT_THAT(run(relu(10.0, 0.5, 0), {-10, -5, 0, 5, 10}),
                ElementsAreArray({-5.0f, -2.5f, 0.0f, 5.0f, 10.0f}));
}

TEST(ReLULayer, XExactlyAtTheThresholdGivesZero) {
    // Keras computes x·(x > threshold): strictly greater, whatever its docstring says.
    EXPECT_THAT(run(relu(std::nullopt, 0, 5.0), {-10, -5, 0, 5, 10}),
                ElementsAreArray({0.0f, 0.0f, 0.0f, 0.0f, 10.0f}));
    EXPECT_THAT(run(relu(std::nullopt, 0.5, 2.0), {2.0f, 2.5f}), ElementsAreArray({0.0f, 2.5f}));
}

TEST(ReLULayer, AllThreeParametersTogether) {
    // threshold 1, max_value 4, slope 0.25: below the threshold slope·(x − 1), at the threshold 0,
    // between x, at and above max_value 4. All values and products are exact in f32.
    EXPECT_THAT(
        run(relu(4.0, 0.25, 1.0), {-3.0f, 0.0f, 0.5f, 1.0f, 1.5f, 3.75f, 4.0f, 4.5f, 100.0f}),
        ElementsAreArray({-1.0f, -0.25f, -0.125f, 0.0f, 1.5f, 3.75f, 4.0f, 4.0f, 4.0f}));
    // max_value below the threshold: values above the threshold saturate at max_value.
    EXPECT_THAT(run(relu(1.0, 0.5, 2.0), {1.0f, 2.0f, 3.0f}),
                ElementsAreArray({-0.5f, 0.0f, 1.0f}));
}

TEST(ReLULayer, ParametersAreRoundedToFloat32LikeKerasFloatx) {
    // 0.1 in f32 is 0.100000001490116...; slope·(x − threshold) uses that value.
    const std::vector<float> output = run(relu(std::nullopt, 0.1, 0), {-3.0f});
    EXPECT_EQ(output[0], -(0.1f * 3.0f));
}

TEST(ReLULayer, NegativeArgumentsAreRejectedAsKerasDoes) {
    expect_error([] { ReLU layer(relu(-1.0, 0, 0)); }, ErrorCategory::invalid_argument,
                 "max_value = -1; expected a finite value >= 0");
    expect_error([] { ReLU layer(relu(std::nullopt, -0.5, 0)); }, ErrorCategory::invalid_argument,
                 "negative_slope = -0.5");
    expect_error([] { ReLU layer(relu(std::nullopt, 0, -2)); }, ErrorCategory::invalid_argument,
                 "threshold = -2");
    expect_error([] { ReLU layer(relu(std::nullopt, std::nan(""), 0)); },
                 ErrorCategory::invalid_argument, "negative_slope = nan");
    ReLUOptions half;
    half.dtype = "float16";
    expect_error([&] { ReLU layer(half); }, ErrorCategory::unsupported, "dtype = \"float16\"");
}

TEST(ReLULayer, ConfigRoundTrip) {
    ReLUOptions options = relu(6.0, 0.2, 0.5);
    options.name = "act";
    options.batch_input_shape = {nullptr, 4};
    ReLU layer(options);
    const nlohmann::json config = layer.get_config();
    EXPECT_EQ(config["max_value"], 6.0);
    EXPECT_EQ(config["negative_slope"], 0.2);
    EXPECT_EQ(config["threshold"], 0.5);
    EXPECT_EQ(config["name"], "act");
    EXPECT_EQ(ReLU::from_config(config)->get_config(), config);
    EXPECT_TRUE(ReLU::from_config({{"name", "r"}, {"max_value", nullptr}})->options().max_value ==
                std::nullopt);
}

TEST(ReLULayer, FromConfigErrors) {
    expect_error(
        [] {
            ReLU::from_config({{"max_value", "6"}});
        },
        ErrorCategory::invalid_argument, "ReLU config: max_value = \"6\"");
    expect_error(
        [] {
            ReLU::from_config({{"alpha", 0.1}});
        },
        ErrorCategory::invalid_argument, "alpha = 0.1");
    expect_error(
        [] {
            ReLU::from_config({{"threshold", -1}});
        },
        ErrorCategory::invalid_argument, "threshold = -1");
}

TEST(ReLULayer, ShapesAndDtypes) {
    ReLU layer;
    EXPECT_EQ(layer.compute_output_shape({-1, 3, 5}), (Shape{-1, 3, 5}));
    const Tensor x = Tensor::from_floats({2, 2}, std::vector<float>{-1, 2, 3, -4}, DType::bf16);
    const Tensor y = layer.call(x);
    EXPECT_EQ(y.dtype(), DType::f32);
    EXPECT_EQ(y.shape(), (Shape{2, 2}));
    EXPECT_THAT(y.to_floats(), ElementsAreArray({0.0f, 2.0f, 3.0f, 0.0f}));
    ReLUOptions declared;
    declared.batch_input_shape = {nullptr, 3};
    ReLU checked(declared);
    expect_error(
        [&] {
            checked.build(Shape{-1, 4});
        },
        ErrorCategory::shape_mismatch, "batch_input_shape [null,3]");
}

TEST(ReLULayer, ConcurrentForwardGivesIdenticalResults) {
    ReLU layer(relu(3.0, 0.1, 0.5));
    std::vector<float> inputs(40000);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        inputs[i] = static_cast<float>(static_cast<int>(i % 101) - 50) * 0.09f;
    }
    const Tensor x = Tensor::from_floats({400, 100}, inputs);
    const std::vector<float> expected = layer.call(x).to_floats();
    std::vector<std::vector<float>> results(4);
    std::vector<std::thread> threads;
    for (auto& result : results) {
        threads.emplace_back([&] {
            const auto snapshot = layer.variables_snapshot();
            std::vector<VariableUpdate> updates;
            const ForwardContext context{std::span<const Tensor>(&x, 1), *snapshot, false, updates};
            result = layer.forward(context).to_floats();
        });
    }
    for (auto& thread : threads) thread.join();
    for (const auto& result : results) EXPECT_EQ(result, expected);
}

}  // namespace
}  // namespace keel
