#include <keel/layers/keras/regularizers.hpp>

#include <cmath>
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

constexpr std::string_view kArgument = "gamma_regularizer";

std::shared_ptr<const Regularizer> get(const json& identifier) {
    return get_regularizer(identifier, kWhere, kArgument);
}

// Keras stores factors as float32 and reports float(factor).
double as_float32(double factor) { return static_cast<double>(static_cast<float>(factor)); }

Tensor weights(const std::vector<float>& values, DType dtype = DType::f32) {
    return Tensor::from_floats({static_cast<std::int64_t>(values.size())}, values, dtype);
}

TEST(KerasRegularizers, ShortcutNamesDefaultToOneHundredth) {
    const double hundredth = as_float32(0.01);
    EXPECT_EQ(serialize(*get("l1")),
              json({{"class_name", "L1L2"}, {"config", {{"l1", hundredth}, {"l2", 0.0}}}}));
    EXPECT_EQ(serialize(*get("l2")),
              json({{"class_name", "L1L2"}, {"config", {{"l1", 0.0}, {"l2", hundredth}}}}));
    EXPECT_EQ(serialize(*get("l1_l2")),
              json({{"class_name", "L1L2"}, {"config", {{"l1", hundredth}, {"l2", hundredth}}}}));
    EXPECT_EQ(serialize(*get("L1")), json({{"class_name", "L1"}, {"config", {{"l1", hundredth}}}}));
    EXPECT_EQ(serialize(*get("L2")), json({{"class_name", "L2"}, {"config", {{"l2", hundredth}}}}));
}

// Keras instantiates the class named by a string with no arguments: L1L2() penalizes nothing.
TEST(KerasRegularizers, TheL1L2ClassByNameDefaultsToZero) {
    const auto by_name = get("L1L2");
    EXPECT_EQ(by_name->get_config(), json({{"l1", 0.0}, {"l2", 0.0}}));
    EXPECT_EQ(get({{"class_name", "L1L2"}, {"config", json::object()}})->get_config(),
              by_name->get_config());
    EXPECT_EQ((*by_name)(weights({1, -2, 3})), 0.0);
    // Both factors zero: Keras returns the constant 0 without looking at the weights.
    EXPECT_EQ((*by_name)(weights({std::numeric_limits<float>::infinity()})), 0.0);
}

TEST(KerasRegularizers, NullMeansNoRegularizer) { EXPECT_EQ(get(nullptr), nullptr); }

TEST(KerasRegularizers, ConfigsRoundTripAndFactorsBecomeFloat32) {
    const auto regularizer = get({{"class_name", "L1L2"}, {"config", {{"l1", 0.1}, {"l2", 0.25}}}});
    const json expected = {{"class_name", "L1L2"},
                           {"config", {{"l1", as_float32(0.1)}, {"l2", 0.25}}}};
    EXPECT_EQ(serialize(*regularizer), expected);
    EXPECT_EQ(serialize(*get(serialize(*regularizer))), expected);
    for (const char* name : {"L1", "L2"}) {
        const auto single = get({{"class_name", name}, {"config", json::object()}});
        EXPECT_EQ(serialize(*get(serialize(*single))), serialize(*single));
    }
}

// TF 1.15's l1(l=...)/l2(l=...) call the factor "l"; tf_keras' L1/L2 say "l1"/"l2" and take
// "l" too; tf_keras reads None as the default.
TEST(KerasRegularizers, FactorSpellingsOfEveryVersion) {
    EXPECT_EQ(get({{"class_name", "l1"}, {"config", {{"l", 0.5}}}})->get_config(),
              json({{"l1", 0.5}, {"l2", 0.0}}));
    EXPECT_EQ(get({{"class_name", "l1"}, {"config", {{"l1", 0.5}}}})->get_config(),
              json({{"l1", 0.5}, {"l2", 0.0}}));
    EXPECT_EQ(get({{"class_name", "l2"}, {"config", {{"l", 0.5}}}})->get_config(),
              json({{"l1", 0.0}, {"l2", 0.5}}));
    EXPECT_EQ(get({{"class_name", "l1_l2"}, {"config", {{"l2", 0.5}}}})->get_config(),
              json({{"l1", as_float32(0.01)}, {"l2", 0.5}}));
    EXPECT_EQ(get({{"class_name", "L1"}, {"config", {{"l", 0.25}}}})->get_config(),
              json({{"l1", 0.25}}));
    EXPECT_EQ(get({{"class_name", "L2"}, {"config", {{"l2", 2}}}})->get_config(),
              json({{"l2", 2.0}}));
    EXPECT_EQ(get({{"class_name", "L1"}, {"config", {{"l1", nullptr}}}})->get_config(),
              json({{"l1", as_float32(0.01)}}));
    EXPECT_EQ(get({{"class_name", "L1L2"}, {"config", {{"l2", nullptr}}}})->get_config(),
              json({{"l1", 0.0}, {"l2", 0.0}}));
}

