// tf.keras.layers.Dense: the oneDNN path (with the activation fused as a post-op when oneDNN
// computes it exactly), the keel loops, and a naive double reference agree over a matrix of
// shapes; Keras' arguments, variables, config round trip and errors; concurrent forward().

#include <keel/layers/core/dense.hpp>

#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

#include "layers/activation/activation_function.hpp"
#include "layers/core/dense/dense_loop.hpp"

namespace keel {
namespace {

using activation::ActivationFunction;
using ::testing::ElementsAre;
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

// Deterministic values in [-scale, scale].
std::vector<float> pseudo_random(std::size_t count, std::uint32_t seed, float scale) {
    std::vector<float> values(count);
    std::uint32_t state = seed * 2654435761u + 12345u;
    for (float& value : values) {
        state = state * 1664525u + 1013904223u;
        value =
            (static_cast<float>(state >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f) * scale;
    }
    return values;
}

struct Case {
    Shape input;
    std::int64_t units;
    bool use_bias;
};

// The Keras activations in double, and their Lipschitz bounds L (|f'| <= L around the inputs
// used here: pre-activations stay within ±6, where exp's derivative is below e^6 ≈ 403).
double activate(const std::string& name, double z) {
    if (name == "linear") return z;
    if (name == "relu") return std::max(z, 0.0);
    if (name == "relu6") return std::min(std::max(z, 0.0), 6.0);
    if (name == "sigmoid") return 1.0 / (1.0 + std::exp(-z));
    if (name == "tanh") return std::tanh(z);
    if (name == "gelu") return 0.5 * z * (1.0 + std::erf(z / std::sqrt(2.0)));
    if (name == "swish") return z / (1.0 + std::exp(-z));
    if (name == "elu") return z > 0 ? z : std::expm1(z);
    if (name == "softplus") return std::log1p(std::exp(z));
    if (name == "exponential") return std::exp(z);
    ADD_FAILURE() << "no reference for " << name;
    return 0.0;
}

double lipschitz(const std::string& name, double z) {
    if (name == "exponential") return std::exp(std::abs(z) + 1e-3);
    if (name == "sigmoid") return 0.25;
    if (name == "gelu" || name == "swish") return 1.13;  // max |f'| of both is below 1.13
    return 1.0;
}

struct Reference {
    std::vector<double> output;
    std::vector<double> tolerance;
};

// y = act(x·W + b) in double. Tolerance: the f32 dot product of K terms plus the bias has
// |error| <= (K + 1)·u·S (S = Σ|x·w| + |b|, the standard γ_n bound for any summation order,
// including oneDNN's blocked ones); the activation magnifies it by at most L, and evaluating the
// activation costs at most 16·u·(|y| + |z|) (a few f32 operations and approximations of exp /
// erf / tanh accurate to a few ulp; oneDNN's polynomial kernels are specified to the same order).
Reference reference(const std::vector<float>& x, const std::vector<float>& kernel,
                    const std::vector<float>& bias, std::int64_t rows, std::int64_t in,
                    std::int64_t units, const std::string& name) {
    Reference result;
    for (std::int64_t r = 0; r < rows; ++r) {
        std::vector<double> z(static_cast<std::size_t>(units));
        std::vector<double> magnitude(static_cast<std::size_t>(units));
        for (std::int64_t n = 0; n < units; ++n) {
            double sum = bias.empty() ? 0.0 : bias[static_cast<std::size_t>(n)];
            double size = std::abs(sum);
            for (std::int64_t k = 0; k < in; ++k) {
                const double term = static_cast<double>(x[static_cast<std::size_t>(r * in + k)]) *
                                    kernel[static_cast<std::size_t>(k * units + n)];
                sum += term;
                size += std::abs(term);
            }
            z[static_cast<std::size_t>(n)] = sum;
            magnitude[static_cast<std::size_t>(n)] = size;
        }
        if (name == "softmax") {
            double maximum = z[0];
            for (double value : z) maximum = std::max(maximum, value);
            double sum = 0.0;
            for (double value : z) sum += std::exp(value - maximum);
            for (std::size_t n = 0; n < z.size(); ++n) {
                const double y = std::exp(z[n] - maximum) / sum;
                // Each pre-activation error δ moves a softmax output by at most 2·δ·y (the
                // Jacobian's rows), the f32 softmax itself costs (8 + 2·spread)u relative; the
                // spread of z here stays below 12.
                const double delta = static_cast<double>(in + 1) * kUnit * magnitude[n];
                result.output.push_back(y);
                result.tolerance.push_back(4 * delta * y + 32 * kUnit * y + 1e-30);
            }
            continue;
        }
        for (std::size_t n = 0; n < z.size(); ++n) {
            const double y = activate(name, z[n]);
            const double delta = static_cast<double>(in + 1) * kUnit * magnitude[n];
            result.output.push_back(y);
            result.tolerance.push_back(lipschitz(name, z[n]) * delta +
                                       16 * kUnit * (std::abs(y) + std::abs(z[n])) +
                                       std::numeric_limits<float>::min());
        }
    }
    return result;
}

std::unique_ptr<Dense> make_dense(std::int64_t units, const std::string& activation,
                                  bool use_bias) {
    DenseOptions options;
    options.units = units;
    options.activation = activation;
    options.use_bias = use_bias;
    return std::make_unique<Dense>(options);
}

const std::vector<Case>& cases() {
    static const std::vector<Case> all = {
        {{1, 1}, 1, true},    {{3, 7}, 5, true},        {{2, 17}, 33, false},  {{5, 64}, 10, true},
        {{2, 3, 9}, 4, true}, {{2, 2, 3, 6}, 7, false}, {{33, 129}, 17, true},
    };
    return all;
}

const std::vector<std::string>& activations() {
    static const std::vector<std::string> all = {"linear",   "relu",        "relu6",  "sigmoid",
                                                 "tanh",     "gelu",        "swish",  "elu",
                                                 "softplus", "exponential", "softmax"};
    return all;
}

TEST(DenseForward, EveryActivationMatchesTheReferenceOverShapes) {
    std::uint32_t seed = 1;
    for (const Case& test : cases()) {
        const std::int64_t in = test.input.back();
        const std::int64_t rows = element_count(test.input) / in;
        // Inputs and weights scaled so that pre-activations stay within about ±6.
        const float weight_scale = 2.0f / std::sqrt(static_cast<float>(in));
        const std::vector<float> x =
            pseudo_random(static_cast<std::size_t>(rows * in), seed++, 1.5f);
        const std::vector<float> kernel =
            pseudo_random(static_cast<std::size_t>(in * test.units), seed++, weight_scale);
        const std::vector<float> bias =
            test.use_bias ? pseudo_random(static_cast<std::size_t>(test.units), seed++, 0.5f)
                          : std::vector<float>{};
        for (const std::string& name : activations()) {
            auto layer = make_dense(test.units, name, test.use_bias);
            layer->build(test.input);
            layer->set_variable("kernel", Tensor::from_floats({in, test.units}, kernel));
            if (test.use_bias) layer->set_variable("bias", Tensor::from_floats({test.units}, bias));
            const Tensor y = layer->call(Tensor::from_floats(test.input, x));
            Shape expected_shape = test.input;
            expected_shape.back() = test.units;
            ASSERT_EQ(y.shape(), expected_shape);
            const Reference expected = reference(x, kernel, bias, rows, in, test.units, name);
            const std::vector<float> actual = y.to_floats();
            for (std::size_t i = 0; i < actual.size(); ++i) {
                ASSERT_NEAR(actual[i], expected.output[i], expected.tolerance[i])
                    << name << " input " << shape_to_string(test.input) << " units " << test.units
                    << " index " << i << " via " << layer->last_implementation();
            }
        }
    }
}

TEST(DenseForward, FusedPostOpEqualsTheKeelLoopAfterALinearDense) {
    // Same matmul with and without the post-op: the difference is only how the activation is
    // evaluated (oneDNN's eltwise kernel vs keel's loop), each within 16·u·(|y| + |z|) of the
    // exact value, so within twice that of each other.
    const Shape shape = {9, 40};
    const std::vector<float> x = pseudo_random(9 * 40, 77, 1.5f);
    const std::vector<float> kernel = pseudo_random(40 * 12, 78, 0.3f);
    const std::vector<float> bias = pseudo_random(12, 79, 0.5f);
    auto linear = make_dense(12, "linear", true);
    linear->build(shape);
    linear->set_variable("kernel", Tensor::from_floats({40, 12}, kernel));
    linear->set_variable("bias", Tensor::from_floats({12}, bias));
    const Tensor z = linear->call(Tensor::from_floats(shape, x));
    for (const std::string& name : activations()) {
        if (name == "linear" || name == "softmax") continue;
        const ActivationFunction function =
            ActivationFunction::from_keras(name, "test", "activation");
        auto fused = make_dense(12, name, true);
        fused->build(shape);
        fused->set_variable("kernel", Tensor::from_floats({40, 12}, kernel));
        fused->set_variable("bias", Tensor::from_floats({12}, bias));
        const std::vector<float> fused_output =
            fused->call(Tensor::from_floats(shape, x)).to_floats();
        EXPECT_THAT(fused->last_implementation(), HasSubstr("+eltwise")) << name;
        Tensor looped = z.clone();
        function.apply_in_place(default_engine(), looped);
        const std::vector<float> loop_output = looped.to_floats();
        for (std::size_t i = 0; i < loop_output.size(); ++i) {
            const double pre = z.get(static_cast<std::int64_t>(i));
            EXPECT_NEAR(fused_output[i], loop_output[i],
                        32 * kUnit * (std::abs(loop_output[i]) + std::abs(pre)) +
                            std::numeric_limits<float>::min())
                << name << " z = " << pre;
        }
    }
}

TEST(DenseForward, FusedPostOpEqualsTheKeelLoopAtExactInputs) {
    // An identity kernel without bias makes the pre-activations exactly the inputs, so the
    // post-op meets saturated and overflowing values: ±30, ±90 (e^90 overflows f32 as in Keras).
    const std::vector<float> inputs = {-90.0f, -30.0f, -6.0f, -1.0f, -0.0f, 0.0f,
                                       0.25f,  1.0f,   6.0f,  7.5f,  30.0f, 90.0f};
    const std::int64_t count = static_cast<std::int64_t>(inputs.size());
    std::vector<float> identity(static_cast<std::size_t>(count * count), 0.0f);
    for (std::int64_t i = 0; i < count; ++i) identity[static_cast<std::size_t>(i * count + i)] = 1;
    const Tensor x = Tensor::from_floats({1, count}, inputs);
    for (const std::string& name : activations()) {
        if (name == "linear" || name == "softmax") continue;
        auto fused = make_dense(count, name, false);
        fused->build(Shape{-1, count});
        fused->set_variable("kernel", Tensor::from_floats({count, count}, identity));
        const std::vector<float> fused_output = fused->call(x).to_floats();
        EXPECT_THAT(fused->last_implementation(), HasSubstr("+eltwise")) << name;
        Tensor looped = x.clone();
        ActivationFunction::from_keras(name, "test", "activation")
            .apply_in_place(default_engine(), looped);
        for (std::int64_t i = 0; i < count; ++i) {
            const float expected = looped.get(i);
            const auto index = static_cast<std::size_t>(i);
            if (std::isinf(expected)) {
                EXPECT_EQ(fused_output[index], expected) << name << " z = " << inputs[index];
                continue;
            }
            // Both within 16·u·(|y| + |z|) of the exact value (see above).
            EXPECT_NEAR(fused_output[index], expected,
                        32 * kUnit * (std::abs(expected) + std::abs(inputs[index])) +
                            std::numeric_limits<float>::min())
                << name << " z = " << inputs[index];
        }
    }
}

TEST(DenseForward, UnfusableActivationRunsAfterTheMatmul) {
    auto layer = make_dense(5, "softmax", true);
    const Tensor y = layer->call(Tensor::from_floats({2, 3}, pseudo_random(6, 3, 1.0f)));
    EXPECT_THAT(layer->last_implementation(), HasSubstr("+keel:softmax"));
    for (int row = 0; row < 2; ++row) {
        double sum = 0.0;
        for (int n = 0; n < 5; ++n) sum += y.get(row * 5 + n);
        EXPECT_NEAR(sum, 1.0, 8 * kUnit);  // see softmax_test.cpp
    }
}

TEST(DenseForward, OneDnnChoiceIsNotAReferenceImplementation) {
    auto layer = make_dense(64, "relu", true);
    layer->call(Tensor::from_floats({16, 128}, pseudo_random(16 * 128, 5, 1.0f)));
    const std::string implementation = layer->last_implementation();
    EXPECT_THAT(implementation, ::testing::Not(HasSubstr("ref")));
    EXPECT_TRUE(implementation.starts_with("onednn:") || implementation.starts_with("keel:loop"))
        << implementation;
}

TEST(DenseLoop, MatchesTheReference) {
    // keel's own kernel (the fallback when oneDNN offers only a reference implementation).
    for (const Case& test : cases()) {
        const std::int64_t in = test.input.back();
        const std::int64_t rows = element_count(test.input) / in;
        const std::vector<float> x = pseudo_random(static_cast<std::size_t>(rows * in), 11, 1.0f);
        const std::vector<float> kernel =
            pseudo_random(static_cast<std::size_t>(in * test.units), 12, 0.5f);
        const std::vector<float> bias =
            test.use_bias ? pseudo_random(static_cast<std::size_t>(test.units), 13, 0.5f)
                          : std::vector<float>{};
        std::vector<float> y(static_cast<std::size_t>(rows * test.units));
        dense::dense_loop(default_engine(), x.data(), kernel.data(),
                          test.use_bias ? bias.data() : nullptr, y.data(), rows, in, test.units);
        const Reference expected = reference(x, kernel, bias, rows, in, test.units, "linear");
        for (std::size_t i = 0; i < y.size(); ++i) {
            ASSERT_NEAR(y[i], expected.output[i], expected.tolerance[i]) << i;
        }
    }
}

TEST(DenseForward, EmptyBatchAndZeroFeatures) {
    auto layer = make_dense(3, "relu", true);
    layer->build(Shape{-1, 4});
    EXPECT_EQ(layer->call(Tensor({0, 4}, DType::f32)).shape(), (Shape{0, 3}));
    DenseOptions options;
    options.units = 2;
    options.bias_initializer = {{"class_name", "Constant"}, {"config", {{"value", 1.5}}}};
    Dense no_features(options);
    const Tensor y = no_features.call(Tensor({3, 0}, DType::f32));
    EXPECT_EQ(y.shape(), (Shape{3, 2}));
    EXPECT_THAT(y.to_floats(), ElementsAre(1.5f, 1.5f, 1.5f, 1.5f, 1.5f, 1.5f));
}

TEST(DenseForward, ReadsVariablesFromTheContext) {
    auto layer = make_dense(2, "linear", true);
    layer->build(Shape{-1, 2});
    const Tensor x = Tensor::from_floats({1, 2}, std::vector<float>{1.0f, 2.0f});
    const std::vector<Tensor> folded = {Tensor::from_floats({2, 2}, std::vector<float>{1, 0, 0, 1}),
                                        Tensor::from_floats({2}, std::vector<float>{10, 20})};
    std::vector<VariableUpdate> updates;
    const ForwardContext context{std::span<const Tensor>(&x, 1), folded, false, updates};
    EXPECT_THAT(layer->forward(context).to_floats(), ElementsAre(11.0f, 22.0f));
    const std::vector<Tensor> wrong = {Tensor({3, 2}, DType::f32), folded[1]};
    const ForwardContext bad{std::span<const Tensor>(&x, 1), wrong, false, updates};
    expect_error([&] { layer->forward(bad); }, ErrorCategory::shape_mismatch,
                 "variable 'kernel' = [3, 2] float32; expected [2, 2] float32");
}

TEST(DenseForward, ConvertsSixteenBitInputs) {
    auto layer = make_dense(3, "linear", false);
    layer->build(Shape{-1, 2});
    layer->set_variable("kernel",
                        Tensor::from_floats({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6}));
    const Tensor x = Tensor::from_floats({1, 2}, std::vector<float>{1.0f, -1.0f}, DType::bf16);
    const Tensor y = layer->call(x);
    EXPECT_EQ(y.dtype(), DType::f32);
    EXPECT_THAT(y.to_floats(), ElementsAre(-3.0f, -3.0f, -3.0f));
}

TEST(DenseVariables, KerasNamesShapesAndOrder) {
    auto layer = make_dense(4, "relu", true);
    layer->build(Shape{-1, 6});
    EXPECT_THAT(layer->variable_names(), ElementsAre("kernel", "bias"));
    EXPECT_EQ(layer->variable("kernel").shape(), (Shape{6, 4}));
    EXPECT_EQ(layer->variable("bias").shape(), (Shape{4}));
    EXPECT_THAT(layer->variable("bias").to_floats(), ElementsAre(0.0f, 0.0f, 0.0f, 0.0f));
    auto without_bias = make_dense(4, "relu", false);
    without_bias->build(Shape{-1, 6});
    EXPECT_THAT(without_bias->variable_names(), ElementsAre("kernel"));
}

TEST(DenseVariables, RegularizersAndConstraintsAreWired) {
    DenseOptions options;
    options.units = 2;
    options.kernel_initializer = "ones";
    options.kernel_regularizer = "l2";
    options.bias_constraint = {{"class_name", "NonNeg"}, {"config", nlohmann::json::object()}};
    Dense layer(options);
    layer.build(Shape{-1, 3});
    const std::vector<double> losses = layer.regularization_losses();
    ASSERT_EQ(losses.size(), 1u);
    EXPECT_NEAR(losses[0], 0.01 * 6, 1e-6);
    layer.set_variable("bias", Tensor::from_floats({2}, std::vector<float>{-1, 2}));
    layer.apply_constraints();
    EXPECT_THAT(layer.variable("bias").to_floats(), ElementsAre(0.0f, 2.0f));
}

TEST(DenseShapes, InferenceAndMismatches) {
    auto layer = make_dense(5, "linear", true);
    EXPECT_EQ(layer->compute_output_shape({-1, 3}), (Shape{-1, 5}));
    EXPECT_EQ(layer->compute_output_shape({-1, 7, 3}), (Shape{-1, 7, 5}));
    expect_error([&] { layer->compute_output_shape({3}); }, ErrorCategory::shape_mismatch,
                 "input shape = [3]; expected rank >= 2");
    expect_error(
        [&] {
            layer->compute_output_shape({4, -1});
        },
        ErrorCategory::shape_mismatch, "known last dimension");
    layer->build(Shape{-1, 3});
    expect_error(
        [&] {
            layer->call(Tensor({2, 4}, DType::f32));
        },
        ErrorCategory::shape_mismatch, "input shape = [2, 4]; expected last dimension 3");
    DenseOptions declared;
    declared.units = 2;
    declared.batch_input_shape = {nullptr, 3};
    Dense checked(declared);
    expect_error(
        [&] {
            checked.build(Shape{-1, 4});
        },
        ErrorCategory::shape_mismatch, "batch_input_shape");
}

TEST(DenseArguments, Errors) {
    DenseOptions options;
    expect_error([&] { Dense layer(options); }, ErrorCategory::invalid_argument,
                 "units = 0; expected a positive integer");
    options.units = 3;
    options.activity_regularizer = "l2";
    expect_error([&] { Dense layer(options); }, ErrorCategory::unsupported, "activity_regularizer");
    options.activity_regularizer = nullptr;
    options.activation = "rleu";
    expect_error([&] { Dense layer(options); }, ErrorCategory::invalid_argument,
                 "activation = \"rleu\"");
    options.activation = nullptr;
    options.kernel_initializer = "not_an_initializer";
    expect_error([&] { Dense layer(options); }, ErrorCategory::invalid_argument,
                 "kernel_initializer");
    options.kernel_initializer = "glorot_uniform";
    options.dtype = "float16";
    expect_error([&] { Dense layer(options); }, ErrorCategory::unsupported, "dtype = \"float16\"");
}

TEST(DenseConfig, RoundTripIsExact) {
    const nlohmann::json keras3 = {
        {"name", "dense_7"},
        {"trainable", true},
        {"dtype",
         {{"module", "keras"}, {"class_name", "DTypePolicy"}, {"config", {{"name", "float32"}}}}},
        {"units", 10},
        {"activation", "gelu"},
        {"use_bias", true},
        {"kernel_initializer",
         {{"module", "keras.initializers"},
          {"class_name", "GlorotUniform"},
          {"config", {{"seed", nullptr}}},
          {"registered_name", nullptr}}},
        {"bias_initializer", {{"class_name", "Zeros"}, {"config", nlohmann::json::object()}}},
        {"kernel_regularizer", {{"class_name", "L2"}, {"config", {{"l2", 0.001}}}}},
        {"bias_regularizer", nullptr},
        {"kernel_constraint", nullptr},
        {"bias_constraint", nullptr},
        {"activity_regularizer", nullptr},
        {"lora_rank", nullptr},
        {"module", "keras.layers"},
        {"registered_name", nullptr},
        {"build_config", {{"input_shape", {nullptr, 4}}}}};
    const auto layer = Dense::from_config(keras3);
    EXPECT_EQ(layer->options().units, 10);
    EXPECT_EQ(layer->name(), "dense_7");
    const nlohmann::json config = layer->get_config();
    EXPECT_EQ(config["activation"], "gelu");
    EXPECT_EQ(config["kernel_initializer"]["class_name"], "GlorotUniform");
    EXPECT_EQ(Dense::from_config(config)->get_config(), config);

    DenseOptions options;
    options.units = 3;
    options.activation = "relu6";
    options.use_bias = false;
    options.batch_input_shape = {nullptr, 8};
    Dense direct(options);
    const nlohmann::json direct_config = direct.get_config();
    EXPECT_EQ(direct_config["activation"], "relu6");
    EXPECT_EQ(direct_config["use_bias"], false);
    EXPECT_EQ(Dense::from_config(direct_config)->get_config(), direct_config);
}

TEST(DenseConfig, Errors) {
    expect_error(
        [] {
            Dense::from_config({{"activation", "relu"}});
        },
        ErrorCategory::invalid_argument, "Dense config: units = (missing)");
    expect_error(
        [] {
            Dense::from_config({{"units", 2.5}});
        },
        ErrorCategory::invalid_argument, "units = 2.5");
    expect_error(
        [] {
            Dense::from_config({{"units", 2}, {"lora_rank", 4}});
        },
        ErrorCategory::unsupported, "lora_rank = 4");
    expect_error(
        [] {
            Dense::from_config({{"units", 2}, {"activity_regularizer", "l1"}});
        },
        ErrorCategory::unsupported, "activity_regularizer");
    expect_error(
        [] {
            Dense::from_config({{"units", 2}, {"kernal_initializer", "ones"}});
        },
        ErrorCategory::invalid_argument, "kernal_initializer");
}

TEST(DenseForward, ConcurrentForwardGivesIdenticalResults) {
    auto layer = make_dense(48, "gelu", true);
    layer->build(Shape{-1, 96});
    const Tensor x = Tensor::from_floats({32, 96}, pseudo_random(32 * 96, 21, 1.0f));
    const std::vector<float> expected = layer->call(x).to_floats();
    std::vector<std::vector<float>> results(4);
    std::vector<std::thread> threads;
    for (auto& result : results) {
        threads.emplace_back([&] {
            for (int repeat = 0; repeat < 5; ++repeat) {
                const auto snapshot = layer->variables_snapshot();
                std::vector<VariableUpdate> updates;
                const ForwardContext context{std::span<const Tensor>(&x, 1), *snapshot, false,
                                             updates};
                result = layer->forward(context).to_floats();
            }
        });
    }
    for (auto& thread : threads) thread.join();
    for (const auto& result : results) EXPECT_EQ(result, expected);
}

}  // namespace
}  // namespace keel
