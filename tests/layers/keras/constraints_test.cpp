#include <keel/layers/keras/constraints.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <keel/engine/error.hpp>

#include "layers/keras/keras_test_support.hpp"

namespace keel::keras {
namespace {

using nlohmann::json;
using testing::expect_error;
using testing::kWhere;

constexpr std::string_view kArgument = "gamma_constraint";
constexpr double kEpsilon = 1e-7;        // K.epsilon()
constexpr double kRounding = 0x1.0p-24;  // float32 unit roundoff

std::shared_ptr<const Constraint> get(const json& identifier) {
    return get_constraint(identifier, kWhere, kArgument);
}

json with_config(const char* name, json config) {
    return {{"class_name", name}, {"config", std::move(config)}};
}

Tensor apply(const json& identifier, const Shape& shape, const std::vector<float>& values) {
    const Tensor result = (*get(identifier))(Tensor::from_floats(shape, values), kWhere);
    EXPECT_EQ(result.shape(), shape);
    EXPECT_EQ(result.dtype(), DType::f32);
    return result;
}

// `expected` is the formula evaluated in double. keel evaluates it in float32 like TF, where each
// operation on the chain from the weights to an output rounds once, by at most u relative, and
// passes earlier relative errors on with a factor of at most 1; `roundings` counts the chain's
// operations, so roundings*u*|expected| bounds the difference.
void expect_rounded_result(const Tensor& actual, const std::vector<double>& expected,
                           int roundings) {
    const std::vector<float> values = actual.to_floats();
    ASSERT_EQ(values.size(), expected.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
        EXPECT_NEAR(values[i], expected[i], roundings * kRounding * std::abs(expected[i]))
            << "element " << i;
    }
}

// The norm chain: squares, their sum, sqrt, epsilon added, the ratio, the product.
constexpr int kNormChainRoundings = 6;
// MinMaxNorm adds rate*clip, (1 - rate)*norm (with 1 - rate itself rounded) and their sum.
constexpr int kMinMaxChainRoundings = kNormChainRoundings + 4;

// ----- Names and configs

TEST(KerasConstraints, EveryNameAndAliasResolvesToItsClass) {
    const std::pair<const char*, const char*> cases[] = {
        {"MaxNorm", "MaxNorm"},
        {"max_norm", "MaxNorm"},
        {"maxnorm", "MaxNorm"},
        {"NonNeg", "NonNeg"},
        {"non_neg", "NonNeg"},
        {"nonneg", "NonNeg"},
        {"UnitNorm", "UnitNorm"},
        {"unit_norm", "UnitNorm"},
        {"unitnorm", "UnitNorm"},
        {"MinMaxNorm", "MinMaxNorm"},
        {"min_max_norm", "MinMaxNorm"},
        {"RadialConstraint", "RadialConstraint"},
        {"radial_constraint", "RadialConstraint"},
    };
    for (const auto& [name, class_name] : cases) {
        SCOPED_TRACE(name);
        const auto by_name = get(name);
        ASSERT_NE(by_name, nullptr);
        EXPECT_EQ(by_name->class_name(), class_name);
        EXPECT_EQ(serialize(*get(with_config(name, json::object()))), serialize(*by_name));
    }
    EXPECT_EQ(get(nullptr), nullptr);
}

TEST(KerasConstraints, DefaultConfigsAreKerasOnes) {
    EXPECT_EQ(get("max_norm")->get_config(), json({{"max_value", 2}, {"axis", 0}}));
    EXPECT_EQ(get("non_neg")->get_config(), json::object());
    EXPECT_EQ(get("unit_norm")->get_config(), json({{"axis", 0}}));
    EXPECT_EQ(get("min_max_norm")->get_config(),
              json({{"min_value", 0.0}, {"max_value", 1.0}, {"rate", 1.0}, {"axis", 0}}));
    EXPECT_EQ(get("radial_constraint")->get_config(), json::object());
    EXPECT_EQ(serialize(*get("max_norm")),
              json({{"class_name", "MaxNorm"}, {"config", {{"max_value", 2}, {"axis", 0}}}}));
}

TEST(KerasConstraints, ConfigsRoundTrip) {
    const std::vector<json> identifiers = {
        with_config("MaxNorm", {{"max_value", 3.5}, {"axis", {0, 1}}}),
        with_config("MaxNorm", {{"max_value", nullptr}, {"axis", nullptr}}),
        with_config("NonNeg", json::object()),
        with_config("UnitNorm", {{"axis", -1}}),
        with_config("MinMaxNorm",
                    {{"min_value", 0.5}, {"max_value", 2}, {"rate", 0.25}, {"axis", 1}}),
        with_config("RadialConstraint", json::object()),
    };
    for (const json& identifier : identifiers) {
        SCOPED_TRACE(identifier.dump());
        EXPECT_EQ(serialize(*get(identifier)), identifier);
        EXPECT_EQ(serialize(*get(serialize(*get(identifier)))), identifier);
    }
}

// ----- MaxNorm

// axis=0 on a rank-1 gamma: one norm over the whole vector (5 here), not one per channel.
TEST(KerasConstraints, MaxNormOnRankOneUsesTheWholeVectorNorm) {
    const Tensor scaled = apply("max_norm", {2}, {3.0f, 4.0f});
    expect_rounded_result(scaled, {3.0 * 2.0 / (5.0 + kEpsilon), 4.0 * 2.0 / (5.0 + kEpsilon)},
                          kNormChainRoundings);
    // Per-channel norms would have left each element at its own clip, [2, 2].
    EXPECT_NE(scaled.get(1), 2.0f);
    // A norm under the bound is kept (up to the epsilon).
    expect_rounded_result(apply("max_norm", {2}, {0.6f, 0.8f}),
                          {0.6 / (1.0 + kEpsilon), 0.8 / (1.0 + kEpsilon)}, kNormChainRoundings);
}

TEST(KerasConstraints, MaxNormAlongEachAxisForm) {
    const std::vector<float> w = {3, 0, 4, 1};  // [[3, 0], [4, 1]]
    const double root17 = std::sqrt(17.0);
    // axis 0: column norms 5 and 1.
    expect_rounded_result(apply(with_config("MaxNorm", {{"axis", 0}}), {2, 2}, w),
                          {3 * 2 / (5 + kEpsilon), 0, 4 * 2 / (5 + kEpsilon), 1 / (1 + kEpsilon)},
                          kNormChainRoundings);
    // axis 1 (and -1): row norms 3 and sqrt(17).
    const std::vector<double> by_rows = {3 * 2 / (3 + kEpsilon), 0, 4 * 2 / (root17 + kEpsilon),
                                         1 * 2 / (root17 + kEpsilon)};
    expect_rounded_result(apply(with_config("MaxNorm", {{"axis", 1}}), {2, 2}, w), by_rows,
                          kNormChainRoundings);
    expect_rounded_result(apply(with_config("MaxNorm", {{"axis", -1}}), {2, 2}, w), by_rows,
                          kNormChainRoundings);
    // A list of axes, or null: one norm, sqrt(26).
    const double root26 = std::sqrt(26.0);
    std::vector<double> whole;
    for (const float value : w) {
        whole.push_back(value * 2 / (root26 + kEpsilon));
    }
    expect_rounded_result(apply(with_config("MaxNorm", {{"axis", {0, 1}}}), {2, 2}, w), whole,
                          kNormChainRoundings);
    expect_rounded_result(apply(with_config("MaxNorm", {{"axis", nullptr}}), {2, 2}, w), whole,
                          kNormChainRoundings);
    // An empty list sums over nothing: each element is its own norm.
    expect_rounded_result(apply(with_config("MaxNorm", {{"axis", json::array()}}), {2, 2}, w),
                          {2 * 3 / (3 + kEpsilon), 0, 2 * 4 / (4 + kEpsilon), 1 / (1 + kEpsilon)},
                          kNormChainRoundings);
}

TEST(KerasConstraints, MaxNormBoundsFollowKerasClip) {
    // K.clip with max_value < 0 = min raises the bound to 0: everything collapses to zero.
    for (const float value :
         apply(with_config("MaxNorm", {{"max_value", -1}}), {2}, {3, 4}).to_floats()) {
        EXPECT_EQ(value, 0.0f);
    }
    // None is an infinite bound: only the epsilon acts.
    expect_rounded_result(apply(with_config("MaxNorm", {{"max_value", nullptr}}), {2}, {30, 40}),
                          {30 * 50 / (50 + kEpsilon), 40 * 50 / (50 + kEpsilon)},
                          kNormChainRoundings);
}

TEST(KerasConstraints, MaxNormOfZerosStaysZero) {
    for (const float value : apply("max_norm", {3}, {0, 0, 0}).to_floats()) {
        EXPECT_EQ(value, 0.0f);
    }
}

// ----- NonNeg

TEST(KerasConstraints, NonNegZeroesNegativesAsTfMultiplies) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    const std::vector<float> result =
        apply("non_neg", {6}, {-1.5f, 0.0f, 2.0f, -0.0f, 1e-30f, nan}).to_floats();
    // w * cast(w >= 0): -1.5 * 0 = -0.0; -0.0 >= 0 holds, so it stays -0.0; NaN * 0 = NaN.
    EXPECT_EQ(result[0], 0.0f);
    EXPECT_TRUE(std::signbit(result[0]));
    EXPECT_EQ(result[1], 0.0f);
    EXPECT_EQ(result[2], 2.0f);
    EXPECT_TRUE(std::signbit(result[3]));
    EXPECT_EQ(result[4], 1e-30f);
    EXPECT_TRUE(std::isnan(result[5]));
}

// ----- UnitNorm

TEST(KerasConstraints, UnitNormDividesByEpsilonPlusNorm) {
    expect_rounded_result(apply("unit_norm", {2}, {3, 4}), {3 / (5 + kEpsilon), 4 / (5 + kEpsilon)},
                          kNormChainRoundings);
    // The epsilon is visible on tiny weights and keeps a zero vector at zero.
    expect_rounded_result(apply("unit_norm", {2}, {3e-7f, 4e-7f}),
                          {3e-7 / (5e-7 + kEpsilon), 4e-7 / (5e-7 + kEpsilon)},
                          kNormChainRoundings);
    for (const float value : apply("unit_norm", {2}, {0, 0}).to_floats()) {
        EXPECT_EQ(value, 0.0f);
    }
    // Per column of a matrix with axis 0.
    expect_rounded_result(apply("unit_norm", {2, 2}, {3, 1, 4, 0}),
                          {3 / (5 + kEpsilon), 1 / (1 + kEpsilon), 4 / (5 + kEpsilon), 0},
                          kNormChainRoundings);
}

// ----- MinMaxNorm

TEST(KerasConstraints, MinMaxNormClipsTheNormWithRate) {
    // Defaults [0, 1], rate 1: a norm of 5 becomes 1.
    expect_rounded_result(apply("min_max_norm", {2}, {3, 4}),
                          {3 / (5 + kEpsilon), 4 / (5 + kEpsilon)}, kMinMaxChainRoundings);
    // A norm of 0.5 raised to the minimum 2 with rate 1.
    const std::vector<float> small = {0.3f, 0.4f};
    const double norm = std::sqrt(0.3 * 0.3 + 0.4 * 0.4);
    const auto expected_for = [&](double rate, double desired_clip) {
        const double desired = rate * desired_clip + (1.0 - rate) * norm;
        return std::vector<double>{0.3 * desired / (norm + kEpsilon),
                                   0.4 * desired / (norm + kEpsilon)};
    };
    const json bounds = {{"min_value", 2}, {"max_value", 3}};
    for (const double rate : {1.0, 0.5, 0.25, 0.0}) {
        SCOPED_TRACE(rate);
        json config = bounds;
        config["rate"] = rate;
        expect_rounded_result(apply(with_config("MinMaxNorm", config), {2}, small),
                              expected_for(rate, 2.0), kMinMaxChainRoundings);
    }
    // max_value < min_value: K.clip raises the maximum to the minimum.
    expect_rounded_result(
        apply(with_config("MinMaxNorm", {{"min_value", 2}, {"max_value", 1}}), {2}, {3, 4}),
        {3 * 2 / (5 + kEpsilon), 4 * 2 / (5 + kEpsilon)}, kMinMaxChainRoundings);
    // Per row with axis 1: norms 5 and 0.5 both pulled into [1, 2].
    expect_rounded_result(
        apply(with_config("MinMaxNorm", {{"min_value", 1}, {"max_value", 2}, {"axis", 1}}), {2, 2},
              {3, 4, 0.3f, 0.4f}),
        {3 * 2 / (5 + kEpsilon), 4 * 2 / (5 + kEpsilon), 0.3 / (norm + kEpsilon),
         0.4 / (norm + kEpsilon)},
        kMinMaxChainRoundings);
}

// ----- RadialConstraint

// One (rows, cols) kernel with v(i, j) = 10(i + 1) + (j + 1), so v_00 = 11, v_11 = 22, ...
std::vector<float> diagonal_coded_kernel(std::int64_t size) {
    std::vector<float> values;
    for (std::int64_t i = 0; i < size; ++i) {
        for (std::int64_t j = 0; j < size; ++j) {
            values.push_back(static_cast<float>(10 * (i + 1) + (j + 1)));
        }
    }
    return values;
}

// What TF 1.15's code produces (its docstring shows the 4x4 case the other way round): the
// central block takes the diagonal entry just above-left of the centre, each ring outward the
// next diagonal entry.
TEST(KerasConstraints, RadialConstraintFillsRingsAsTfCodeDoes) {
    const std::vector<float> five = {44, 44, 44, 44, 44,  //
                                     44, 33, 33, 33, 44,  //
                                     44, 33, 22, 33, 44,  //
                                     44, 33, 33, 33, 44,  //
                                     44, 44, 44, 44, 44};
    EXPECT_EQ(apply("radial_constraint", {5, 5, 1, 1}, diagonal_coded_kernel(5)).to_floats(), five);
    // Docstring: outer v_11, inner v_33; the code: inner v_11 (22), outer v_33 (44).
    const std::vector<float> four = {44, 44, 44, 44,  //
                                     44, 22, 22, 44,  //
                                     44, 22, 22, 44,  //
                                     44, 44, 44, 44};
    EXPECT_EQ(apply("radial_constraint", {4, 4, 1, 1}, diagonal_coded_kernel(4)).to_floats(), four);
    const std::vector<float> three = {22, 22, 22,  //
                                      22, 11, 22,  //
                                      22, 22, 22};
    EXPECT_EQ(apply("radial_constraint", {3, 3, 1, 1}, diagonal_coded_kernel(3)).to_floats(),
              three);
    EXPECT_EQ(apply("radial_constraint", {2, 2, 1, 1}, diagonal_coded_kernel(2)).to_floats(),
              (std::vector<float>{11, 11, 11, 11}));
    const std::vector<float> six = {66, 66, 66, 66, 66, 66,  //
                                    66, 55, 55, 55, 55, 66,  //
                                    66, 55, 33, 33, 55, 66,  //
                                    66, 55, 33, 33, 55, 66,  //
                                    66, 55, 55, 55, 55, 66,  //
                                    66, 66, 66, 66, 66, 66};
    EXPECT_EQ(apply("radial_constraint", {6, 6, 1, 1}, diagonal_coded_kernel(6)).to_floats(), six);
}

// Every (input_depth, output_depth) slice is its own kernel.
TEST(KerasConstraints, RadialConstraintTreatsEachChannelPairAlone) {
    const std::int64_t channels = 2;
    const std::int64_t kernels = 3;
    const std::vector<float> base = diagonal_coded_kernel(3);
    std::vector<float> weights;
    for (std::size_t position = 0; position < base.size(); ++position) {
        for (std::int64_t slice = 0; slice < channels * kernels; ++slice) {
            weights.push_back(base[position] + 100.0f * static_cast<float>(slice));
        }
    }
    const std::vector<float> ring = {22, 22, 22, 22, 11, 22, 22, 22, 22};
    const std::vector<float> result =
        apply("radial_constraint", {3, 3, channels, kernels}, weights).to_floats();
    for (std::size_t position = 0; position < ring.size(); ++position) {
        for (std::int64_t slice = 0; slice < channels * kernels; ++slice) {
            EXPECT_EQ(result[position * static_cast<std::size_t>(channels * kernels) +
                             static_cast<std::size_t>(slice)],
                      ring[position] + 100.0f * static_cast<float>(slice));
        }
    }
}

TEST(KerasConstraints, RadialConstraintNeedsSquareRankFourKernels) {
    const auto radial = get("radial_constraint");
    for (const Shape& shape : {Shape{5}, Shape{3, 3, 1}, Shape{1, 3, 3, 1, 1}}) {
        const Tensor w(shape, DType::f32);
        expect_error([&] { (*radial)(w, kWhere); }, ErrorCategory::shape_mismatch,
                     {kWhere, "RadialConstraint weights shape", shape_to_string(shape), "rank 4"});
    }
    // TF's code sizes rings by the rows only and fails on its final reshape; a 1x1 kernel has an
    // empty central slice.
    for (const Shape& shape : {Shape{3, 4, 1, 1}, Shape{4, 3, 1, 1}, Shape{1, 1, 2, 2}}) {
        const Tensor w(shape, DType::f32);
        expect_error([&] { (*radial)(w, kWhere); }, ErrorCategory::shape_mismatch,
                     {kWhere, shape_to_string(shape), "rows == cols >= 2"});
    }
}

// ----- Dtypes

TEST(KerasConstraints, SixteenBitWeightsGiveFloat32Results) {
    const Tensor bf16 = Tensor::from_floats({2}, std::vector<float>{3, 4}, DType::bf16);
    const Tensor result = (*get("unit_norm"))(bf16, kWhere);
    EXPECT_EQ(result.dtype(), DType::f32);
    expect_rounded_result(result, {3 / (5 + kEpsilon), 4 / (5 + kEpsilon)}, kNormChainRoundings);
}

// ----- Errors

TEST(KerasConstraints, UnknownNamesWrongTypesAndBadConfigsAreErrors) {
    expect_error([] { get("max_norms"); }, ErrorCategory::invalid_argument,
                 {kWhere, kArgument, "\"max_norms\"", "MaxNorm/max_norm/maxnorm"});
    expect_error([] { get(2); }, ErrorCategory::invalid_argument,
                 {kWhere, "gamma_constraint = 2", "constraint name"});
    expect_error(
        [] {
            get({{"class_name", "MaxNorm"}, {"config", json::array()}});
        },
        ErrorCategory::invalid_argument, {"gamma_constraint.config = []"});
    const std::vector<std::pair<json, std::string>> cases = {
        {with_config("MaxNorm", {{"max_value", "2"}}), "gamma_constraint.config.max_value = \"2\""},
        {with_config("MaxNorm", {{"axis", 1.5}}), "gamma_constraint.config.axis = 1.5"},
        {with_config("MaxNorm", {{"axis", true}}), "gamma_constraint.config.axis = true"},
        {with_config("UnitNorm", {{"axis", {0, "1"}}}), "gamma_constraint.config.axis = [0,\"1\"]"},
        {with_config("MaxNorm", {{"m", 2}}), "gamma_constraint.config.m = 2"},
        {with_config("NonNeg", {{"axis", 0}}), "gamma_constraint.config.axis = 0"},
        {with_config("RadialConstraint", {{"axis", 0}}), "gamma_constraint.config.axis = 0"},
        {with_config("MinMaxNorm", {{"rate", nullptr}}), "gamma_constraint.config.rate = null"},
        {with_config("MinMaxNorm", {{"min_value", nullptr}}),
         "gamma_constraint.config.min_value = null"},
        {with_config("MinMaxNorm", {{"max_value", std::nan("")}}),
         "gamma_constraint.config.max_value"},
    };
    for (const auto& [identifier, fragment] : cases) {
        SCOPED_TRACE(identifier.dump());
        expect_error([&] { get(identifier); }, ErrorCategory::invalid_argument, {kWhere, fragment});
    }
}

// tf.reduce_sum's rules, checked when the constraint meets the weights' rank.
TEST(KerasConstraints, AxesOutOfRangeOrRepeatedAreErrorsAtApplication) {
    const Tensor vector = Tensor::from_floats({2}, std::vector<float>{1, 2});
    const Tensor matrix = Tensor::from_floats({2, 2}, std::vector<float>{1, 2, 3, 4});
    const Tensor scalar = Tensor::from_floats({}, std::vector<float>{1});
    expect_error(
        [&] {
            (*get(with_config("MaxNorm", {{"axis", 1}})))(vector, kWhere);
        },
        ErrorCategory::invalid_argument, {kWhere, "MaxNorm axis = 1", "[-1, 1)", "[2]"});
    expect_error(
        [&] {
            (*get(with_config("UnitNorm", {{"axis", -3}})))(matrix, kWhere);
        },
        ErrorCategory::invalid_argument, {"UnitNorm axis = -3", "[-2, 2)"});
    expect_error(
        [&] {
            (*get(with_config("MinMaxNorm", {{"axis", {0, -2}}})))(matrix, kWhere);
        },
        ErrorCategory::invalid_argument, {"MinMaxNorm axis = [0,-2]", "distinct"});
    expect_error([&] { (*get("max_norm"))(scalar, kWhere); }, ErrorCategory::invalid_argument,
                 {"MaxNorm axis = 0", "[]"});
    // Over all axes a scalar is fine.
    expect_rounded_result((*get(with_config("UnitNorm", {{"axis", nullptr}})))(scalar, kWhere),
                          {1 / (1 + kEpsilon)}, kNormChainRoundings);
}

}  // namespace
}  // namespace keel::keras
