// tf.keras.layers.Activation: every supported identifier against a double reference, config
// round trip, argument errors and shape inference.

#include <keel/layers/activation/activation.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel {
namespace {

using ::testing::HasSubstr;

constexpr double kUnit = 0x1p-24;

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

double reference(const std::string& name, double x) {
    if (name == "linear") return x;
    if (name == "relu") return std::max(x, 0.0);
    if (name == "relu6") return std::min(std::max(x, 0.0), 6.0);
    if (name == "sigmoid") return 1.0 / (1.0 + std::exp(-x));
    if (name == "tanh") return std::tanh(x);
    if (name == "gelu") return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    if (name == "swish" || name == "silu") return x / (1.0 + std::exp(-x));
    if (name == "elu") return x > 0 ? x : std::expm1(x);
    if (name == "softplus") return std::log1p(std::exp(x));
    if (name == "exponential") return std::exp(x);
    ADD_FAILURE() << "no reference for " << name;
    return 0.0;
}

TEST(ActivationLayer, EveryElementwiseActivationMatchesTheReference) {
    std::vector<float> inputs;
    for (int i = -60; i <= 60; ++i) inputs.push_back(static_cast<float>(i) * 0.137f);
    const Tensor x = Tensor::from_floats({11, 11}, inputs);
    for (const char* name : {"linear", "relu", "relu6", "sigmoid", "tanh", "gelu", "swish", "silu",
                             "elu", "softplus", "exponential"}) {
        ActivationOptions options;
        options.activation = name;
        Activation layer(options);
        const std::vector<float> output = layer.call(x).to_floats();
        for (std::size_t i = 0; i < inputs.size(); ++i) {
            const double expected = reference(name, inputs[i]);
            // A few f32 operations and libm calls (each <= 2 ulp) on terms bounded by |y| or
            // |x|: 16·u·(|y| + |x|) with margin (see activation_function_test.cpp).
            EXPECT_NEAR(output[i], expected,
                        16 * kUnit * (std::abs(expected) + std::abs(inputs[i])) +
                            std::numeric_limits<float>::min())
                << name << " x = " << inputs[i];
        }
    }
}

TEST(ActivationLayer, SoftmaxNormalizesTheLastAxis) {
    ActivationOptions options;
    options.activation = "softmax";
    Activation layer(options);
    const Tensor x = Tensor::from_floats({2, 3}, std::vector<float>{1, 2, 3, 500, 500, 500});
    const std::vector<float> y = layer.call(x).to_floats();
    const double sum = std::exp(1.0) + std::exp(2.0) + std::exp(3.0);
    for (int i = 0; i < 3; ++i) {
        const double expected = std::exp(i + 1.0) / sum;
        // exp (2 ulp), x − max exact here, the f32 sum and the division: 8u relative.
        EXPECT_NEAR(y[static_cast<std::size_t>(i)], expected, 8 * kUnit * expected);
        EXPECT_NEAR(y[static_cast<std::size_t>(i) + 3], 1.0 / 3, 8 * kUnit);
    }
    expect_error([&] { layer.compute_output_shape({}); }, ErrorCategory::shape_mismatch,
                 "rank >= 1");
}

TEST(ActivationLayer, ConfigRoundTripAndErrors) {
    for (const nlohmann::json& identifier :
         {nlohmann::json(nullptr), nlohmann::json("relu6"), nlohmann::json("gelu"),
          nlohmann::json({{"class_name", "function"}, {"config", "tanh"}})}) {
        const auto layer = Activation::from_config({{"name", "a"}, {"activation", identifier}});
        const nlohmann::json config = layer->get_config();
        EXPECT_EQ(Activation::from_config(config)->get_config(), config);
    }
    EXPECT_EQ(Activation::from_config({{"activation", "silu"}})->get_config()["activation"],
              "swish");
    expect_error(
        [] {
            Activation::from_config({{"name", "a"}});
        },
        ErrorCategory::invalid_argument, "Activation config: activation = (missing)");
    expect_error(
        [] {
            Activation::from_config({{"activation", "reluu"}});
        },
        ErrorCategory::invalid_argument, "activation = \"reluu\"");
    expect_error(
        [] {
            Activation::from_config({{"activation", "relu"}, {"alpha", 1}});
        },
        ErrorCategory::invalid_argument, "alpha = 1");
    // Keras 2.13 / Keras 3 keys and dtype policies are understood.
    const auto keras3 = Activation::from_config(
        {{"name", "act"},
         {"activation", "relu"},
         {"dtype",
          {{"module", "keras"}, {"class_name", "DTypePolicy"}, {"config", {{"name", "float32"}}}}},
         {"module", "keras.layers"},
         {"registered_name", nullptr}});
    EXPECT_EQ(keras3->name(), "act");
    expect_error(
        [] {
            Activation::from_config({{"activation", "relu"}, {"dtype", "bfloat16"}});
        },
        ErrorCategory::unsupported, "dtype = \"bfloat16\"");
}

TEST(ActivationLayer, ShapeInferenceKeepsUnknownDimensions) {
    ActivationOptions options;
    options.activation = "tanh";
    Activation layer(options);
    EXPECT_EQ(layer.compute_output_shape({-1, 7}), (Shape{-1, 7}));
    EXPECT_TRUE(layer.variable_names().empty());
}

TEST(ActivationLayer, ConcurrentForwardGivesIdenticalResults) {
    ActivationOptions options;
    options.activation = "gelu";
    Activation layer(options);
    std::vector<float> inputs(30000);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        inputs[i] = static_cast<float>(static_cast<int>(i % 97) - 48) * 0.1f;
    }
    const Tensor x = Tensor::from_floats({300, 100}, inputs);
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
