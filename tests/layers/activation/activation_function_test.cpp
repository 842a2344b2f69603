// keel's Keras activations: identifiers in every spelling, which activations map onto oneDNN
// eltwise post-ops (and with which parameters), and the keel loops against a double reference.
// The post-op path itself is compared with these loops through Dense in
// tests/layers/core/dense_test.cpp.

#include "layers/activation/activation_function.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <keel/engine/error.hpp>

namespace keel::activation {
namespace {

using ::testing::HasSubstr;
using Kind = ActivationFunction::Kind;

constexpr double kUnit = 0x1p-24;  // f32 unit roundoff

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

ActivationFunction parse(const nlohmann::json& identifier) {
    return ActivationFunction::from_keras(identifier, "Dense 'd'", "activation");
}

// The Keras definitions, evaluated in double.
double reference(const ActivationFunction& function, double x) {
    switch (function.kind) {
        case Kind::linear:
            return x;
        case Kind::relu:
            return x > function.threshold ? std::min(x, function.max_value)
                                          : function.negative_slope * (x - function.threshold);
        case Kind::sigmoid:
            return 1.0 / (1.0 + std::exp(-x));
        case Kind::tanh:
            return std::tanh(x);
        case Kind::gelu:
            if (function.approximate) {
                return 0.5 * x *
                       (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
            }
            return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
        case Kind::swish:
            return x / (1.0 + std::exp(-x));
        case Kind::elu:
            return x > 0 ? x : function.alpha * std::expm1(x);
        case Kind::softplus:
            return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x)));
        case Kind::exponential:
            return std::exp(x);
        case Kind::softmax:
            break;
    }
    ADD_FAILURE() << "no elementwise reference for softmax";
    return 0.0;
}

// Inputs covering both signs, zero, tiny and large magnitudes (exp and softplus saturate or
// overflow near ±88, where f32 ends).
std::vector<float> sample_inputs() {
    std::vector<float> values = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, -1e-6f, 0.5f,  -0.5f,
                                 1.0f, -1.0f, 6.0f,   -6.0f,   20.0f, -20.0f, 80.0f, -80.0f};
    for (int i = -400; i <= 400; ++i) values.push_back(static_cast<float>(i) * 0.0173f);
    return values;
}

// Each kind evaluates at most a handful of f32 operations and libm calls (each within 2 ulp), on
// terms no larger than |y| or |x| (gelu and swish multiply x by a factor in [0, 1], so their
// absolute error scales with |x| where y cancels). So |error| <= 16·u·(|y| + |x|) with margin,
// plus the smallest normal float for results that underflow.
void expect_matches_reference(const ActivationFunction& function, const std::string& label) {
    const std::vector<float> inputs = sample_inputs();
    Tensor values = Tensor::from_floats({static_cast<std::int64_t>(inputs.size())}, inputs);
    function.apply_in_place(default_engine(), values);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        const double x = inputs[i];
        const double expected = reference(function, x);
        const double actual = values.get(static_cast<std::int64_t>(i));
        if (std::isinf(expected)) {
            EXPECT_EQ(actual, expected) << label << " x = " << x;
            continue;
        }
        const double tolerance =
            16 * kUnit * (std::abs(expected) + std::abs(x)) + std::numeric_limits<float>::min();
        EXPECT_NEAR(actual, expected, tolerance) << label << " x = " << x;
    }
}

TEST(ActivationFunctionIdentifiers, NamesAndNull) {
    EXPECT_EQ(parse(nullptr).kind, Kind::linear);
    EXPECT_EQ(parse("linear").kind, Kind::linear);
    const ActivationFunction relu6 = parse("relu6");
    EXPECT_EQ(relu6.kind, Kind::relu);
    EXPECT_EQ(relu6.max_value, 6.0);
    EXPECT_EQ(relu6.threshold, 0.0);
    EXPECT_EQ(relu6.negative_slope, 0.0);
    EXPECT_TRUE(std::isinf(parse("relu").max_value));
    EXPECT_EQ(parse("silu").kind, Kind::swish);
    EXPECT_EQ(parse("swish").kind, Kind::swish);
    EXPECT_FALSE(parse("gelu").approximate);  // Keras' gelu defaults to the exact erf form
    EXPECT_EQ(parse("softmax").axis, -1);
    EXPECT_EQ(parse("elu").alpha, 1.0);
}

