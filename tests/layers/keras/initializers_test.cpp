#include <keel/layers/keras/initializers.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
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

constexpr std::string_view kArgument = "gamma_initializer";

std::shared_ptr<const Initializer> get(const json& identifier) {
    return get_initializer(identifier, kWhere, kArgument);
}

std::vector<float> draw(const json& identifier, const Shape& shape) {
    return (*get(identifier))(shape, kWhere).to_floats();
}

// ----- Statistics. Every bound is 5 standard errors of the estimator over the sample drawn, so a
// correct generator fails a check with probability below 1e-6 (and the seeds are fixed).

constexpr double kStandardErrors = 5.0;
constexpr std::int64_t kDraws = 100'000;

struct SampleMoments {
    double mean = 0.0;
    double variance = 0.0;  // population variance; its 1/N bias is far below the bounds used
};

SampleMoments moments(const std::vector<float>& values) {
    SampleMoments result;
    for (const float value : values) {
        result.mean += value;
    }
    result.mean /= static_cast<double>(values.size());
    for (const float value : values) {
        result.variance += (value - result.mean) * (value - result.mean);
    }
    result.variance /= static_cast<double>(values.size());
    return result;
}

double fraction_within(const std::vector<float>& values, double center, double radius) {
    const auto inside = std::ranges::count_if(
        values, [&](float value) { return std::abs(value - center) <= radius; });
    return static_cast<double>(inside) / static_cast<double>(values.size());
}

// Mean and variance of a distribution with standard deviation `sigma` and fourth central moment
// `fourth_moment` checked against a sample of values.size() draws: the standard error of the
// sample mean is sigma/sqrt(N), that of the sample variance sqrt((mu4 - sigma^4)/N).
void expect_moments(const std::vector<float>& values, double mean, double sigma,
                    double fourth_moment) {
    const auto n = static_cast<double>(values.size());
    const SampleMoments sample = moments(values);
    EXPECT_NEAR(sample.mean, mean, kStandardErrors * sigma / std::sqrt(n));
    const double variance = sigma * sigma;
    EXPECT_NEAR(sample.variance, variance,
                kStandardErrors * std::sqrt((fourth_moment - variance * variance) / n));
}

void expect_fraction(double observed, double probability, std::size_t n) {
    EXPECT_NEAR(
        observed, probability,
        kStandardErrors * std::sqrt(probability * (1.0 - probability) / static_cast<double>(n)));
}

// The standard normal truncated to [-2, 2]: Z = 2*Phi(2) - 1, E[z^2] = 1 - 4*phi(2)/Z,
// E[z^4] = 3*E[z^2] - 16*phi(2)/Z (integration by parts).
struct TruncatedMoments {
    double second;
    double fourth;
};

TruncatedMoments truncated_standard_moments() {
    const double density = std::exp(-2.0) / std::sqrt(2.0 * std::numbers::pi);
    const double mass = std::erf(2.0 / std::numbers::sqrt2);
    const double second = 1.0 - 4.0 * density / mass;
    return {second, 3.0 * second - 16.0 * density / mass};
}

void expect_uniform(const std::vector<float>& values, double low, double high) {
    for (const float value : values) {
        ASSERT_GE(value, static_cast<float>(low));
        ASSERT_LE(value, static_cast<float>(high));
    }
    const double width = high - low;
    expect_moments(values, (low + high) / 2.0, width / std::sqrt(12.0),
                   std::pow(width, 4.0) / 80.0);
    expect_fraction(fraction_within(values, low + width / 8.0, width / 8.0), 0.25, values.size());
}

void expect_normal(const std::vector<float>& values, double mean, double stddev) {
    expect_moments(values, mean, stddev, 3.0 * std::pow(stddev, 4.0));
    expect_fraction(fraction_within(values, mean, stddev), std::erf(1.0 / std::numbers::sqrt2),
                    values.size());
}

// TF redraws values two or more stddevs out. mean + stddev*z is monotone in z through every
// rounding, so no f32 value can pass f32(mean -/+ 2*stddev).
void expect_truncated_normal(const std::vector<float>& values, double mean, double stddev) {
    for (const float value : values) {
        ASSERT_GE(value, static_cast<float>(mean - 2.0 * stddev));
        ASSERT_LE(value, static_cast<float>(mean + 2.0 * stddev));
    }
    const TruncatedMoments standard = truncated_standard_moments();
    expect_moments(values, mean, stddev * std::sqrt(standard.second),
                   standard.fourth * std::pow(stddev, 4.0));
    expect_fraction(fraction_within(values, mean, stddev),
                    std::erf(1.0 / std::numbers::sqrt2) / std::erf(2.0 / std::numbers::sqrt2),
                    values.size());
}

