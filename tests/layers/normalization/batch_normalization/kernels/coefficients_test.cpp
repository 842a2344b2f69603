// The per-statistic kernels of a training call against the scalar expressions they replace (the
// ones coefficients.hpp spells out, written here as the layer evaluated them before), bit for bit
// on every compiled Highway target: ordinary values, then edge values (signed zeros, NaN,
// infinities, values that overflow f32 or fall below its subnormals, variances that round to 0),
// in counts that leave partial vectors and, with several groups, runs that start mid-vector.

#include "layers/normalization/batch_normalization/kernels/coefficients.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

#include "layers/normalization/batch_normalization/kernels/kernel_test_support.hpp"

namespace keel::batch_normalization {
namespace {

using kernel_testing::compiled_targets;
using kernel_testing::expect_error;
using kernel_testing::target_name;
using kernel_testing::TargetScope;

constexpr double kInfinity = std::numeric_limits<double>::infinity();
constexpr float kInfinity32 = std::numeric_limits<float>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr float kNaN32 = std::numeric_limits<float>::quiet_NaN();

// f64 values led by edge cases, then random ones of every magnitude up to `count` in all.
std::vector<double> doubles_with_edges(std::size_t count, std::uint32_t seed, bool positive) {
    std::vector<double> values = {0.0,
                                  -0.0,
                                  kNaN,
                                  kInfinity,
                                  -kInfinity,
                                  1e300,
                                  -1e300,
                                  1e-310,
                                  -1e-40,
                                  3.0e-9,
                                  static_cast<double>(std::numeric_limits<float>::max()),
                                  0x1.ffffffp127,
                                  1.0,
                                  7.0 / 3.0};
    std::mt19937 random(seed);
    std::uniform_real_distribution<double> mantissa(positive ? 0.0 : -1.0, 1.0);
    std::uniform_int_distribution<int> exponent(-30, 30);
    while (values.size() < count) values.push_back(std::ldexp(mantissa(random), exponent(random)));
    values.resize(count);
    return values;
}

// f32 values led by edge cases, then random ones in [low, high).
std::vector<float> floats_with_edges(std::size_t count, std::uint32_t seed, float low, float high) {
    std::vector<float> values = {0.0F,  -0.0F,  kNaN32, kInfinity32, -kInfinity32, 1e-40F,
                                 1e38F, -1e38F, 1.0F,   -1.0F,       1.0F / 3.0F,  0.5F};
    std::mt19937 random(seed);
    std::uniform_real_distribution<float> distribution(low, high);
    while (values.size() < count) values.push_back(distribution(random));
    values.resize(count);
    // A different order per seed, so that edge values meet each other across operands.
    std::shuffle(values.begin(), values.end(), random);
    return values;
}

// Bit for bit, except that any NaN matches any NaN: which operand's NaN an operation propagates,
// and the sign of the NaN an invalid operation makes, differ between scalar and vector
// instructions, and no caller tells NaNs apart.
void expect_same_bits(const std::vector<float>& actual, const std::vector<float>& expected,
                      const std::string& what) {
    ASSERT_EQ(actual.size(), expected.size()) << what;
    for (std::size_t i = 0; i < actual.size(); ++i) {
        if (std::isnan(expected[i])) {
            EXPECT_TRUE(std::isnan(actual[i])) << what << " [" << i << "]: " << actual[i];
            continue;
        }
        EXPECT_EQ(std::bit_cast<std::uint32_t>(actual[i]),
                  std::bit_cast<std::uint32_t>(expected[i]))
            << what << " [" << i << "]: " << actual[i] << " vs " << expected[i];
    }
}

TEST(Coefficients, GroupMeanMomentsGiveTheScalarBitsOnEveryTarget) {
    for (const std::int64_t groups : {1, 2, 3, 8}) {
        for (const std::int64_t parameters : {1, 5, 37, 300}) {
            const auto statistics = static_cast<std::size_t>(groups * parameters);
            const std::vector<double> mean = doubles_with_edges(statistics, 1, false);
            const std::vector<double> variance = doubles_with_edges(statistics, 2, true);
            std::vector<float> expected_mean(static_cast<std::size_t>(parameters));
            std::vector<float> expected_variance(expected_mean.size());
            for (std::int64_t p = 0; p < parameters; ++p) {
                double mean_sum = 0.0;
                double variance_sum = 0.0;
                for (std::int64_t g = 0; g < groups; ++g) {
                    mean_sum += mean[static_cast<std::size_t>(g * parameters + p)];
                    variance_sum += variance[static_cast<std::size_t>(g * parameters + p)];
                }
                if (groups != 1) {
                    mean_sum /= static_cast<double>(groups);
                    variance_sum /= static_cast<double>(groups);
                }
                expected_mean[static_cast<std::size_t>(p)] = static_cast<float>(mean_sum);
                expected_variance[static_cast<std::size_t>(p)] = static_cast<float>(variance_sum);
            }
            for (const std::int64_t target : compiled_targets()) {
                const TargetScope scope(target);
                const std::string what = target_name(target) + ", " + std::to_string(groups) +
                                         " groups of " + std::to_string(parameters);
                std::vector<float> update_mean(expected_mean.size(), -1.0F);
                std::vector<float> update_variance(expected_mean.size(), -1.0F);
                group_mean_moments(mean, variance, groups, update_mean, update_variance);
                expect_same_bits(update_mean, expected_mean, what + " mean");
                expect_same_bits(update_variance, expected_variance, what + " variance");
            }
        }
    }
}

TEST(Coefficients, RenormCorrectionsGiveTheScalarBitsOnEveryTarget) {
    constexpr std::size_t kParameters = 203;
    const std::vector<float> update_mean = floats_with_edges(kParameters, 3, -4.0F, 4.0F);
    const std::vector<float> update_variance = floats_with_edges(kParameters, 4, 0.0F, 9.0F);
    const std::vector<float> renorm_mean = floats_with_edges(kParameters, 5, -4.0F, 4.0F);
    // Many below the floor √ε, so that the floor is taken.
    const std::vector<float> renorm_stddev = floats_with_edges(kParameters, 6, 0.0F, 0.1F);
    const RenormClipping unbounded{-kInfinity32, kInfinity32, kInfinity32};
    // Bounds that clip often, and NaN bounds (which std::max and std::min never choose).
    for (const RenormClipping& clipping :
         {unbounded, RenormClipping{0.5F, 2.0F, 0.75F}, RenormClipping{1.0F, 1.0F, 0.0F},
          RenormClipping{kNaN32, kNaN32, kNaN32}}) {
        for (const float epsilon : {1e-3F, 1.001e-5F, 0.0F}) {
            const float floor = std::sqrt(epsilon);
            std::vector<float> expected_stddev(kParameters);
            std::vector<float> expected_r(kParameters);
            std::vector<float> expected_d(kParameters);
            for (std::size_t p = 0; p < kParameters; ++p) {
                expected_stddev[p] = std::sqrt(update_variance[p] + epsilon);
                const float floored = std::max(renorm_stddev[p], floor);
                float r = expected_stddev[p] / floored;
                float d = (update_mean[p] - renorm_mean[p]) / floored;
                r = std::max(r, clipping.rmin);
                r = std::min(r, clipping.rmax);
                d = std::max(d, -clipping.dmax);
                d = std::min(d, clipping.dmax);
                expected_r[p] = r;
                expected_d[p] = d;
            }
            const RenormOperands operands{update_mean, update_variance, renorm_mean, renorm_stddev,
                                          epsilon,     floor,           clipping};
            for (const std::int64_t target : compiled_targets()) {
                const TargetScope scope(target);
                const std::string what = target_name(target) + ", epsilon " +
                                         std::to_string(epsilon) + ", rmin " +
                                         std::to_string(clipping.rmin);
                std::vector<float> stddev(kParameters, -1.0F);
                std::vector<float> r(kParameters, -1.0F);
                std::vector<float> d(kParameters, -1.0F);
                renorm_corrections(operands, stddev, r, d);
                expect_same_bits(stddev, expected_stddev, what + " batch_stddev");
                expect_same_bits(r, expected_r, what + " r");
                expect_same_bits(d, expected_d, what + " d");
            }
        }
    }
}

// The layer's coefficient loop as it was written before this kernel, with its inverse standard
// deviations 1/√(f64(f32(variance)) + ε) and its r = 1, d = 0 without renorm.
void scalar_coefficients(const CoefficientOperands& op, std::vector<float>& scale,
                         std::vector<float>& shift) {
    const auto parameters = static_cast<std::size_t>(op.parameters);
    const std::vector<float> ones(parameters, 1.0F);
    const std::vector<float> zeros(parameters, 0.0F);
    const std::span<const float> r = op.r.empty() ? std::span<const float>(ones) : op.r;
    const std::span<const float> d = op.d.empty() ? std::span<const float>(zeros) : op.d;
    scale.resize(op.variance.size());
    shift.resize(op.variance.size());
    for (std::size_t k = 0; k < op.variance.size(); ++k) {
        const std::size_t p = k % parameters;
        const double inverse =
            1.0 / std::sqrt(static_cast<double>(static_cast<float>(op.variance[k])) +
                            static_cast<double>(op.epsilon));
        switch (op.form) {
            case CoefficientForm::plain:
                scale[k] = static_cast<float>(inverse * r[p] * op.gamma[p]);
                shift[k] = static_cast<float>(static_cast<double>(d[p]) * op.gamma[p] + op.beta[p]);
                break;
            case CoefficientForm::adjusted:
                scale[k] = static_cast<float>(inverse * r[p]);
                shift[k] = d[p];
                break;
            case CoefficientForm::folded_adjustment: {
                const double adjustment_scale = op.adjustment_scale[p];
                const double adjustment_bias = op.adjustment_bias[p];
                scale[k] = static_cast<float>(inverse * r[p] * adjustment_scale * op.gamma[p]);
                shift[k] = static_cast<float>(
                    (d[p] * adjustment_scale + adjustment_bias) * op.gamma[p] + op.beta[p]);
                break;
            }
        }
    }
}

std::string form_name(CoefficientForm form) {
    switch (form) {
        case CoefficientForm::plain:
            return "plain";
        case CoefficientForm::adjusted:
            return "adjusted";
        case CoefficientForm::folded_adjustment:
            break;
    }
    return "folded";
}

TEST(Coefficients, TrainingCoefficientsGiveTheScalarBitsOnEveryTarget) {
    for (const std::int64_t groups : {1, 3}) {
        for (const std::int64_t parameters : {1, 7, 37, 301}) {
            const auto count = static_cast<std::size_t>(parameters);
            const std::vector<double> variance =
                doubles_with_edges(count * static_cast<std::size_t>(groups), 7, true);
            // Negative variances too (the square root's NaN), as the edge list's.
            const std::vector<double> signed_variance =
                doubles_with_edges(count * static_cast<std::size_t>(groups), 8, false);
            const std::vector<float> r = floats_with_edges(count, 9, 0.25F, 4.0F);
            const std::vector<float> d = floats_with_edges(count, 10, -2.0F, 2.0F);
            const std::vector<float> gamma = floats_with_edges(count, 11, -3.0F, 3.0F);
            const std::vector<float> beta = floats_with_edges(count, 12, -3.0F, 3.0F);
            const std::vector<float> adjustment_scale = floats_with_edges(count, 13, 0.5F, 2.0F);
            const std::vector<float> adjustment_bias = floats_with_edges(count, 14, -1.0F, 1.0F);
            for (const CoefficientForm form : {CoefficientForm::plain, CoefficientForm::adjusted,
                                               CoefficientForm::folded_adjustment}) {
                for (const bool renorm : {false, true}) {
                    for (const auto* variances : {&variance, &signed_variance}) {
                        for (const float epsilon : {1e-3F, 0.0F}) {
                            CoefficientOperands op;
                            op.form = form;
                            op.parameters = parameters;
                            op.variance = *variances;
                            op.epsilon = epsilon;
                            if (renorm) {
                                op.r = r;
                                op.d = d;
                            }
                            if (form != CoefficientForm::adjusted) {
                                op.gamma = gamma;
                                op.beta = beta;
                            }
                            if (form == CoefficientForm::folded_adjustment) {
                                op.adjustment_scale = adjustment_scale;
                                op.adjustment_bias = adjustment_bias;
                            }
                            std::vector<float> expected_scale;
                            std::vector<float> expected_shift;
                            scalar_coefficients(op, expected_scale, expected_shift);
                            for (const std::int64_t target : compiled_targets()) {
                                const TargetScope scope(target);
                                const std::string what =
                                    target_name(target) + ", " + form_name(form) +
                                    (renorm ? " with renorm, " : ", ") + std::to_string(groups) +
                                    " groups of " + std::to_string(parameters) + ", epsilon " +
                                    std::to_string(epsilon);
                                std::vector<float> scale(variances->size(), -1.0F);
                                std::vector<float> shift(variances->size(), -1.0F);
                                training_coefficients(op, scale, shift);
                                expect_same_bits(scale, expected_scale, what + " scale");
                                expect_same_bits(shift, expected_shift, what + " shift");
                            }
                        }
                    }
                }
            }
        }
    }
}

TEST(Coefficients, RejectMismatchedSizes) {
    const std::vector<double> statistics(6, 1.0);
    std::vector<float> three(3);
    std::vector<float> four(4);
    std::vector<float> six(6);
    expect_error(ErrorCategory::invalid_argument,
                 [&] { group_mean_moments(statistics, statistics, 0, three, three); });
    expect_error(ErrorCategory::shape_mismatch,
                 [&] { group_mean_moments(statistics, statistics, 2, four, four); });
    expect_error(ErrorCategory::shape_mismatch,
                 [&] { group_mean_moments(statistics, statistics, 2, three, four); });

    const RenormOperands renorm{three, three, three, four, 1e-3F, 0.03F, {}};
    expect_error(ErrorCategory::shape_mismatch,
                 [&] { renorm_corrections(renorm, three, three, three); });

    CoefficientOperands op;
    op.parameters = 4;  // does not divide 6
    op.variance = statistics;
    op.gamma = four;
    op.beta = four;
    expect_error(ErrorCategory::invalid_argument, [&] { training_coefficients(op, six, six); });
    op.parameters = 3;
    expect_error(ErrorCategory::shape_mismatch, [&] { training_coefficients(op, six, six); });
    op.gamma = three;
    op.beta = three;
    op.r = three;  // r without d
    expect_error(ErrorCategory::shape_mismatch, [&] { training_coefficients(op, six, six); });
    op.r = {};
    expect_error(ErrorCategory::shape_mismatch, [&] { training_coefficients(op, six, three); });
    op.form = CoefficientForm::folded_adjustment;
    expect_error(ErrorCategory::shape_mismatch, [&] { training_coefficients(op, six, six); });
}

}  // namespace
}  // namespace keel::batch_normalization