TEST(ActivationFunctionIdentifiers, SerializedFunctionForm) {
    const nlohmann::json keras3 = {{"module", "keras.activations"},
                                   {"class_name", "function"},
                                   {"config", "gelu"},
                                   {"registered_name", "gelu"}};
    EXPECT_EQ(parse(keras3).kind, Kind::gelu);
    expect_error(
        [] {
            parse({{"class_name", "function"}, {"config", {{"name", "relu"}}}});
        },
        ErrorCategory::invalid_argument, "activation = ");
    expect_error(
        [] {
            parse({{"class_name", "function"}, {"config", "relu"}, {"extra", 1}});
        },
        ErrorCategory::invalid_argument, "activation.extra = 1");
}

TEST(ActivationFunctionIdentifiers, UnknownAndUnimplementedNames) {
    expect_error([] { parse("rleu"); }, ErrorCategory::invalid_argument,
                 "Dense 'd': activation = \"rleu\"; expected null or one of");
    expect_error([] { parse("selu"); }, ErrorCategory::unsupported, "activation = \"selu\"");
    expect_error([] { parse(3); }, ErrorCategory::invalid_argument, "activation = 3");
}

TEST(ActivationFunctionIdentifiers, ToKerasRoundTrips) {
    for (const char* name : {"linear", "relu", "relu6", "sigmoid", "tanh", "gelu", "swish",
                             "softmax", "elu", "softplus", "exponential"}) {
        EXPECT_EQ(parse(name).to_keras(), name);
    }
    EXPECT_EQ(parse("silu").to_keras(), "swish");  // both Keras versions resolve "swish"
    EXPECT_EQ(parse(nullptr).to_keras(), "linear");
}

TEST(ActivationFunctionIdentifiers, ParametersKerasCannotNameAreRefused) {
    ActivationFunction thresholded;
    thresholded.kind = Kind::relu;
    thresholded.threshold = 0.5;
    expect_error([&] { thresholded.to_keras(); }, ErrorCategory::unsupported, "threshold = 0.5");
    ActivationFunction approximate;
    approximate.kind = Kind::gelu;
    approximate.approximate = true;
    expect_error([&] { approximate.to_keras(); }, ErrorCategory::unsupported, "approximate");
}

struct PostOp {
    dnnl::algorithm algorithm;
    float alpha;
    float beta;
};

std::vector<PostOp> post_ops_of(const ActivationFunction& function, bool expected_result) {
    dnnl::post_ops post_ops;
    EXPECT_EQ(function.append_post_op(post_ops), expected_result);
    std::vector<PostOp> result;
    for (int i = 0; i < post_ops.len(); ++i) {
        float scale = 0.0f;
        PostOp op{};
        post_ops.get_params_eltwise(i, scale, op.algorithm, op.alpha, op.beta);
        EXPECT_EQ(scale, 1.0f);
        result.push_back(op);
    }
    return result;
}