// ----- Names, defaults, configs

struct NameCase {
    const char* name;
    const char* class_name;
};

TEST(KerasInitializers, EveryNameAndAliasResolvesToItsClass) {
    const NameCase cases[] = {
        {"Zeros", "Zeros"},
        {"zeros", "Zeros"},
        {"zero", "Zeros"},
        {"Ones", "Ones"},
        {"ones", "Ones"},
        {"one", "Ones"},
        {"Constant", "Constant"},
        {"constant", "Constant"},
        {"RandomUniform", "RandomUniform"},
        {"random_uniform", "RandomUniform"},
        {"uniform", "RandomUniform"},
        {"RandomNormal", "RandomNormal"},
        {"random_normal", "RandomNormal"},
        {"normal", "RandomNormal"},
        {"TruncatedNormal", "TruncatedNormal"},
        {"truncated_normal", "TruncatedNormal"},
        {"VarianceScaling", "VarianceScaling"},
        {"GlorotUniform", "GlorotUniform"},
        {"glorot_uniform", "GlorotUniform"},
        {"GlorotNormal", "GlorotNormal"},
        {"glorot_normal", "GlorotNormal"},
        // TF 1.15's he_*/lecun_* are functions returning a VarianceScaling.
        {"HeNormal", "VarianceScaling"},
        {"he_normal", "VarianceScaling"},
        {"HeUniform", "VarianceScaling"},
        {"he_uniform", "VarianceScaling"},
        {"LecunNormal", "VarianceScaling"},
        {"lecun_normal", "VarianceScaling"},
        {"LecunUniform", "VarianceScaling"},
        {"lecun_uniform", "VarianceScaling"},
        {"Identity", "Identity"},
        {"identity", "Identity"},
        {"Orthogonal", "Orthogonal"},
        {"orthogonal", "Orthogonal"},
    };
    for (const NameCase& c : cases) {
        SCOPED_TRACE(c.name);
        const auto by_name = get(c.name);
        ASSERT_NE(by_name, nullptr);
        EXPECT_EQ(by_name->class_name(), c.class_name);
        const auto by_dict = get({{"class_name", c.name}, {"config", json::object()}});
        ASSERT_NE(by_dict, nullptr);
        EXPECT_EQ(serialize(*by_dict), serialize(*by_name));
    }
}

TEST(KerasInitializers, NullMeansTheCallerChoosesTheDefault) { EXPECT_EQ(get(nullptr), nullptr); }

TEST(KerasInitializers, DefaultConfigsAreKerasOnes) {
    const json fan_in_normal2 = {{"scale", 2.0},
                                 {"mode", "fan_in"},
                                 {"distribution", "truncated_normal"},
                                 {"seed", nullptr}};
    const std::vector<std::pair<const char*, json>> cases = {
        {"zeros", json::object()},
        {"ones", json::object()},
        {"constant", {{"value", 0}}},
        {"random_uniform", {{"minval", -0.05}, {"maxval", 0.05}, {"seed", nullptr}}},
        {"random_normal", {{"mean", 0.0}, {"stddev", 0.05}, {"seed", nullptr}}},
        {"truncated_normal", {{"mean", 0.0}, {"stddev", 0.05}, {"seed", nullptr}}},
        {"VarianceScaling",
         {{"scale", 1.0},
          {"mode", "fan_in"},
          {"distribution", "truncated_normal"},
          {"seed", nullptr}}},
        {"glorot_uniform", {{"seed", nullptr}}},
        {"glorot_normal", {{"seed", nullptr}}},
        {"he_normal", fan_in_normal2},
        {"he_uniform",
         {{"scale", 2.0}, {"mode", "fan_in"}, {"distribution", "uniform"}, {"seed", nullptr}}},
        {"lecun_normal",
         {{"scale", 1.0},
          {"mode", "fan_in"},
          {"distribution", "truncated_normal"},
          {"seed", nullptr}}},
        {"lecun_uniform",
         {{"scale", 1.0}, {"mode", "fan_in"}, {"distribution", "uniform"}, {"seed", nullptr}}},
        {"identity", {{"gain", 1.0}}},
        {"orthogonal", {{"gain", 1.0}, {"seed", nullptr}}},
    };
    for (const auto& [name, config] : cases) {
        SCOPED_TRACE(name);
        EXPECT_EQ(get(name)->get_config(), config);
    }
    EXPECT_EQ(serialize(*get("random_uniform")),
              json({{"class_name", "RandomUniform"},
                    {"config", {{"minval", -0.05}, {"maxval", 0.05}, {"seed", nullptr}}}}));
}