// Factors exactly representable in float32 and small integers make every sum exact, so the
// penalty is exact as well.
TEST(KerasRegularizers, PenaltyIsL1SumAbsPlusL2SumSquares) {
    const Tensor w = weights({1.0f, -2.0f, 3.0f, -4.5f});  // sum |w| = 10.5, sum w^2 = 34.25
    const auto both = get({{"class_name", "L1L2"}, {"config", {{"l1", 0.5}, {"l2", 0.25}}}});
    EXPECT_EQ((*both)(w), 0.5 * 10.5 + 0.25 * 34.25);
    EXPECT_EQ((*get({{"class_name", "L1"}, {"config", {{"l1", 0.5}}}}))(w), 5.25);
    EXPECT_EQ((*get({{"class_name", "L2"}, {"config", {{"l2", 0.25}}}}))(w), 8.5625);
    // The shortcut's factor is float32(0.01), multiplied in double.
    EXPECT_EQ((*get("l1"))(w), as_float32(0.01) * 10.5);
    EXPECT_EQ((*get("l2"))(w), as_float32(0.01) * 34.25);
    EXPECT_EQ((*get("l1_l2"))(w), as_float32(0.01) * 10.5 + as_float32(0.01) * 34.25);
    // Multi-dimensional weights are summed whole.
    const std::vector<float> grid = {1, -1, 2, -2, 3, -3};
    EXPECT_EQ((*both)(Tensor::from_floats({1, 2, 1, 3}, grid)), 0.5 * 12.0 + 0.25 * 28.0);
    EXPECT_EQ((*both)(Tensor({0}, DType::f32)), 0.0);
}

// A term with a zero factor is left out rather than multiplied by zero: with an infinite weight
// the penalty is the other term's +inf, not 0 * inf = NaN.
TEST(KerasRegularizers, ATermWithAZeroFactorIsOmitted) {
    const float infinity = std::numeric_limits<float>::infinity();
    const auto l2_only = get({{"class_name", "L1L2"}, {"config", {{"l1", 0.0}, {"l2", 0.5}}}});
    EXPECT_EQ((*l2_only)(weights({1.0f, infinity})), std::numeric_limits<double>::infinity());
    const auto l1_only = get({{"class_name", "L1L2"}, {"config", {{"l1", 0.5}, {"l2", 0.0}}}});
    EXPECT_EQ((*l1_only)(weights({-infinity})), std::numeric_limits<double>::infinity());
}

TEST(KerasRegularizers, SixteenBitWeightsArePenalizedByTheirValues) {
    const auto both = get({{"class_name", "L1L2"}, {"config", {{"l1", 0.5}, {"l2", 0.25}}}});
    const std::vector<float> values = {0.5f, -1.25f, 3.0f};  // exact in bf16 and f16
    const double expected = (*both)(weights(values));
    EXPECT_EQ((*both)(weights(values, DType::bf16)), expected);
    EXPECT_EQ((*both)(weights(values, DType::f16)), expected);
}

TEST(KerasRegularizers, UnknownNamesWrongTypesAndBadFactorsAreErrors) {
    expect_error([] { get("l3"); }, ErrorCategory::invalid_argument,
                 {kWhere, kArgument, "\"l3\"", "l1, l2, l1_l2, L1L2, L1, L2"});
    expect_error([] { get("L1l2"); }, ErrorCategory::invalid_argument, {"\"L1l2\""});
    expect_error([] { get(0.01); }, ErrorCategory::invalid_argument,
                 {kWhere, "gamma_regularizer = 0.01", "regularizer name"});
    expect_error(
        [] {
            get({{"class_name", "L1L2"}});
        },
        ErrorCategory::invalid_argument, {"gamma_regularizer.config", "(missing)"});
    expect_error(
        [] {
            get({{"class_name", "L1L2"}, {"config", {{"l1", "0.1"}}}});
        },
        ErrorCategory::invalid_argument,
        {kWhere, "gamma_regularizer.config.l1 = \"0.1\"", "a number"});
    expect_error(
        [] {
            get({{"class_name", "L1L2"}, {"config", {{"l2", true}}}});
        },
        ErrorCategory::invalid_argument, {"gamma_regularizer.config.l2 = true"});
    expect_error(
        [] {
            get({{"class_name", "L1L2"}, {"config", {{"l1", 1e39}}}});
        },
        ErrorCategory::invalid_argument,
        {"gamma_regularizer.config.l1 = 1e+39", "finite number within float32 range"});
    expect_error(
        [] {
            get({{"class_name", "L2"}, {"config", {{"l2", std::nan("")}}}});
        },
        ErrorCategory::invalid_argument, {"gamma_regularizer.config.l2", "finite"});
    expect_error(
        [] {
            get({{"class_name", "L1L2"}, {"config", {{"l3", 0.1}}}});
        },
        ErrorCategory::invalid_argument, {"gamma_regularizer.config.l3 = 0.1", "accepted: l1, l2"});
    expect_error(
        [] {
            get({{"class_name", "L1"}, {"config", {{"l2", 0.1}}}});
        },
        ErrorCategory::invalid_argument, {"gamma_regularizer.config.l2 = 0.1"});
    expect_error(
        [] {
            get({{"class_name", "l1"}, {"config", {{"l", 0.1}, {"l1", 0.2}}}});
        },
        ErrorCategory::invalid_argument, {"gamma_regularizer.config.l = 0.1", "not both"});
}

}  // namespace
}  // namespace keel::keras