TEST(ActivationFunctionPostOps, ExactEquivalentsOnly) {
    const auto single = [](const ActivationFunction& function, dnnl::algorithm algorithm,
                           float alpha, float beta) {
        const std::vector<PostOp> ops = post_ops_of(function, true);
        ASSERT_EQ(ops.size(), 1u);
        EXPECT_EQ(ops[0].algorithm, algorithm);
        EXPECT_EQ(ops[0].alpha, alpha);
        EXPECT_EQ(ops[0].beta, beta);
    };
    single(parse("relu"), dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    single(parse("relu6"), dnnl::algorithm::eltwise_clip_v2, 0.0f, 6.0f);
    single(parse("sigmoid"), dnnl::algorithm::eltwise_logistic, 0.0f, 0.0f);
    single(parse("tanh"), dnnl::algorithm::eltwise_tanh, 0.0f, 0.0f);
    single(parse("gelu"), dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
    single(parse("swish"), dnnl::algorithm::eltwise_swish, 1.0f, 0.0f);
    single(parse("elu"), dnnl::algorithm::eltwise_elu, 1.0f, 0.0f);
    single(parse("softplus"), dnnl::algorithm::eltwise_soft_relu, 0.0f, 0.0f);
    single(parse("exponential"), dnnl::algorithm::eltwise_exp, 0.0f, 0.0f);

    ActivationFunction leaky = parse("relu");
    leaky.negative_slope = 0.25;
    single(leaky, dnnl::algorithm::eltwise_relu, 0.25f, 0.0f);
    ActivationFunction approximate = parse("gelu");
    approximate.approximate = true;
    single(approximate, dnnl::algorithm::eltwise_gelu_tanh, 0.0f, 0.0f);

    // The identity needs nothing appended; softmax is not elementwise.
    EXPECT_TRUE(post_ops_of(parse("linear"), true).empty());
    EXPECT_TRUE(post_ops_of(parse("softmax"), false).empty());
    // relu variants without a single eltwise equivalent.
    ActivationFunction thresholded = parse("relu");
    thresholded.threshold = 1.0;
    EXPECT_TRUE(post_ops_of(thresholded, false).empty());
    ActivationFunction bounded_leaky = parse("relu6");
    bounded_leaky.negative_slope = 0.1;
    EXPECT_TRUE(post_ops_of(bounded_leaky, false).empty());
}

TEST(ActivationFunctionLoop, EveryKindMatchesTheReference) {
    for (const char* name :
         {"linear", "relu", "relu6", "sigmoid", "tanh", "gelu", "swish", "elu", "softplus"}) {
        expect_matches_reference(parse(name), name);
    }
    ActivationFunction approximate = parse("gelu");
    approximate.approximate = true;
    expect_matches_reference(approximate, "gelu(approximate)");
    ActivationFunction elu = parse("elu");
    elu.alpha = 0.3;
    expect_matches_reference(elu, "elu(0.3)");
    ActivationFunction relu = parse("relu");
    relu.negative_slope = 0.2;
    relu.max_value = 4.5;
    relu.threshold = 0.5;
    expect_matches_reference(relu, "relu(0.2, 4.5, 0.5)");
}

TEST(ActivationFunctionLoop, ExponentialOverflowsOnlyWhereF32Does) {
    const ActivationFunction exponential = parse("exponential");
    expect_matches_reference(exponential, "exponential");
    Tensor values = Tensor::from_floats({2}, std::vector<float>{89.0f, -104.0f});
    exponential.apply_in_place(default_engine(), values);
    EXPECT_TRUE(std::isinf(values.get(0)));  // e^89 > FLT_MAX, as in Keras
    EXPECT_EQ(values.get(1), 0.0f);
}

TEST(ActivationFunctionLoop, SoftplusAndSigmoidStayFiniteForLargeInputs) {
    Tensor softplus_values = Tensor::from_floats({2}, std::vector<float>{1000.0f, -1000.0f});
    parse("softplus").apply_in_place(default_engine(), softplus_values);
    EXPECT_EQ(softplus_values.get(0), 1000.0f);
    EXPECT_EQ(softplus_values.get(1), 0.0f);
    Tensor sigmoid_values = Tensor::from_floats({2}, std::vector<float>{1000.0f, -1000.0f});
    parse("sigmoid").apply_in_place(default_engine(), sigmoid_values);
    EXPECT_EQ(sigmoid_values.get(0), 1.0f);
    EXPECT_EQ(sigmoid_values.get(1), 0.0f);
}

TEST(ActivationFunctionLoop, ParallelChunksEqualOneThread) {
    // Large enough to be split into several chunks on two threads.
    const std::int64_t count = 200004;  // 28572 rows of 7
    std::vector<float> inputs(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) {
        inputs[static_cast<std::size_t>(i)] = static_cast<float>((i * 7919) % 2001 - 1000) / 97.0f;
    }
    ThreadingOptions one;
    one.intra_op_threads = 1;
    ThreadingOptions two;
    two.intra_op_threads = 2;
    const Engine serial(one);
    const Engine parallel(two);
    for (const char* name : {"gelu", "softmax", "relu6"}) {
        Tensor a = Tensor::from_floats({count / 7, 7}, inputs);
        Tensor b = a.clone();
        parse(name).apply_in_place(serial, a);
        parse(name).apply_in_place(parallel, b);
        EXPECT_EQ(a.to_floats(), b.to_floats()) << name;
    }
}

TEST(ActivationFunctionLoop, SoftmaxOverTheLastAxisIsStable) {
    // Rows far beyond exp's range: subtracting the row maximum keeps every term in [0, 1].
    Tensor values = Tensor::from_floats(
        {3, 3},
        std::vector<float>{1000.0f, 1001.0f, 1002.0f, -1e30f, 0.0f, 1e30f, 5.0f, 5.0f, 5.0f});
    parse("softmax").apply_in_place(default_engine(), values);
    const double e1 = std::exp(-1.0);
    const double e2 = std::exp(-2.0);
    const double sum = 1.0 + e1 + e2;
    // Each output: one exp (2 ulp), the sum rounded once to f32, one division: <= 8u relative.
    const std::vector<double> expected = {e2 / sum, e1 / sum, 1.0 / sum, 0.0,    0.0,
                                          1.0,      1.0 / 3,  1.0 / 3,   1.0 / 3};
    for (std::size_t i = 0; i < expected.size(); ++i) {
        EXPECT_NEAR(values.get(static_cast<std::int64_t>(i)), expected[i],
                    8 * kUnit * expected[i] + std::numeric_limits<float>::min())
            << i;
    }
}

TEST(ActivationFunctionLoop, SoftmaxOverAMiddleAxis) {
    ActivationFunction softmax = parse("softmax");
    softmax.axis = 1;
    const Shape shape = {2, 5, 3};
    std::vector<float> inputs(30);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
        inputs[i] = static_cast<float>(static_cast<int>(i * 37 % 23) - 11) * 0.7f;
    }
    Tensor values = Tensor::from_floats(shape, inputs);
    softmax.apply_in_place(default_engine(), values);
    for (int b = 0; b < 2; ++b) {
        for (int j = 0; j < 3; ++j) {
            double sum = 0.0;
            double lowest = inputs[b * 15 + j];
            double highest = lowest;
            for (int i = 0; i < 5; ++i) {
                const double x = inputs[b * 15 + i * 3 + j];
                sum += std::exp(x);
                lowest = std::min(lowest, x);
                highest = std::max(highest, x);
            }
            // x − max rounds with relative error u, i.e. exp's result gains u·|x − max|; each term
            // and the sum then carry at most (2 + spread)·u, plus the sum's and the division's
            // roundings.
            const double spread = highest - lowest;
            for (int i = 0; i < 5; ++i) {
                const int index = b * 15 + i * 3 + j;
                const double expected = std::exp(static_cast<double>(inputs[index])) / sum;
                EXPECT_NEAR(values.get(index), expected, (8 + 2 * spread) * kUnit * expected)
                    << index;
            }
        }
    }
    softmax.axis = 3;
    expect_error([&] { softmax.apply_in_place(default_engine(), values); },
                 ErrorCategory::invalid_argument, "axis = 3");
}

TEST(ActivationFunctionLoop, RefusesNonF32Tensors) {
    Tensor values({4}, DType::bf16);
    expect_error([&] { parse("relu").apply_in_place(default_engine(), values); },
                 ErrorCategory::invalid_argument, "dtype = bfloat16 -> bfloat16; expected float32");
}

}  // namespace
}  // namespace keel::activation