// A config keel reads back is the config Keras would write: same keys, same values.
TEST(KerasInitializers, ConfigsRoundTrip) {
    const std::vector<json> identifiers = {
        {{"class_name", "Zeros"}, {"config", json::object()}},
        {{"class_name", "Constant"}, {"config", {{"value", {{1, 2}, {3, 4.5}}}}}},
        {{"class_name", "RandomUniform"},
         {"config", {{"minval", -1}, {"maxval", 2.5}, {"seed", 5}}}},
        {{"class_name", "RandomNormal"}, {"config", {{"mean", 1.5}, {"stddev", 3}, {"seed", -7}}}},
        {{"class_name", "TruncatedNormal"},
         {"config", {{"mean", -2.0}, {"stddev", 0.5}, {"seed", nullptr}}}},
        {{"class_name", "VarianceScaling"},
         {"config",
          {{"scale", 0.5},
           {"mode", "fan_avg"},
           {"distribution", "untruncated_normal"},
           {"seed", 3}}}},
        {{"class_name", "GlorotUniform"}, {"config", {{"seed", 11}}}},
        {{"class_name", "GlorotNormal"}, {"config", {{"seed", 12}}}},
        {{"class_name", "Identity"}, {"config", {{"gain", 0.5}}}},
        {{"class_name", "Orthogonal"}, {"config", {{"gain", 2.0}, {"seed", 9}}}},
    };
    for (const json& identifier : identifiers) {
        SCOPED_TRACE(identifier.dump());
        const auto initializer = get(identifier);
        EXPECT_EQ(serialize(*initializer), identifier);
        EXPECT_EQ(serialize(*get(serialize(*initializer))), identifier);
    }
}

// tf_keras writes "module" and "registered_name"; V1 initializers wrote "dtype" into configs.
TEST(KerasInitializers, AcceptsWhatOtherKerasVersionsWrite) {
    const json tf_keras = {{"module", "keras.initializers"},
                           {"class_name", "HeNormal"},
                           {"config", {{"seed", 4}}},
                           {"registered_name", nullptr}};
    EXPECT_EQ(get(tf_keras)->get_config()["scale"], 2.0);
    EXPECT_EQ(get(tf_keras)->get_config()["seed"], 4);
    const json v1 = {{"class_name", "RandomUniform"},
                     {"config", {{"minval", 0}, {"maxval", 1}, {"seed", 1}, {"dtype", "float32"}}}};
    EXPECT_EQ(get(v1)->get_config(), json({{"minval", 0}, {"maxval", 1}, {"seed", 1}}));
}

// ----- Values

TEST(KerasInitializers, ZerosAndOnesFill) {
    for (const float value : draw("zeros", {2, 3})) {
        EXPECT_EQ(value, 0.0f);
    }
    const Tensor ones = (*get("ones"))({4, 1, 2}, kWhere);
    EXPECT_EQ(ones.shape(), (Shape{4, 1, 2}));
    EXPECT_EQ(ones.dtype(), DType::f32);
    for (const float value : ones.to_floats()) {
        EXPECT_EQ(value, 1.0f);
    }
    EXPECT_TRUE((*get("ones"))({0, 3}, kWhere).empty());
}

TEST(KerasInitializers, ConstantFillsReshapesAndBroadcastsOneValue) {
    EXPECT_EQ(draw({{"class_name", "Constant"}, {"config", {{"value", 2.5}}}}, {3}),
              (std::vector<float>{2.5f, 2.5f, 2.5f}));
    EXPECT_EQ(
        draw({{"class_name", "Constant"}, {"config", {{"value", {1, 2, 3, 4, 5, 6}}}}}, {2, 3}),
        (std::vector<float>{1, 2, 3, 4, 5, 6}));
    // A nested list is read row-major, as NumPy reads it, then reshaped.
    EXPECT_EQ(
        draw({{"class_name", "Constant"}, {"config", {{"value", {{1, 2, 3}, {4, 5, 6}}}}}}, {3, 2}),
        (std::vector<float>{1, 2, 3, 4, 5, 6}));
    // tf.constant broadcasts a one-element value.
    EXPECT_EQ(draw({{"class_name", "Constant"}, {"config", {{"value", {7}}}}}, {2, 2}),
              (std::vector<float>{7, 7, 7, 7}));
    // Values become float32 as tf.constant(value, float32) rounds them.
    EXPECT_EQ(draw({{"class_name", "Constant"}, {"config", {{"value", 0.1}}}}, {1}).front(), 0.1f);
}

