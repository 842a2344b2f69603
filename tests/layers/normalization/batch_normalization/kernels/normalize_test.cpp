#include "layers/normalization/batch_normalization/kernels/normalize.hpp"

#include <gtest/gtest.h>
#include <hwy/detect_targets.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

#include "layers/normalization/batch_normalization/kernels/kernel_test_support.hpp"
#include "layers/normalization/batch_normalization/kernels/moments.hpp"
#include "layers/normalization/batch_normalization/reference.hpp"

namespace keel::batch_normalization {
namespace {

using kernel_testing::compiled_targets;
using kernel_testing::describe;
using kernel_testing::engine_with_threads;
using kernel_testing::expect_error;
using kernel_testing::GeometryCase;
using kernel_testing::kEpsilon32;
using kernel_testing::random_tensor;
using kernel_testing::random_vector;
using kernel_testing::statistic_of;
using kernel_testing::target_name;
using kernel_testing::TargetScope;
using kernel_testing::ulp_of;

// Shapes of the adjustment's scale and bias tensors (NumPy-broadcast against x).
struct AdjustmentShapes {
    Shape scale;
    Shape bias;
};

struct Problem {
    GeometryCase geometry_case;
    ReductionGeometry geometry;
    Tensor x;
    NormalizeCoefficients coefficients;
    std::optional<ElementwiseAdjustment> adjustment;
};

// Coefficients as the layer makes them: the batch statistics split hi/lo, scale γ/√(σ² + ε) with
// γ of either sign, shift β.
Problem make_problem(const GeometryCase& c, DType x_dtype, std::uint32_t seed,
                     const std::optional<AdjustmentShapes>& adjustment_shapes, float center = 3.0F,
                     float spread = 2.0F) {
    Problem problem{c,
                    make_geometry(c.shape, c.kept_axes),
                    random_tensor(c.shape, x_dtype, seed, center, spread),
                    {},
                    std::nullopt};
    const std::size_t statistics = static_cast<std::size_t>(problem.geometry.statistic_count);
    const Moments moments = reference_moments(problem.x, problem.geometry);
    split_means(moments.mean, problem.coefficients.mean_hi, problem.coefficients.mean_lo);
    const std::vector<float> gamma = random_vector(statistics, seed + 1, -2.0F, 2.0F);
    problem.coefficients.shift = random_vector(statistics, seed + 2, -1.0F, 1.0F);
    problem.coefficients.scale.resize(statistics);
    for (std::size_t s = 0; s < statistics; ++s) {
        problem.coefficients.scale[s] =
            static_cast<float>(gamma[s] / std::sqrt(moments.variance[s] + 1e-3));
    }
    if (adjustment_shapes.has_value()) {
        problem.adjustment = ElementwiseAdjustment{
            random_tensor(adjustment_shapes->scale, DType::f32, seed + 3, 1.0F, 0.5F),
            random_tensor(adjustment_shapes->bias, DType::f32, seed + 4, 0.0F, 0.5F),
            random_vector(statistics, seed + 5, 0.5F, 1.5F),
            random_vector(statistics, seed + 6, -1.0F, 1.0F)};
    }
    return problem;
}

// Error bound of one output of normalize(), from its f32 arithmetic (ε = 2⁻²³, each rounding at
// most ε/2 relative): t = (x − hi) − lo is two subtractions, off by ε·(|t| + |lo|);
// u = t·scale + shift is a multiply-add, fused on AVX2/AVX-512 but two roundings on the older
// targets: |Δu| ≤ |scale|·|Δt| + ε/2·(|t·scale| + |u|). The adjustment adds two more multiply-adds
// of the same kind. The factors 1.01 and 0.51 cover the second-order terms. The kernel rounds its
// f32 result once to the output format and the reference rounds the exact value once, so they
// differ by at most the bound plus one ulp of the output format (half an ulp each).
double output_bound(const Problem& problem, std::int64_t e, DType y_dtype) {
    const std::size_t s = static_cast<std::size_t>(statistic_of(problem.geometry_case, e));
    const NormalizeCoefficients& k = problem.coefficients;
    const double lo = k.mean_lo[s];
    const double t = problem.x.get(e) - (static_cast<double>(k.mean_hi[s]) + lo);
    const double u = t * k.scale[s] + k.shift[s];
    double error = 1.01 * kEpsilon32 * std::fabs(k.scale[s]) * (std::fabs(t) + std::fabs(lo)) +
                   0.51 * kEpsilon32 * (std::fabs(t * k.scale[s]) + std::fabs(u));
    double y = u;
    if (problem.adjustment.has_value()) {
        const ElementwiseAdjustment& a = *problem.adjustment;
        const Shape& shape = problem.x.shape();
        const double adjustment_scale = a.scale.get(broadcast_index(shape, a.scale.shape(), e));
        const double adjustment_bias = a.bias.get(broadcast_index(shape, a.bias.shape(), e));
        const double v = u * adjustment_scale + adjustment_bias;
        error = std::fabs(adjustment_scale) * error +
                0.51 * kEpsilon32 * (std::fabs(u * adjustment_scale) + std::fabs(v));
        y = v * a.outer_scale[s] + a.outer_shift[s];
        error = std::fabs(a.outer_scale[s]) * error +
                0.51 * kEpsilon32 * (std::fabs(v * a.outer_scale[s]) + std::fabs(y));
    }
    return error + ulp_of(y_dtype, std::fabs(y) + error);
}

::testing::AssertionResult outputs_within(const Problem& problem, const Tensor& actual,
                                          const Tensor& expected) {
    for (std::int64_t e = 0; e < expected.element_count(); ++e) {
        const double bound = output_bound(problem, e, expected.dtype());
        const double error = std::fabs(static_cast<double>(actual.get(e)) - expected.get(e));
        if (!(error <= bound)) {
            return ::testing::AssertionFailure()
                   << "element " << e << ": " << actual.get(e) << " vs " << expected.get(e)
                   << " (bound " << bound << ")";
        }
    }
    return ::testing::AssertionSuccess();
}

// normalize() on every compiled target with 1 and 2 threads, against the reference.
void check_problem(const Problem& problem, DType y_dtype) {
    SCOPED_TRACE(describe(problem.geometry_case) + " " +
                 std::string(dtype_name(problem.x.dtype())) + " -> " +
                 std::string(dtype_name(y_dtype)) +
                 (problem.adjustment.has_value()
                      ? " adjustment " + shape_to_string(problem.adjustment->scale.shape()) + "/" +
                            shape_to_string(problem.adjustment->bias.shape())
                      : std::string()));
    const ElementwiseAdjustment* adjustment =
        problem.adjustment.has_value() ? &*problem.adjustment : nullptr;
    Tensor expected(problem.x.shape(), y_dtype);
    reference_normalize(problem.x, problem.geometry, problem.coefficients, adjustment, expected);
    for (const std::int64_t target : compiled_targets()) {
        TargetScope scope(target);
        for (const int threads : {1, 2}) {
            Tensor actual(problem.x.shape(), y_dtype);
            normalize(engine_with_threads(threads), problem.x, problem.geometry,
                      problem.coefficients, adjustment, actual);
            EXPECT_TRUE(outputs_within(problem, actual, expected))
                << target_name(target) << ", " << threads << " thread(s)";
        }
    }
}

constexpr DType kDtypes[] = {DType::f32, DType::bf16, DType::f16};

void check_same_dtype(const std::vector<GeometryCase>& cases) {
    std::uint32_t seed = 100;
    for (const GeometryCase& c : cases) {
        for (const DType dtype : kDtypes) {
            check_problem(make_problem(c, dtype, seed, std::nullopt), dtype);
            seed += 10;
        }
    }
}

TEST(Normalize, ChannelsLastMatchesTheReference) {
    std::vector<GeometryCase> cases;
    for (const std::int64_t channels : {1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100}) {
        for (const std::int64_t rows : {1, 2, 3, 17, 1037})
            cases.push_back({{rows, channels}, {1}});
    }
    cases.push_back({{3, 1001}, {1}});
    // A row longer than two items is cut into chunks that start inside a coefficient period.
    cases.push_back({{3, 70001}, {1}});
    check_same_dtype(cases);
}

TEST(Normalize, ChannelsFirstMatchesTheReference) {
    std::vector<GeometryCase> cases;
    for (const std::int64_t channels : {1, 3, 17}) {
        for (const std::int64_t run : {2, 3, 15, 16, 17, 63, 64, 100, 1037}) {
            cases.push_back({{2, channels, run}, {1}});
        }
    }
    cases.push_back({{3, 5}, {0}});
    cases.push_back({{3, 1037}, {0}});
    cases.push_back({{2, 300, 20}, {1}});  // short runs too many to expand: plain rows
    cases.push_back({{140000}, {}});       // one statistic, one row in chunks
    check_same_dtype(cases);
}

TEST(Normalize, MultiAxisAndVirtualBatchGeometriesMatchTheReference) {
    check_same_dtype({
        {{3, 5, 7, 16}, {1, 3}},
        {{2, 4, 17, 3}, {1, 3}},
        {{2, 3, 100, 33}, {1, 3}},
        {{2, 3, 4, 5, 6}, {1, 3}},
        {{2, 3, 4, 5, 70}, {1, 3}},
        {{2, 4, 3, 3, 16}, {1, 4}},
        {{1, 8, 5, 5, 3}, {1, 4}},
        {{2, 4, 16, 3, 3}, {1, 2}},
        {{}, {}},
        {{5, 7}, {0, 1}},
    });
}

TEST(Normalize, AdjustmentsOfEveryBroadcastShapeMatchTheReference) {
    struct AdjustedCase {
        GeometryCase geometry;
        AdjustmentShapes shapes;
    };
    std::vector<AdjustedCase> cases;
    for (const std::int64_t c : {1, 3, 7, 8, 16, 17, 33, 64, 100}) {
        const Shape nhwc = {2, 3, 5, c};
        const GeometryCase channels_last{nhwc, {3}};
        cases.push_back({channels_last, {{1, 1, 1, c}, {1, 1, 1, c}}});  // per channel
        cases.push_back({channels_last, {{2, 1, 1, c}, {2, 1, 1, c}}});  // per sample and channel
        cases.push_back({channels_last, {{1, 1, 1, 1}, {1, 1, 1, 1}}});  // scalar
        cases.push_back({channels_last, {{2, 1, 1, c}, {1, 1, 1, 1}}});  // mixed broadcasts
        cases.push_back({channels_last, {{1, 3, 5, 1}, {1, 3, 5, 1}}});  // per position
        const GeometryCase channels_first{{2, c, 3, 5}, {1}};
        cases.push_back({channels_first, {{1, c, 1, 1}, {1, c, 1, 1}}});  // NCHW per channel
        cases.push_back({channels_first, {{2, c, 1, 1}, {2, c, 1, 1}}});  // NCHW per sample
        cases.push_back({channels_first, {{1, 1, 3, 5}, {1, 1, 1, 1}}});
    }
    // Long rows: per-sample tables rebuilt per row (3 channels), runs with per-sample scalars.
    cases.push_back({{{2, 40, 40, 3}, {3}}, {{2, 1, 1, 3}, {2, 1, 1, 3}}});
    cases.push_back({{{3, 4, 1037}, {1}}, {{3, 4, 1}, {3, 4, 1}}});
    // Multi-axis with a per-sample adjustment.
    cases.push_back({{{2, 3, 4, 5}, {1, 3}}, {{2, 1, 1, 5}, {2, 1, 1, 5}}});
    std::uint32_t seed = 1000;
    for (const AdjustedCase& c : cases) {
        for (const DType dtype : kDtypes) {
            check_problem(make_problem(c.geometry, dtype, seed, c.shapes), dtype);
            seed += 10;
        }
    }
}

TEST(Normalize, LargeMeanWithTinySpreadLosesNothingToTheMeansF32Rounding) {
    // x ≈ 1e4 ± 1e-2: one f32 ulp of the mean (2⁻¹⁰) times the scale (≈ 170) would be an error
    // of 0.17 in y. The hi/lo split and subtracting before scaling keep the kernel within the
    // f32 bound of the output, which does not contain that term.
    const GeometryCase c{{1037, 17}, {1}};
    const Problem problem = make_problem(c, DType::f32, 77, std::nullopt, 1e4F, 1e-2F);
    Tensor expected(c.shape, DType::f32);
    reference_normalize(problem.x, problem.geometry, problem.coefficients, nullptr, expected);
    bool has_remainder = false;
    for (const float lo : problem.coefficients.mean_lo) has_remainder = has_remainder || lo != 0.0F;
    ASSERT_TRUE(has_remainder) << "the data should have means that f32 cannot hold";
    for (const std::int64_t target : compiled_targets()) {
        TargetScope scope(target);
        Tensor actual(c.shape, DType::f32);
        normalize(engine_with_threads(1), problem.x, problem.geometry, problem.coefficients,
                  nullptr, actual);
        EXPECT_TRUE(outputs_within(problem, actual, expected)) << target_name(target);
        double largest_error = 0.0;
        for (std::int64_t e = 0; e < actual.element_count(); ++e) {
            largest_error = std::max(
                largest_error, std::fabs(static_cast<double>(actual.get(e)) - expected.get(e)));
        }
        EXPECT_LT(largest_error, 1e-5) << target_name(target);
    }
}

// With x = 0, mean 0, scale 1 and shift v the f32 result is v itself, so the output must be
// exactly keel's own conversion of v (Tensor::to: round to nearest even, overflow to infinity,
// quiet NaN) — which the tolerance-based tests cannot tell from truncation one ulp away.
TEST(Normalize, ConvertsExactlyAsTensorToDoes) {
    std::vector<float> values = {1.0F,
                                 -1.5F,
                                 3.0F,
                                 1.00390625F /* bf16 tie, rounds to even (down) */,
                                 1.01171875F /* bf16 tie, rounds up to even */,
                                 1.0039063F /* just above a tie */,
                                 65504.0F,
                                 65519.99F /* f16: rounds to 65504 */,
                                 65520.0F /* f16: overflows */,
                                 3.3895314e38F /* bf16: rounds to infinity */,
                                 1e-5F,
                                 6.1e-5F,
                                 3e-8F /* f16 subnormals */,
                                 1e-40F /* f32 subnormal */,
                                 std::numeric_limits<float>::infinity(),
                                 -std::numeric_limits<float>::infinity(),
                                 std::numeric_limits<float>::quiet_NaN()};
    std::mt19937 generator(3);
    std::uniform_real_distribution<float> distribution(-100.0F, 100.0F);
    while (values.size() < 67) values.push_back(distribution(generator));
    const std::int64_t count = static_cast<std::int64_t>(values.size());
    const ReductionGeometry geometry = make_geometry({count}, {0});  // [K]: one statistic each
    const std::size_t statistics = static_cast<std::size_t>(count);
    // x = 0 with shift = value makes the f32 result exactly the value, whatever the dtype of x.
    const NormalizeCoefficients shift_only{std::vector<float>(statistics, 0.0F),
                                           std::vector<float>(statistics, 0.0F),
                                           std::vector<float>(statistics, 1.0F), values};
    const Tensor values_f32 = Tensor::from_floats({count}, values);
    for (const DType y_dtype : {DType::bf16, DType::f16}) {
        const Tensor expected = values_f32.to(y_dtype);
        const Tensor zeros({count}, y_dtype);
        for (const std::int64_t target : compiled_targets()) {
            TargetScope scope(target);
            Tensor y({count}, y_dtype);
            normalize(engine_with_threads(1), zeros, geometry, shift_only, nullptr, y);
            for (std::int64_t e = 0; e < count; ++e) {
                const std::uint16_t bits = y.data_as<std::uint16_t>()[e];
                const std::uint16_t expected_bits = expected.data_as<std::uint16_t>()[e];
                if (std::isnan(values[static_cast<std::size_t>(e)])) {
                    EXPECT_TRUE(std::isnan(y.get(e))) << target_name(target);
                } else {
                    EXPECT_EQ(bits, expected_bits)
                        << values[static_cast<std::size_t>(e)] << " to " << dtype_name(y_dtype)
                        << " on " << target_name(target);
                }
            }
        }
    }
    // And 16-bit inputs widen exactly: the identity gives them back unchanged.
    const NormalizeCoefficients identity{
        std::vector<float>(statistics, 0.0F), std::vector<float>(statistics, 0.0F),
        std::vector<float>(statistics, 1.0F), std::vector<float>(statistics, 0.0F)};
    for (const DType x_dtype : {DType::bf16, DType::f16}) {
        const Tensor narrow = values_f32.to(x_dtype);
        for (const std::int64_t target : compiled_targets()) {
            TargetScope scope(target);
            Tensor y({count}, x_dtype);
            normalize(engine_with_threads(1), narrow, geometry, identity, nullptr, y);
            for (std::int64_t e = 0; e < count; ++e) {
                if (std::isnan(narrow.get(e))) {
                    EXPECT_TRUE(std::isnan(y.get(e))) << target_name(target);
                } else {
                    EXPECT_EQ(y.get(e), narrow.get(e))
                        << dtype_name(x_dtype) << " on " << target_name(target);
                }
            }
        }
    }
}

// Every layout takes its own route through the kernel (channels-last periods with coefficients
// held in registers, bf16 pairs, groups of short channels-first rows, long rows), and each must
// compute exactly u = ((x − hi) − lo) · scale + shift in f32, fused where the target has FMA (AVX2
// and up; Highway's MulAdd is a multiply and an add below), rounded once to the output format as
// Tensor::to rounds: the comparison is bit for bit, with exact means (inference) and without.
TEST(Normalize, EveryKernelPathComputesTheSameF32Arithmetic) {
    std::uint32_t seed = 2100;
    const std::vector<GeometryCase> cases = {
        {{64, 256}, {1}},      // four-vector coefficient blocks over tiles of periods
        {{300, 32}, {1}},      // two-vector blocks
        {{100, 48}, {1}},      // a packed period (96 for bf16 pairs) and one-vector blocks
        {{3, 70001}, {1}},     // chunks starting inside a period
        {{3, 40, 49}, {1}},    // groups of channels-first rows, rows left over
        {{2, 700, 7}, {1}},    // groups of rows shorter than a vector
        {{2, 45, 100}, {1}},   // groups crossing from one sample to the next
        {{2, 3, 1037}, {1}}};  // long rows: whole vectors (or pairs) and a tail
    for (const GeometryCase& c : cases) {
        for (const DType dtype : kDtypes) {
            for (const bool exact_means : {true, false}) {
                SCOPED_TRACE(describe(c) + " " + std::string(dtype_name(dtype)) +
                             (exact_means ? " exact means" : " split means"));
                Problem problem = make_problem(c, dtype, seed++, std::nullopt);
                NormalizeCoefficients& k = problem.coefficients;
                if (exact_means) std::fill(k.mean_lo.begin(), k.mean_lo.end(), 0.0F);
                std::vector<float> fused(static_cast<std::size_t>(problem.x.element_count()));
                std::vector<float> unfused(fused.size());
                for (std::int64_t e = 0; e < problem.x.element_count(); ++e) {
                    const std::size_t s = static_cast<std::size_t>(statistic_of(c, e));
                    const float t = (problem.x.get(e) - k.mean_hi[s]) - k.mean_lo[s];
                    const float product = t * k.scale[s];
                    fused[static_cast<std::size_t>(e)] = std::fma(t, k.scale[s], k.shift[s]);
                    unfused[static_cast<std::size_t>(e)] = product + k.shift[s];
                }
                const Tensor expected_fused = Tensor::from_floats(c.shape, fused).to(dtype);
                const Tensor expected_unfused = Tensor::from_floats(c.shape, unfused).to(dtype);
                for (const std::int64_t target : compiled_targets()) {
                    const Tensor& expected = target <= HWY_AVX2 ? expected_fused : expected_unfused;
                    TargetScope scope(target);
                    for (const int threads : {1, 2}) {
                        Tensor actual(c.shape, dtype);
                        normalize(engine_with_threads(threads), problem.x, problem.geometry, k,
                                  nullptr, actual);
                        ASSERT_EQ(0,
                                  std::memcmp(actual.data(), expected.data(), expected.byte_size()))
                            << target_name(target) << ", " << threads << " thread(s)";
                    }
                }
            }
        }
    }
}

// The 16-bit conversions (ties, overflow, f32 subnormals, which VCVTNE2PS2BF16 would read as zero,
// NaN) on the routes ConvertsExactlyAsTensorToDoes does not take: channels-last periods (bf16 pairs
// with per-lane coefficients), groups of channels-first rows and long rows of one statistic.
TEST(Normalize, ConvertsExactlyOnEveryKernelPath) {
    std::vector<float> values = {1.00390625F,
                                 1.01171875F,
                                 1.0039063F,
                                 65519.99F,
                                 65520.0F,
                                 3.3895314e38F,
                                 3e-8F,
                                 1e-40F,
                                 -1e-39F,
                                 1.17549421e-38F /* largest subnormal */,
                                 std::numeric_limits<float>::infinity(),
                                 -std::numeric_limits<float>::quiet_NaN()};
    std::mt19937 generator(5);
    std::uniform_real_distribution<float> distribution(-100.0F, 100.0F);
    while (values.size() < 96) values.push_back(distribution(generator));
    const std::size_t statistics = values.size();
    const std::int64_t channels = static_cast<std::int64_t>(statistics);
    // x = 0 with shift = value makes the f32 result exactly the value.
    const NormalizeCoefficients shift_only{std::vector<float>(statistics, 0.0F),
                                           std::vector<float>(statistics, 0.0F),
                                           std::vector<float>(statistics, 1.0F), values};
    for (const GeometryCase& c : std::vector<GeometryCase>{
             {{8, channels}, {1}}, {{1, channels, 100}, {1}}, {{1, channels, 1000}, {1}}}) {
        const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
        std::vector<float> expected_f32(static_cast<std::size_t>(element_count(c.shape)));
        for (std::size_t e = 0; e < expected_f32.size(); ++e) {
            expected_f32[e] =
                values[static_cast<std::size_t>(statistic_of(c, static_cast<std::int64_t>(e)))];
        }
        for (const DType dtype : {DType::bf16, DType::f16}) {
            SCOPED_TRACE(describe(c) + " " + std::string(dtype_name(dtype)));
            const Tensor expected = Tensor::from_floats(c.shape, expected_f32).to(dtype);
            const Tensor zeros(c.shape, dtype);
            for (const std::int64_t target : compiled_targets()) {
                TargetScope scope(target);
                Tensor y(c.shape, dtype);
                normalize(engine_with_threads(1), zeros, geometry, shift_only, nullptr, y);
                for (std::int64_t e = 0; e < y.element_count(); ++e) {
                    if (std::isnan(expected.get(e))) {
                        ASSERT_TRUE(std::isnan(y.get(e))) << target_name(target);
                    } else {
                        ASSERT_EQ(y.data_as<std::uint16_t>()[e],
                                  expected.data_as<std::uint16_t>()[e])
                            << expected_f32[static_cast<std::size_t>(e)] << " on "
                            << target_name(target);
                    }
                }
            }
        }
    }
}

TEST(Normalize, InPlaceGivesTheSameOutputsAsOutOfPlace) {
    // Out of place, a row's last partial vector is recomputed as a whole vector overlapping the
    // previous one; in place that would read outputs, so the kernel stages it instead.
    std::uint32_t seed = 900;
    for (const GeometryCase& c : std::vector<GeometryCase>{
             {{17, 33}, {1}}, {{2, 3, 49}, {1}}, {{2, 300, 20}, {1}}, {{5, 7}, {0, 1}}}) {
        SCOPED_TRACE(describe(c));
        const Problem problem = make_problem(c, DType::f32, seed++, std::nullopt);
        for (const std::int64_t target : compiled_targets()) {
            TargetScope scope(target);
            Tensor out_of_place(c.shape, DType::f32);
            normalize(engine_with_threads(2), problem.x, problem.geometry, problem.coefficients,
                      nullptr, out_of_place);
            Tensor in_place = problem.x.clone();
            normalize(engine_with_threads(2), in_place, problem.geometry, problem.coefficients,
                      nullptr, in_place);
            EXPECT_EQ(in_place.to_floats(), out_of_place.to_floats()) << target_name(target);
        }
    }
}

// Inference passes means that are exact f32 values (every low part +0), and the kernel then skips
// the low part: the results must stay within the same bound of the reference on every operand
// layout (direct channels-last rows, packed narrow rows, channels-first rows, expanded runs).
TEST(Normalize, ExactF32MeansMatchTheReference) {
    std::uint32_t seed = 1500;
    for (const GeometryCase& c : std::vector<GeometryCase>{{{17, 33}, {1}},
                                                           {{40, 3}, {1}},
                                                           {{2, 5, 49}, {1}},
                                                           {{2, 17, 3}, {1}},
                                                           {{2, 3, 4, 5}, {1, 3}}}) {
        for (const DType dtype : kDtypes) {
            Problem problem = make_problem(c, dtype, seed++, std::nullopt);
            std::fill(problem.coefficients.mean_lo.begin(), problem.coefficients.mean_lo.end(),
                      0.0F);
            check_problem(problem, dtype);
        }
    }
}

// Streaming (non-temporal) stores change where the outputs go, never their values: forced on, every
// target writes exactly what ordinary stores write, including rows whose vectors are not aligned
// (channels-first runs of 49), partial tails, the fused ReLU and 16-bit outputs.
TEST(Normalize, StreamingStoresWriteExactlyWhatCachedStoresWrite) {
    std::uint32_t seed = 1600;
    for (const GeometryCase& c : std::vector<GeometryCase>{
             {{1037, 17}, {1}}, {{3, 70001}, {1}}, {{2, 7, 49}, {1}}, {{2, 3, 100, 33}, {1, 3}}}) {
        for (const DType dtype : kDtypes) {
            SCOPED_TRACE(describe(c) + " " + std::string(dtype_name(dtype)));
            Problem problem = make_problem(c, dtype, seed++, std::nullopt);
            for (const bool relu : {false, true}) {
                problem.coefficients.relu = relu;
                for (const std::int64_t target : compiled_targets()) {
                    TargetScope scope(target);
                    for (const int threads : {1, 2}) {
                        Tensor cached(c.shape, dtype);
                        problem.coefficients.stores = OutputStores::cached;
                        normalize(engine_with_threads(threads), problem.x, problem.geometry,
                                  problem.coefficients, nullptr, cached);
                        Tensor streamed(c.shape, dtype);
                        problem.coefficients.stores = OutputStores::streaming;
                        normalize(engine_with_threads(threads), problem.x, problem.geometry,
                                  problem.coefficients, nullptr, streamed);
                        ASSERT_EQ(0,
                                  std::memcmp(cached.data(), streamed.data(), cached.byte_size()))
                            << target_name(target) << ", relu " << relu << ", " << threads
                            << " thread(s)";
                    }
                }
            }
        }
    }
}

// The fused ReLU (the runtime's BatchNormalization+ReLU) clamps exactly the unfused outputs, on
// every target and tail: max(y, 0) rounds nothing, so the comparison is exact.
TEST(Normalize, FusedReluClampsTheUnfusedOutputs) {
    std::uint32_t seed = 950;
    for (const GeometryCase& c : std::vector<GeometryCase>{
             {{17, 33}, {1}}, {{2, 3, 49}, {1}}, {{3, 70001}, {1}}, {{2, 5, 17}, {1}}}) {
        for (const DType dtype : kDtypes) {
            SCOPED_TRACE(describe(c) + " " + std::string(dtype_name(dtype)));
            Problem problem = make_problem(c, dtype, seed++, std::nullopt);
            for (const std::int64_t target : compiled_targets()) {
                TargetScope scope(target);
                Tensor plain(c.shape, dtype);
                problem.coefficients.relu = false;
                normalize(engine_with_threads(2), problem.x, problem.geometry, problem.coefficients,
                          nullptr, plain);
                Tensor fused(c.shape, dtype);
                problem.coefficients.relu = true;
                normalize(engine_with_threads(2), problem.x, problem.geometry, problem.coefficients,
                          nullptr, fused);
                std::int64_t clamped = 0;
                for (std::int64_t e = 0; e < plain.element_count(); ++e) {
                    const float expected = std::max(plain.get(e), 0.0f);
                    clamped += plain.get(e) < 0.0f;
                    ASSERT_EQ(fused.get(e), expected) << target_name(target) << " element " << e;
                }
                EXPECT_GT(clamped, 0);  // the data has negative outputs to clamp
            }
        }
    }
}

TEST(Normalize, KernelNameNamesTheLayoutTheAdjustmentAndTheDispatchedTarget) {
    const ReductionGeometry nhwc = make_geometry({2, 3, 3, 8}, {3});
    const ReductionGeometry nchw = make_geometry({2, 8, 3, 3}, {1});
    const ReductionGeometry multi = make_geometry({2, 3, 3, 8}, {1, 3});
    for (const std::int64_t target : compiled_targets()) {
        TargetScope scope(target);
        const std::string name = target_name(target);
        EXPECT_EQ(normalize_kernel_name(nhwc, false),
                  std::string("keel:normalize_channels_last:").append(name));
        EXPECT_EQ(normalize_kernel_name(nchw, true),
                  std::string("keel:normalize_channels_first_adjusted:").append(name));
        EXPECT_EQ(normalize_kernel_name(multi, false),
                  std::string("keel:normalize_general:").append(name));
    }
}

TEST(Normalize, SplitMeansCarriesTheDoubleMeanInTwoFloats) {
    std::vector<float> hi, lo;
    const std::vector<double> means = {1e4 + 1.0 / 3.0, -2.5, 1e-30, 0.1};
    split_means(means, hi, lo);
    ASSERT_EQ(hi.size(), means.size());
    for (std::size_t i = 0; i < means.size(); ++i) {
        EXPECT_EQ(hi[i], static_cast<float>(means[i]));
        // hi + lo holds the mean to about 48 bits.
        EXPECT_NEAR(static_cast<double>(hi[i]) + lo[i], means[i], std::fabs(means[i]) * 0x1p-46);
    }
    EXPECT_EQ(lo[1], 0.0F);
}

TEST(Normalize, SplitMeansGivesTheScalarBitsOnEveryTarget) {
    // The vector split must equal the scalar expression hi = f32(m), lo = f32(m − hi), or +0 when
    // m − hi is not finite, bit for bit: edge values (NaN, infinities, signed zeros, doubles beyond
    // f32's range or below its subnormals, f32's largest value and the midpoint above it), then
    // random means of every magnitude, in a count that leaves a partial vector on every target.
    constexpr double kInfinity = std::numeric_limits<double>::infinity();
    std::vector<double> means = {std::numeric_limits<double>::quiet_NaN(),
                                 kInfinity,
                                 -kInfinity,
                                 0.0,
                                 -0.0,
                                 1e300,
                                 -1e300,
                                 1e-310,
                                 -1e-40,
                                 static_cast<double>(std::numeric_limits<float>::max()),
                                 0x1.ffffffp127,
                                 std::numeric_limits<double>::max(),
                                 1e4 + 1.0 / 3.0};
    std::mt19937 random(3);
    std::uniform_real_distribution<double> mantissa(-1.0, 1.0);
    std::uniform_int_distribution<int> exponent(-160, 140);
    while (means.size() < 1003) means.push_back(std::ldexp(mantissa(random), exponent(random)));
    std::vector<std::uint32_t> expected_hi, expected_lo;
    for (const double mean : means) {
        const float hi = static_cast<float>(mean);
        const double rest = mean - static_cast<double>(hi);
        const float lo = std::isfinite(rest) ? static_cast<float>(rest) : 0.0F;
        expected_hi.push_back(std::bit_cast<std::uint32_t>(hi));
        expected_lo.push_back(std::bit_cast<std::uint32_t>(lo));
    }
    for (const std::int64_t target : compiled_targets()) {
        TargetScope scope(target);
        SCOPED_TRACE(target_name(target));
        std::vector<float> hi, lo;
        split_means(means, hi, lo);
        ASSERT_EQ(hi.size(), means.size());
        ASSERT_EQ(lo.size(), means.size());
        for (std::size_t i = 0; i < means.size(); ++i) {
            EXPECT_EQ(std::bit_cast<std::uint32_t>(hi[i]), expected_hi[i]) << "mean " << means[i];
            EXPECT_EQ(std::bit_cast<std::uint32_t>(lo[i]), expected_lo[i]) << "mean " << means[i];
        }
    }
}

TEST(Normalize, EmptyTensorsWriteNothing) {
    const ReductionGeometry geometry = make_geometry({0, 4}, {1});
    const NormalizeCoefficients coefficients{
        {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 1, 1, 1}, {0, 0, 0, 0}};
    Tensor y({0, 4}, DType::f32);
    normalize(engine_with_threads(1), Tensor({0, 4}, DType::f32), geometry, coefficients, nullptr,
              y);
    EXPECT_EQ(y.element_count(), 0);
}

TEST(Normalize, RejectsInconsistentArguments) {
    const Engine& engine = engine_with_threads(1);
    const Shape shape = {2, 3, 4};
    const ReductionGeometry geometry = make_geometry(shape, {2});
    const Tensor x({2, 3, 4}, DType::f32);
    const NormalizeCoefficients coefficients{
        {0, 0, 0, 0}, {0, 0, 0, 0}, {1, 1, 1, 1}, {0, 0, 0, 0}};
    Tensor y(shape, DType::f32);
    expect_error(ErrorCategory::shape_mismatch, [&] {
        Tensor wrong({2, 12}, DType::f32);
        normalize(engine, x, geometry, coefficients, nullptr, wrong);
    });
    expect_error(ErrorCategory::shape_mismatch, [&] {
        NormalizeCoefficients short_scale = coefficients;
        short_scale.scale.pop_back();
        normalize(engine, x, geometry, short_scale, nullptr, y);
    });
    expect_error(ErrorCategory::unsupported, [&] {
        Tensor wide(shape, DType::f64);
        normalize(engine, x, geometry, coefficients, nullptr, wide);
    });
    expect_error(ErrorCategory::unsupported, [&] {
        normalize(engine, Tensor(shape, DType::f64), geometry, coefficients, nullptr, y);
    });
    expect_error(ErrorCategory::unsupported, [&] {
        Tensor narrow(shape, DType::bf16);
        normalize(engine, x, geometry, coefficients, nullptr, narrow);
    });
    expect_error(ErrorCategory::shape_mismatch, [&] {
        normalize(engine, Tensor({2, 3, 5}, DType::f32), geometry, coefficients, nullptr, y);
    });
    const std::vector<float> ones(4, 1.0F);
    const std::vector<float> zeros(4, 0.0F);
    expect_error(ErrorCategory::shape_mismatch, [&] {
        const ElementwiseAdjustment bad{Tensor({2, 3, 2}, DType::f32),
                                        Tensor({1, 1, 1}, DType::f32), ones, zeros};
        normalize(engine, x, geometry, coefficients, &bad, y);
    });
    expect_error(ErrorCategory::shape_mismatch, [&] {
        const ElementwiseAdjustment bad{Tensor({3, 4}, DType::f32), Tensor({1, 1, 1}, DType::f32),
                                        ones, zeros};
        normalize(engine, x, geometry, coefficients, &bad, y);
    });
    expect_error(ErrorCategory::unsupported, [&] {
        const ElementwiseAdjustment bad{Tensor({1, 1, 4}, DType::bf16),
                                        Tensor({1, 1, 1}, DType::f32), ones, zeros};
        normalize(engine, x, geometry, coefficients, &bad, y);
    });
    expect_error(ErrorCategory::shape_mismatch, [&] {
        const ElementwiseAdjustment bad{
            Tensor({1, 1, 4}, DType::f32), Tensor({1, 1, 1}, DType::f32), ones, {0.0F}};
        normalize(engine, x, geometry, coefficients, &bad, y);
    });
    // A geometry made from another shape with the same element count.
    expect_error(ErrorCategory::shape_mismatch, [&] {
        const ElementwiseAdjustment adjustment{Tensor({1, 1}, DType::f32),
                                               Tensor({1, 1}, DType::f32), ones, zeros};
        Tensor other_y({4, 6}, DType::f32);
        normalize(engine, Tensor({4, 6}, DType::f32), geometry, coefficients, &adjustment, other_y);
    });
}

}  // namespace
}  // namespace keel::batch_normalization