// V2's Constant (tf.constant) rejects a list of the wrong length; V1 padded with the last value.
TEST(KerasInitializers, ConstantWithTheWrongCountIsAnErrorNamingBothCounts) {
    const auto fewer = get({{"class_name", "Constant"}, {"config", {{"value", {1, 2, 3}}}}});
    expect_error(
        [&] {
            (*fewer)({2, 2}, kWhere);
        },
        ErrorCategory::shape_mismatch, {kWhere, "3 values", "exactly 4", "[2, 2]"});
    expect_error([&] { (*fewer)({2}, kWhere); }, ErrorCategory::shape_mismatch,
                 {kWhere, "3 values", "exactly 2"});
}

TEST(KerasInitializers, IdentityIsAScaledEyeOnTwoDimensionsOnly) {
    const Tensor eye =
        (*get({{"class_name", "Identity"}, {"config", {{"gain", 2.5}}}}))({3, 4}, kWhere);
    for (std::int64_t row = 0; row < 3; ++row) {
        for (std::int64_t column = 0; column < 4; ++column) {
            EXPECT_EQ(eye.at({row, column}), row == column ? 2.5f : 0.0f);
        }
    }
    // gain * eye in float32: a negative gain gives -0.0 off the diagonal, as in TF.
    const Tensor negative =
        (*get({{"class_name", "Identity"}, {"config", {{"gain", -1}}}}))({2, 2}, kWhere);
    EXPECT_EQ(negative.at({0, 0}), -1.0f);
    EXPECT_TRUE(std::signbit(negative.at({0, 1})));
    for (const Shape& shape : {Shape{4}, Shape{2, 2, 2}, Shape{}}) {
        expect_error([&] { (*get("identity"))(shape, kWhere); }, ErrorCategory::shape_mismatch,
                     {kWhere, "shape", shape_to_string(shape), "2-D"});
    }
}

// Gram matrix of the columns of a row-major rows x columns matrix, in double.
std::vector<double> column_gram(const std::vector<float>& matrix, std::int64_t rows,
                                std::int64_t columns) {
    std::vector<double> gram(static_cast<std::size_t>(columns * columns), 0.0);
    for (std::int64_t a = 0; a < columns; ++a) {
        for (std::int64_t b = 0; b < columns; ++b) {
            double dot = 0.0;
            for (std::int64_t r = 0; r < rows; ++r) {
                dot += static_cast<double>(matrix[static_cast<std::size_t>(r * columns + a)]) *
                       matrix[static_cast<std::size_t>(r * columns + b)];
            }
            gram[static_cast<std::size_t>(a * columns + b)] = dot;
        }
    }
    return gram;
}

std::vector<float> transposed(const std::vector<float>& matrix, std::int64_t rows,
                              std::int64_t columns) {
    std::vector<float> result(matrix.size());
    for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t c = 0; c < columns; ++c) {
            result[static_cast<std::size_t>(c * rows + r)] =
                matrix[static_cast<std::size_t>(r * columns + c)];
        }
    }
    return result;
}

// Q is orthonormal in double; rounding each entry to float32 moves a dot product of two unit
// vectors by at most 2u|q_a||q_b| + u^2 (Cauchy-Schwarz, u = 2^-24), so 3u bounds every entry of
// Q^T Q - I (scaled by gain^2).
void expect_orthonormal_columns(const std::vector<float>& matrix, std::int64_t rows,
                                std::int64_t columns, double gain) {
    const double tolerance = 3.0 * 0x1.0p-24 * gain * gain;
    const std::vector<double> gram = column_gram(matrix, rows, columns);
    for (std::int64_t a = 0; a < columns; ++a) {
        for (std::int64_t b = 0; b < columns; ++b) {
            EXPECT_NEAR(gram[static_cast<std::size_t>(a * columns + b)], a == b ? gain * gain : 0.0,
                        tolerance)
                << "entry (" << a << ", " << b << ")";
        }
    }
}

TEST(KerasInitializers, OrthogonalGivesOrthonormalColumnsOrRows) {
    const json seeded = {{"class_name", "Orthogonal"}, {"config", {{"seed", 42}}}};
    // Tall: orthonormal columns.
    expect_orthonormal_columns(draw(seeded, {64, 16}), 64, 16, 1.0);
    // Square.
    expect_orthonormal_columns(draw(seeded, {32, 32}), 32, 32, 1.0);
    // Wide: orthonormal rows (TF factors the transpose).
    expect_orthonormal_columns(transposed(draw(seeded, {16, 64}), 16, 64), 64, 16, 1.0);
    // Higher rank: flattened to (prod(shape[:-1]), shape[-1]) = (36, 8).
    expect_orthonormal_columns(draw(seeded, {3, 3, 4, 8}), 36, 8, 1.0);
    // gain scales Q.
    expect_orthonormal_columns(
        draw({{"class_name", "Orthogonal"}, {"config", {{"gain", 2.0}, {"seed", 1}}}}, {20, 5}), 20,
        5, 2.0);
    EXPECT_TRUE((*get("orthogonal"))({0, 4}, kWhere).empty());
}

// TF multiplies Q by sign(diag(R)), which makes Q Haar-distributed: the first entry of the first
// column is then positive as often as negative. A QR without that step follows the factorization's
// own sign convention (Householder's makes it always negative). Over 400 seeds the count of
// positives is Binomial(400, 1/2): 200 +- 5 standard deviations of 10.
TEST(KerasInitializers, OrthogonalFixesSignsLikeTf) {
    for (const Shape& shape : {Shape{5, 1}, Shape{4, 4}, Shape{2, 6}}) {
        SCOPED_TRACE(shape_to_string(shape));
        int positives = 0;
        for (int seed = 0; seed < 400; ++seed) {
            const json identifier = {{"class_name", "Orthogonal"}, {"config", {{"seed", seed}}}};
            positives += draw(identifier, shape).front() > 0.0f ? 1 : 0;
        }
        EXPECT_NEAR(positives, 200, 50);
    }
}

TEST(KerasInitializers, OrthogonalNeedsRankTwo) {
    for (const Shape& shape : {Shape{5}, Shape{}}) {
        expect_error([&] { (*get("orthogonal"))(shape, kWhere); }, ErrorCategory::shape_mismatch,
                     {kWhere, "shape", shape_to_string(shape), "rank >= 2"});
    }
}

// ----- Seeds

TEST(KerasInitializers, ASeedMakesValuesRepeatableAndDifferentSeedsDiffer) {
    for (const char* name : {"RandomUniform", "RandomNormal", "TruncatedNormal", "VarianceScaling",
                             "GlorotUniform", "GlorotNormal", "he_normal", "he_uniform",
                             "lecun_normal", "lecun_uniform", "Orthogonal"}) {
        SCOPED_TRACE(name);
        const json seed1 = {{"class_name", name}, {"config", {{"seed", 1}}}};
        const json seed2 = {{"class_name", name}, {"config", {{"seed", 2}}}};
        const Shape shape{10, 20};
        const std::vector<float> first = draw(seed1, shape);
        const auto same_instance = get(seed1);
        EXPECT_EQ((*same_instance)(shape, kWhere).to_floats(), first);
        EXPECT_EQ((*same_instance)(shape, kWhere).to_floats(), first);
        const std::vector<float> other = draw(seed2, shape);
        std::size_t equal = 0;
        for (std::size_t i = 0; i < first.size(); ++i) {
            equal += first[i] == other[i] ? 1 : 0;
        }
        // Continuous draws from two streams coincide with probability ~0 per value.
        EXPECT_LT(equal, first.size() / 10);
    }
}

// Without a seed TF's stateful random ops give fresh values on every call.
TEST(KerasInitializers, WithoutASeedEveryCallDrawsAfresh) {
    for (const char* name :
         {"random_uniform", "random_normal", "truncated_normal", "glorot_uniform", "orthogonal"}) {
        SCOPED_TRACE(name);
        const auto initializer = get(name);
        EXPECT_NE((*initializer)({8, 8}, kWhere).to_floats(),
                  (*initializer)({8, 8}, kWhere).to_floats());
    }
}

// ----- Distributions

TEST(KerasInitializers, RandomUniformIsUniformOnItsRange) {
    expect_uniform(draw({{"class_name", "RandomUniform"}, {"config", {{"seed", 3}}}}, {kDraws}),
                   -0.05, 0.05);
    expect_uniform(draw({{"class_name", "RandomUniform"},
                         {"config", {{"minval", 2}, {"maxval", 5}, {"seed", 4}}}},
                        {kDraws}),
                   2.0, 5.0);
}

TEST(KerasInitializers, RandomNormalHasItsMeanAndStddev) {
    expect_normal(draw({{"class_name", "RandomNormal"}, {"config", {{"seed", 5}}}}, {kDraws}), 0.0,
                  0.05);
    expect_normal(draw({{"class_name", "RandomNormal"},
                        {"config", {{"mean", 10}, {"stddev", 2}, {"seed", 6}}}},
                       {kDraws}),
                  10.0, 2.0);
}

TEST(KerasInitializers, TruncatedNormalNeverPassesTwoStddevs) {
    expect_truncated_normal(
        draw({{"class_name", "TruncatedNormal"}, {"config", {{"seed", 7}}}}, {kDraws}), 0.0, 0.05);
    expect_truncated_normal(draw({{"class_name", "TruncatedNormal"},
                                  {"config", {{"mean", -3}, {"stddev", 0.5}, {"seed", 8}}}},
                                 {kDraws}),
                            -3.0, 0.5);
}

// ----- Variance scaling

struct FanCase {
    Shape shape;
    double fan_in;
    double fan_out;
};

// Rank 1: both fans are the length; rank 2: (rows, columns); higher: the last two dims times
// the receptive field (product of the others).
const FanCase kFanCases[] = {
    {{20000}, 20000, 20000},
    {{400, 100}, 400, 100},
    {{3, 3, 40, 30}, 360, 270},
};

double fan_for(const FanCase& c, std::string_view mode) {
    if (mode == "fan_in") {
        return c.fan_in;
    }
    if (mode == "fan_out") {
        return c.fan_out;
    }
    return (c.fan_in + c.fan_out) / 2.0;
}

// Uniform on [-limit, limit], limit = sqrt(3*scale/n): no value beyond f32(limit), and with N
// draws the largest |x| stays below limit*(1 - 20/N) with probability (1 - 20/N)^N < e^-20.
void expect_uniform_limit(const std::vector<float>& values, double limit) {
    float largest = 0.0f;
    for (const float value : values) {
        ASSERT_LE(std::abs(value), static_cast<float>(limit));
        largest = std::max(largest, std::abs(value));
    }
    EXPECT_GE(largest, limit * (1.0 - 20.0 / static_cast<double>(values.size())));
}

TEST(KerasInitializers, VarianceScalingUniformLimitFollowsTheFans) {
    const double scale = 1.5;
    for (const FanCase& c : kFanCases) {
        for (const char* mode : {"fan_in", "fan_out", "fan_avg"}) {
            SCOPED_TRACE(shape_to_string(c.shape) + " " + mode);
            const json identifier = {
                {"class_name", "VarianceScaling"},
                {"config",
                 {{"scale", scale}, {"mode", mode}, {"distribution", "uniform"}, {"seed", 17}}}};
            expect_uniform_limit(draw(identifier, c.shape),
                                 std::sqrt(3.0 * scale / fan_for(c, mode)));
        }
    }
}

TEST(KerasInitializers, VarianceScalingNormalsHaveVarianceScaleOverN) {
    const double scale = 2.0;
    for (const FanCase& c : kFanCases) {
        for (const char* mode : {"fan_in", "fan_out", "fan_avg"}) {
            SCOPED_TRACE(shape_to_string(c.shape) + " " + mode);
            const double variance = scale / fan_for(c, mode);
            const json untruncated = {{"class_name", "VarianceScaling"},
                                      {"config",
                                       {{"scale", scale},
                                        {"mode", mode},
                                        {"distribution", "untruncated_normal"},
                                        {"seed", 18}}}};
            expect_normal(draw(untruncated, c.shape), 0.0, std::sqrt(variance));
            // Truncated: TF divides the stddev by the truncated normal's own stddev, so the
            // values end up with variance scale/n again.
            const json truncated = {{"class_name", "VarianceScaling"},
                                    {"config",
                                     {{"scale", scale},
                                      {"mode", mode},
                                      {"distribution", "truncated_normal"},
                                      {"seed", 19}}}};
            expect_truncated_normal(draw(truncated, c.shape), 0.0,
                                    std::sqrt(variance) / 0.87962566103423978);
        }
    }
}

TEST(KerasInitializers, VarianceScalingOnScalarsAndEmptyShapes) {
    // Rank 0: both fans are 1.
    const std::vector<float> scalar = draw(
        {{"class_name", "VarianceScaling"}, {"config", {{"distribution", "uniform"}, {"seed", 1}}}},
        {});
    ASSERT_EQ(scalar.size(), 1u);
    EXPECT_LE(std::abs(scalar.front()), static_cast<float>(std::sqrt(3.0)));
    // A zero fan is floored at 1 rather than dividing by zero; there is nothing to fill.
    EXPECT_TRUE((*get("glorot_uniform"))({0, 5}, kWhere).empty());
    EXPECT_TRUE((*get("he_normal"))({3, 3, 0, 8}, kWhere).empty());
}

TEST(KerasInitializers, NamedVarianceScalingsUseTheirScaleModeAndDistribution) {
    const FanCase& c = kFanCases[2];
    const double average = (c.fan_in + c.fan_out) / 2.0;
    const auto seeded = [](const char* name) {
        return json{{"class_name", name}, {"config", {{"seed", 23}}}};
    };
    expect_uniform_limit(draw(seeded("glorot_uniform"), c.shape), std::sqrt(6.0 / (2.0 * average)));
    expect_uniform_limit(draw(seeded("he_uniform"), c.shape), std::sqrt(6.0 / c.fan_in));
    expect_uniform_limit(draw(seeded("lecun_uniform"), c.shape), std::sqrt(3.0 / c.fan_in));
    constexpr double kTruncatedStddev = 0.87962566103423978;
    expect_truncated_normal(draw(seeded("glorot_normal"), c.shape), 0.0,
                            std::sqrt(1.0 / average) / kTruncatedStddev);
    expect_truncated_normal(draw(seeded("he_normal"), c.shape), 0.0,
                            std::sqrt(2.0 / c.fan_in) / kTruncatedStddev);
    expect_truncated_normal(draw(seeded("lecun_normal"), c.shape), 0.0,
                            std::sqrt(1.0 / c.fan_in) / kTruncatedStddev);
}

// TF lower-cases the distribution and reads keras-team's "normal" as truncated_normal.
TEST(KerasInitializers, VarianceScalingNormalizesTheDistributionName) {
    const auto with_distribution = [](const char* distribution) {
        return get({{"class_name", "VarianceScaling"},
                    {"config", {{"distribution", distribution}}}})
            ->get_config()["distribution"];
    };
    EXPECT_EQ(with_distribution("normal"), "truncated_normal");
    EXPECT_EQ(with_distribution("Normal"), "truncated_normal");
    EXPECT_EQ(with_distribution("UNIFORM"), "uniform");
    EXPECT_EQ(with_distribution("Untruncated_Normal"), "untruncated_normal");
}

// ----- Errors

TEST(KerasInitializers, UnknownNamesAndWrongJsonTypesAreErrors) {
    expect_error([] { get("glorot"); }, ErrorCategory::invalid_argument,
                 {kWhere, kArgument, "\"glorot\"", "GlorotUniform/glorot_uniform"});
    expect_error([] { get("ZEROS"); }, ErrorCategory::invalid_argument, {"\"ZEROS\""});
    expect_error(
        [] {
            get({{"class_name", "Foo"}, {"config", json::object()}});
        },
        ErrorCategory::invalid_argument, {kArgument, "\"Foo\""});
    for (const json& wrong : {json(5), json(true), json::array({"zeros"}), json(1.5)}) {
        SCOPED_TRACE(wrong.dump());
        expect_error([&] { get(wrong); }, ErrorCategory::invalid_argument,
                     {kWhere, kArgument, wrong.dump(), "initializer name"});
    }
    expect_error(
        [] {
            get({{"config", json::object()}});
        },
        ErrorCategory::invalid_argument, {"gamma_initializer.class_name", "(missing)"});
    expect_error(
        [] {
            get({{"class_name", 3}, {"config", json::object()}});
        },
        ErrorCategory::invalid_argument, {"gamma_initializer.class_name = 3"});
    expect_error(
        [] {
            get({{"class_name", "Zeros"}});
        },
        ErrorCategory::invalid_argument, {"gamma_initializer.config", "(missing)"});
    expect_error(
        [] {
            get({{"class_name", "Zeros"}, {"config", nullptr}});
        },
        ErrorCategory::invalid_argument, {"gamma_initializer.config = null"});
    expect_error(
        [] {
            get({{"class_name", "Zeros"}, {"config", json::object()}, {"extra", 1}});
        },
        ErrorCategory::invalid_argument, {"gamma_initializer.extra = 1"});
}

TEST(KerasInitializers, UnknownConfigKeysAreErrors) {
    expect_error(
        [] {
            get({{"class_name", "Zeros"}, {"config", {{"value", 1}}}});
        },
        ErrorCategory::invalid_argument,
        {kWhere, "gamma_initializer.config.value = 1", "accepted: none"});
    expect_error(
        [] {
            get({{"class_name", "RandomNormal"}, {"config", {{"std", 1}}}});
        },
        ErrorCategory::invalid_argument,
        {"gamma_initializer.config.std = 1", "mean, seed, stddev", "RandomNormal"});
    // Glorot classes take only a seed.
    expect_error(
        [] {
            get({{"class_name", "GlorotUniform"}, {"config", {{"scale", 2}}}});
        },
        ErrorCategory::invalid_argument, {"gamma_initializer.config.scale = 2"});
    // V2's Constant has no verify_shape.
    expect_error(
        [] {
            get({{"class_name", "Constant"}, {"config", {{"value", 1}, {"verify_shape", false}}}});
        },
        ErrorCategory::invalid_argument, {"gamma_initializer.config.verify_shape = false"});
}

TEST(KerasInitializers, BadConfigValuesAreErrors) {
    struct BadCase {
        json identifier;
        std::vector<std::string> fragments;
    };
    const std::vector<BadCase> cases = {
        {{{"class_name", "RandomNormal"}, {"config", {{"stddev", "0.1"}}}},
         {"gamma_initializer.config.stddev = \"0.1\"", "a number"}},
        {{{"class_name", "RandomUniform"}, {"config", {{"minval", true}}}},
         {"gamma_initializer.config.minval = true", "a number"}},
        {{{"class_name", "TruncatedNormal"}, {"config", {{"mean", std::nan("")}}}},
         {"gamma_initializer.config.mean", "a finite number"}},
        {{{"class_name", "RandomUniform"}, {"config", {{"seed", 1.5}}}},
         {"gamma_initializer.config.seed = 1.5", "int64"}},
        {{{"class_name", "RandomUniform"}, {"config", {{"seed", "1"}}}},
         {"gamma_initializer.config.seed = \"1\"", "int64"}},
        {{{"class_name", "RandomUniform"}, {"config", {{"seed", false}}}},
         {"gamma_initializer.config.seed = false"}},
        {{{"class_name", "Orthogonal"}, {"config", {{"seed", std::uint64_t{1} << 63}}}},
         {"gamma_initializer.config.seed = 9223372036854775808", "int64"}},
        {{{"class_name", "VarianceScaling"}, {"config", {{"scale", 0}}}},
         {"gamma_initializer.config.scale = 0", "> 0", "VarianceScaling"}},
        {{{"class_name", "VarianceScaling"}, {"config", {{"scale", -1.5}}}},
         {"gamma_initializer.config.scale = -1.5", "> 0"}},
        {{{"class_name", "VarianceScaling"}, {"config", {{"mode", "fan_sum"}}}},
         {"gamma_initializer.config.mode = \"fan_sum\"", "\"fan_in\", \"fan_out\", \"fan_avg\""}},
        {{{"class_name", "VarianceScaling"}, {"config", {{"mode", "FAN_IN"}}}},
         {"gamma_initializer.config.mode = \"FAN_IN\""}},
        {{{"class_name", "VarianceScaling"}, {"config", {{"mode", 1}}}},
         {"gamma_initializer.config.mode = 1", "a string"}},
        {{{"class_name", "VarianceScaling"}, {"config", {{"distribution", "gaussian"}}}},
         {"gamma_initializer.config.distribution = \"gaussian\"", "\"untruncated_normal\""}},
        {{{"class_name", "Constant"}, {"config", {{"value", "one"}}}},
         {"gamma_initializer.config.value = \"one\"", "rectangular"}},
        {{{"class_name", "Constant"}, {"config", {{"value", {{1, 2}, {3}}}}}},
         {"gamma_initializer.config.value = [[1,2],[3]]", "rectangular"}},
        {{{"class_name", "Constant"}, {"config", {{"value", {1, true}}}}},
         {"gamma_initializer.config.value = [1,true]"}},
        {{{"class_name", "Constant"}, {"config", {{"value", 1e39}}}},
         {"gamma_initializer.config.value", "float32 range"}},
        {{{"class_name", "Identity"}, {"config", {{"gain", nullptr}}}},
         {"gamma_initializer.config.gain = null", "a number"}},
        {{{"class_name", "Zeros"}, {"config", {{"dtype", 5}}}},
         {"gamma_initializer.config.dtype = 5"}},
    };
    for (const BadCase& c : cases) {
        SCOPED_TRACE(c.identifier.dump());
        try {
            get(c.identifier);
            ADD_FAILURE() << "expected a keel::Error";
        } catch (const Error& error) {
            EXPECT_EQ(error.category(), ErrorCategory::invalid_argument);
            EXPECT_THAT(error.what(), ::testing::HasSubstr(std::string(kWhere)));
            for (const std::string& fragment : c.fragments) {
                EXPECT_THAT(error.what(), ::testing::HasSubstr(fragment));
            }
        }
    }
}

TEST(KerasInitializers, InvalidShapesAreErrorsNamingTheCaller) {
    expect_error(
        [] {
            (*get("zeros"))({2, -1}, kWhere);
        },
        ErrorCategory::invalid_argument, {kWhere});
}

}  // namespace
}  // namespace keel::keras
