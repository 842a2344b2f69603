#include "layers/normalization/batch_normalization/kernels/moments.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

#include "engine/cpu_cache.hpp"
#include "layers/normalization/batch_normalization/kernels/blocking.hpp"
#include "layers/normalization/batch_normalization/kernels/kernel_test_support.hpp"
#include "layers/normalization/batch_normalization/reference.hpp"

namespace keel::batch_normalization {
namespace {

using kernel_testing::compiled_targets;
using kernel_testing::describe;
using kernel_testing::engine_with_threads;
using kernel_testing::expect_error;
using kernel_testing::GeometryCase;
using kernel_testing::kEpsilon32;
using kernel_testing::kEpsilon64;
using kernel_testing::random_tensor;
using kernel_testing::statistic_of;
using kernel_testing::target_name;
using kernel_testing::TargetScope;
using kernel_testing::ulp_of;

constexpr DType kDtypes[] = {DType::f32, DType::bf16, DType::f16};

// Error bounds of compute_moments, per statistic, from its arithmetic (worst case; ε = ε32, each
// f32 rounding at most ε/2 relative). With C the longest f32 addition chain inside a block
// (kMaxF32AdditionChain), n the reduction count, D the largest |x − μ| of the statistic, A its
// largest |x| and s = D + ulp32(A):
//  - a block of n_b elements with true mean μ_b is shifted by m, the f32 rounding of its first
//    pass' mean x₀ + S/n_b with S = Σ(x − x₀); S has terms below 2D, so it is off by C·ε·D per
//    element, |μ_b − m| ≤ ulp32(A)/2 + C·ε·D ≤ s, and every |x − m| ≤ |x − μ_b| + |μ_b − m| ≤
//    2D + s ≤ 3s;
//  - the block mean, m plus the correction (S − n_b·(m − x₀))/n_b, is off by C·ε·s from S and by
//    1.5·ε·s from forming the correction (|m − x₀| ≤ 2s): at most 1.5·C·ε·s. Blocks merge in f64,
//    each merge adding ε64·A, at most n merges: |Δμ| ≤ 2·C·ε·s + 4·n·ε64·A;
//  - Σ(x − m)² (C additions of positive terms, each rounded twice) is off by (C/2 + 2)·ε of
//    M2_b + n_b·(μ_b − m)² ≤ M2_b + n_b·s²; subtracting n_b·(μ̂_b − m)², μ̂_b the computed block
//    mean, adds n_b·|μ̂_b − μ_b|·|μ̂_b + μ_b − 2m| ≤ 3·C·ε·s² per element (to first order), and the
//    block means' errors move the between-block part of M2 by 2·|μ_b − μ|·|Δμ_b| ≤ 3·C·ε·s² per
//    element; f64 merges add 4·s·n·ε64·A. So
//    |Δσ²| ≤ (C/2 + 2)·ε·σ² + 7·C·ε·s² + 4·s·n·ε64·A.
struct Bounds {
    double mean;
    double variance;
};

std::vector<Bounds> moments_bounds(const Tensor& x, const GeometryCase& c,
                                   const ReductionGeometry& geometry, const Moments& reference) {
    const std::size_t statistics = static_cast<std::size_t>(geometry.statistic_count);
    std::vector<double> largest_deviation(statistics, 0.0);
    std::vector<double> largest_magnitude(statistics, 0.0);
    for (std::int64_t e = 0; e < x.element_count(); ++e) {
        const std::size_t s = static_cast<std::size_t>(statistic_of(c, e));
        const double value = x.get(e);
        largest_deviation[s] = std::max(largest_deviation[s], std::fabs(value - reference.mean[s]));
        largest_magnitude[s] = std::max(largest_magnitude[s], std::fabs(value));
    }
    const double chain = kMaxF32AdditionChain;
    const double n = static_cast<double>(geometry.reduction_count);
    std::vector<Bounds> bounds(statistics);
    for (std::size_t s = 0; s < statistics; ++s) {
        const double magnitude = largest_magnitude[s];
        const double spread = largest_deviation[s] + ulp_of(DType::f32, magnitude);
        bounds[s].mean = 2.0 * chain * kEpsilon32 * spread + 4.0 * n * kEpsilon64 * magnitude;
        bounds[s].variance = (chain / 2.0 + 2.0) * kEpsilon32 * reference.variance[s] +
                             7.0 * chain * kEpsilon32 * spread * spread +
                             4.0 * spread * n * kEpsilon64 * magnitude;
    }
    return bounds;
}

::testing::AssertionResult moments_within(const Moments& actual, const Moments& expected,
                                          const std::vector<Bounds>& bounds) {
    if (actual.mean.size() != expected.mean.size() ||
        actual.variance.size() != expected.variance.size()) {
        return ::testing::AssertionFailure()
               << "sizes " << actual.mean.size() << "/" << actual.variance.size() << ", expected "
               << expected.mean.size();
    }
    for (std::size_t s = 0; s < expected.mean.size(); ++s) {
        const double mean_error = std::fabs(actual.mean[s] - expected.mean[s]);
        const double variance_error = std::fabs(actual.variance[s] - expected.variance[s]);
        if (!(mean_error <= bounds[s].mean) || !(variance_error <= bounds[s].variance)) {
            return ::testing::AssertionFailure()
                   << "statistic " << s << ": mean " << actual.mean[s] << " vs " << expected.mean[s]
                   << " (bound " << bounds[s].mean << "), variance " << actual.variance[s] << " vs "
                   << expected.variance[s] << " (bound " << bounds[s].variance << ")";
        }
    }
    return ::testing::AssertionSuccess();
}

// compute_moments on every compiled target with 1 and 2 threads, against the reference.
void check_case(const GeometryCase& c, DType dtype, std::uint32_t seed, float center = 3.0F,
                float spread = 2.0F) {
    SCOPED_TRACE(describe(c) + " " + std::string(dtype_name(dtype)));
    const Tensor x = random_tensor(c.shape, dtype, seed, center, spread);
    const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
    const Moments expected = reference_moments(x, geometry);
    const std::vector<Bounds> bounds = moments_bounds(x, c, geometry, expected);
    for (const std::int64_t target : compiled_targets()) {
        TargetScope scope(target);
        for (const int threads : {1, 2}) {
            const Moments actual = compute_moments(engine_with_threads(threads), x, geometry);
            EXPECT_TRUE(moments_within(actual, expected, bounds))
                << target_name(target) << ", " << threads << " thread(s)";
        }
    }
}

void check_cases(const std::vector<GeometryCase>& cases) {
    std::uint32_t seed = 1;
    for (const GeometryCase& c : cases) {
        for (const DType dtype : kDtypes) check_case(c, dtype, seed++);
    }
}

// Channel counts and reduced lengths below, at and above every target's vector width (4, 8, 16
// f32 lanes), widths that need packing (3 channels fill 16 rows of 48), and widths past the
// widest column tile (520, 1001).
TEST(Moments, ChannelsLastMatchesTheReference) {
    std::vector<GeometryCase> cases;
    for (const std::int64_t channels : {1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 100}) {
        for (const std::int64_t rows : {1, 2, 3, 17, 1037})
            cases.push_back({{rows, channels}, {1}});
    }
    for (const std::int64_t channels : {520, 1001}) {
        for (const std::int64_t rows : {1, 3, 70}) cases.push_back({{rows, channels}, {1}});
    }
    // Several row chunks (items, merged in a fixed order): 100 channels pack 4 rows into 400
    // columns, 164 rows per item.
    cases.push_back({{2000, 100}, {1}});
    // 2300 rows of 3 channels: 143 packed rows of 48 columns and 12 rows left over.
    cases.push_back({{4, 25, 23, 3}, {3}});
    check_cases(cases);
}

TEST(Moments, ChannelsFirstMatchesTheReference) {
    std::vector<GeometryCase> cases;
    // Runs of a vector or more, in few samples, go to the run kernel; shorter runs to the matrix
    // kernel (columns folded per channel).
    for (const std::int64_t batch : {1, 2, 3}) {
        for (const std::int64_t channels : {1, 3, 17}) {
            for (const std::int64_t run : {2, 3, 15, 16, 17, 63, 64, 100, 1037}) {
                cases.push_back({{batch, channels, run}, {1}});
            }
        }
    }
    // On both sides of the choice between the kernels (blocking.hpp): runs of 16 in 15 and 16
    // samples, runs of 95 in 94 and 95 samples (the run kernel joins at most 43 runs of 95 per
    // block, so a channel takes several blocks).
    cases.push_back({{15, 3, 4, 4}, {1}});
    cases.push_back({{16, 3, 4, 4}, {1}});
    cases.push_back({{94, 2, 95}, {1}});
    cases.push_back({{95, 2, 95}, {1}});
    // Long runs in many samples: the run kernel joins at most 40 of them per block, so each
    // channel takes three blocks or more.
    cases.push_back({{90, 3, 100}, {1}});
    // [K, R].
    for (const std::int64_t channels : {3, 17}) {
        for (const std::int64_t run : {5, 64, 1037}) cases.push_back({{channels, run}, {0}});
    }
    // NCHW.
    cases.push_back({{2, 5, 7, 9}, {1}});
    cases.push_back({{3, 4, 16, 16}, {1}});
    // One image of short runs: a single row of 300·15·15 columns, cut into tiles of whole
    // channels (2 channels of 225 per tile) that fold into per-channel partial results.
    cases.push_back({{1, 300, 15, 15}, {1}});
    check_cases(cases);
}

TEST(Moments, LongRunsAreSplitAcrossItems) {
    // One statistic over 140000 elements: the run is cut into two pieces of 70000.
    check_cases({{{140000}, {}}, {{2, 2, 131101}, {1}}});
}

TEST(Moments, MultiAxisGeometriesMatchTheReference) {
    check_cases({
        {{3, 5, 7, 16}, {1, 3}},    // NHWC axis [1, 3]: [R K R K]
        {{40, 5, 30, 16}, {1, 3}},  // two row chunks of 20 whole samples, every H in each item
        {{4, 40, 30, 64}, {1, 3}},  // one row chunk: the 40 groups split into 4 items of 10
        // Five row chunks of 12 samples (an odd count) and 16 groups: two blocks of 8 groups,
        // an even count of items, so that two threads get equal halves.
        {{60, 16, 20, 64}, {1, 3}},
        {{2, 4, 17, 3}, {1, 3}},     // narrow inner channels: packing inside each (n, h)
        {{2, 3, 100, 33}, {1, 3}},   // tails on every target
        {{2, 3, 5, 7}, {1, 3}},      // NCHW axis [1, 3]
        {{2, 3, 4, 5, 6}, {1, 3}},   // [R K R K R] with a short run
        {{2, 3, 4, 5, 70}, {1, 3}},  // [R K R K R] with a long run
        {{5, 2, 3, 100}, {0, 2}},    // [K R K R]
    });
}

TEST(Moments, VirtualBatchGeometriesMatchTheReference) {
    check_cases({
        {{2, 4, 3, 3, 16}, {1, 4}},  // NHWC batch 8, virtual batches of 2: [R K R K]
        {{4, 2, 17, 7}, {1, 3}},
        {{3, 2, 5, 5, 33}, {1, 4}},
        {{2, 4, 16, 3, 3}, {1, 2}},  // NCHW: [R K R]
        {{8, 1, 5, 5, 3}, {1, 4}},   // one virtual batch (size = batch): plain [R K]
        {{1, 8, 5, 5, 3}, {1, 4}},   // virtual batches of one sample: [K R K]
    });
}

TEST(Moments, DegenerateGeometriesMatchTheReference) {
    check_cases({
        {{1037}, {}},      // [R]: one statistic
        {{5, 7}, {0, 1}},  // [K]: every element its own statistic, variance 0
        {{}, {}},          // a single element
        {{1, 1, 1}, {2}},
        {{4, 1, 1}, {0}},
        {{1, 1, 64}, {2}},
    });
}

// x = 1e4 + k·2⁻¹⁰ in symmetric pairs ±k (k = 1..20; 0 for an odd count): every value is an f32
// (ulp32(1e4) = 2⁻¹⁰), the mean is exactly 1e4 and the variance Σk²·2⁻²⁰/n exactly known.
Tensor symmetric_large_mean_data(const GeometryCase& c, const ReductionGeometry& geometry,
                                 std::vector<double>& exact_variance) {
    const std::int64_t n = geometry.reduction_count;
    const std::int64_t half = n / 2;
    std::vector<std::int64_t> seen(static_cast<std::size_t>(geometry.statistic_count), 0);
    std::vector<float> values(static_cast<std::size_t>(geometry.element_count));
    exact_variance.assign(static_cast<std::size_t>(geometry.statistic_count), 0.0);
    for (std::int64_t e = 0; e < geometry.element_count; ++e) {
        const std::size_t s = static_cast<std::size_t>(statistic_of(c, e));
        const std::int64_t occurrence = seen[s]++;
        std::int64_t k = 0;
        if (occurrence < half) {
            k = occurrence % 20 + 1;
        } else if (occurrence < 2 * half) {
            k = -((occurrence - half) % 20 + 1);
        }
        values[static_cast<std::size_t>(e)] = 1e4F + std::ldexp(static_cast<float>(k), -10);
        exact_variance[s] += std::ldexp(static_cast<double>(k * k), -20);
    }
    for (double& variance : exact_variance) variance /= static_cast<double>(n);
    return Tensor::from_floats(c.shape, values);
}

TEST(Moments, LargeMeanWithTinySpreadKeepsItsVarianceToAFewUlps) {
    const std::vector<GeometryCase> cases = {
        {{1037, 17}, {1}},    // channels-last with a tail
        {{4096, 64}, {1}},    // channels-last over several items
        {{1000, 3}, {1}},     // packed channels-last
        {{3, 5, 1000}, {1}},  // channels-first runs
        {{50, 4, 3}, {1}},    // channels-first short runs (matrix kernel, folded)
        {{90, 3, 100}, {1}},  // channels-first runs in many samples, several blocks each
        {{2, 3, 40, 7}, {1, 3}}, {{4, 40, 30, 64}, {1, 3}},  // groups split over items
        {{140001}, {}},                                      // one statistic, split over items
    };
    for (const GeometryCase& c : cases) {
        SCOPED_TRACE(describe(c));
        const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
        std::vector<double> exact_variance;
        const Tensor x = symmetric_large_mean_data(c, geometry, exact_variance);

        // A few f32 ulps of the variance (and of the standard deviation for the mean) — far
        // below what any pipeline that forms x² or holds the mean in f32 can reach.
        auto within = [&](const Moments& moments) {
            for (std::size_t s = 0; s < exact_variance.size(); ++s) {
                const double sigma = std::sqrt(exact_variance[s]);
                if (!(std::fabs(moments.mean[s] - 1e4) <= 4 * kEpsilon32 * sigma) ||
                    !(std::fabs(moments.variance[s] - exact_variance[s]) <=
                      4 * kEpsilon32 * exact_variance[s])) {
                    return ::testing::AssertionFailure()
                           << "statistic " << s << ": mean " << moments.mean[s] - 1e4
                           << " off 1e4, variance " << moments.variance[s] << " vs exact "
                           << exact_variance[s];
                }
            }
            return ::testing::AssertionSuccess();
        };
        EXPECT_TRUE(within(reference_moments(x, geometry))) << "reference";
        for (const std::int64_t target : compiled_targets()) {
            TargetScope scope(target);
            for (const int threads : {1, 2}) {
                EXPECT_TRUE(within(compute_moments(engine_with_threads(threads), x, geometry)))
                    << target_name(target) << ", " << threads << " thread(s)";
            }
        }
    }
}

TEST(Moments, TheLargeMeanTestRejectsTheTextbookOnePassFormula) {
    // What the test above guards against: E[x²] − E[x]² in f32 on the same data.
    const GeometryCase c{{1037, 1}, {1}};
    const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
    std::vector<double> exact_variance;
    const Tensor x = symmetric_large_mean_data(c, geometry, exact_variance);
    float sum = 0.0F;
    float sum_of_squares = 0.0F;
    for (std::int64_t e = 0; e < x.element_count(); ++e) {
        sum += x.get(e);
        sum_of_squares += x.get(e) * x.get(e);
    }
    const float n = static_cast<float>(x.element_count());
    const float one_pass = sum_of_squares / n - (sum / n) * (sum / n);
    EXPECT_GT(std::fabs(one_pass - exact_variance[0]), 4 * kEpsilon32 * exact_variance[0]);
}

TEST(Moments, ResultsDoNotDependOnTheThreadCount) {
    // The work is cut by shape alone and partial results merge in a fixed order, so 1 and 2
    // threads give bit-identical statistics.
    for (const GeometryCase& c : std::vector<GeometryCase>{{{3000, 64}, {1}},
                                                           {{4, 8, 9000}, {1}},
                                                           {{8, 64, 30}, {1}},
                                                           {{300000}, {}},
                                                           {{1, 2048, 15, 15}, {1}},
                                                           {{8, 512, 7, 7}, {1}},
                                                           {{64, 256, 7, 7}, {1}},
                                                           {{4, 40, 30, 64}, {1, 3}},
                                                           {{12, 28, 28, 64}, {1, 3}},
                                                           {{60, 16, 20, 64}, {1, 3}},
                                                           // The virtual-batch view: row chunks
                                                           // straddle the repeats of each group.
                                                           {{8, 4, 300, 64}, {1, 3}},
                                                           // Packed rows of 3 channels, with
                                                           // leftover rows in each repeat.
                                                           {{16, 5, 4000, 3}, {1, 3}},
                                                           // Several column tiles.
                                                           {{4, 3, 50, 1100}, {1, 3}}}) {
        SCOPED_TRACE(describe(c));
        const Tensor x = random_tensor(c.shape, DType::f32, 7, -1.0F, 5.0F);
        const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
        const Moments one = compute_moments(engine_with_threads(1), x, geometry);
        const Moments two = compute_moments(engine_with_threads(2), x, geometry);
        EXPECT_EQ(one.mean, two.mean);
        EXPECT_EQ(one.variance, two.variance);
    }
}

TEST(Moments, ResultsDoNotDependOnTheReadingOrder) {
    // A tensor that does not stay in the last-level cache beside an output of its size is read in
    // memory order by one thread and item by item by two: every partial result still receives the
    // same pieces in the same order, so the statistics are bit-identical. Sized from this
    // machine's cache so that one thread takes the memory-order path: multi-axis repeats of whole
    // rows, and the virtual-batch view, whose row chunks straddle the repeats of each group.
    const std::int64_t half_cache_floats = last_level_cache_bytes() / 8;
    const std::int64_t samples = half_cache_floats / (56 * 56 * 64) + 1;
    const std::int64_t rows = half_cache_floats / (8 * 4 * 64) + 1;
    for (const GeometryCase& c :
         std::vector<GeometryCase>{{{samples, 56, 56, 64}, {1, 3}}, {{8, 4, rows, 64}, {1, 3}}}) {
        SCOPED_TRACE(describe(c));
        const Tensor x = random_tensor(c.shape, DType::f32, 11, -1.0F, 5.0F);
        ASSERT_GT(2 * static_cast<std::int64_t>(x.byte_size()), last_level_cache_bytes());
        const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
        const Moments one = compute_moments(engine_with_threads(1), x, geometry);
        const Moments two = compute_moments(engine_with_threads(2), x, geometry);
        EXPECT_EQ(one.mean, two.mean);
        EXPECT_EQ(one.variance, two.variance);
    }
}

TEST(Moments, PartialResultsAreBoundedByTheStatisticsNotByTheData) {
    // The partial results kept for the final merge (24 bytes each) may grow with the statistics
    // (one per packed row of at most kMaxLanes rows, per statistic) plus a fixed allowance for
    // row chunks, never with the columns: one NCHW image of short runs is a single row of
    // C·H·W columns, and keeping a partial result per column took 6x the f32 input's memory.
    for (const GeometryCase& c : std::vector<GeometryCase>{{{1, 16384, 15, 15}, {1}},
                                                           {{1, 65536, 15, 15}, {1}},
                                                           {{2, 4096, 7, 7}, {1}},
                                                           {{1, 1000, 3, 3}, {1, 3}},
                                                           {{64, 100000}, {1}},
                                                           {{8, 64, 112, 112}, {1}},
                                                           {{32, 56, 56, 64}, {3}},
                                                           {{1 << 24}, {}}}) {
        SCOPED_TRACE(describe(c));
        const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
        EXPECT_LE(moments_partial_results(geometry),
                  kMaxLanes * geometry.statistic_count + kMaxPartialResults);
    }
}

TEST(Moments, KernelNameNamesTheLayoutAndTheDispatchedTarget) {
    const ReductionGeometry nhwc = make_geometry({2, 3, 3, 8}, {3});
    const ReductionGeometry nchw = make_geometry({2, 8, 3, 3}, {1});
    const ReductionGeometry multi = make_geometry({2, 3, 3, 8}, {1, 3});
    for (const std::int64_t target : compiled_targets()) {
        TargetScope scope(target);
        const std::string target_suffix = target_name(target);
        EXPECT_EQ(moments_kernel_name(nhwc),
                  std::string("keel:moments_channels_last:").append(target_suffix));
        EXPECT_EQ(moments_kernel_name(nchw),
                  std::string("keel:moments_channels_first:").append(target_suffix));
        EXPECT_EQ(moments_kernel_name(multi),
                  std::string("keel:moments_general:").append(target_suffix));
    }
}

TEST(KernelTargets, BothAvx2AndAvx512AreCompiledAndTestedWhereTheCpuHasThem) {
    // Guards the build: a stray -march flag or disabled target would silently drop a code path
    // from every per-target test above.
    const std::vector<std::int64_t> targets = compiled_targets();
    auto tested = [&](std::int64_t target) {
        return std::find(targets.begin(), targets.end(), target) != targets.end();
    };
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        EXPECT_TRUE(tested(HWY_AVX3));
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        EXPECT_TRUE(tested(HWY_AVX2));
    }
    EXPECT_GE(targets.size(), 2U);
}

TEST(Moments, EmptyInputWithoutStatisticsGivesNoMoments) {
    const ReductionGeometry geometry = make_geometry({0, 4}, {0});
    const Moments moments =
        compute_moments(engine_with_threads(1), Tensor({0, 4}, DType::f32), geometry);
    EXPECT_TRUE(moments.mean.empty());
    EXPECT_TRUE(moments.variance.empty());
}

TEST(Moments, RejectsWhatItCannotReduce) {
    const Engine& engine = engine_with_threads(1);
    // Statistics over nothing (an empty batch): the caller decides what that means.
    expect_error(ErrorCategory::invalid_argument, [&] {
        compute_moments(engine, Tensor({0, 4}, DType::f32), make_geometry({0, 4}, {1}));
    });
    expect_error(ErrorCategory::unsupported, [&] {
        compute_moments(engine, Tensor({2, 4}, DType::f64), make_geometry({2, 4}, {1}));
    });
    expect_error(ErrorCategory::shape_mismatch, [&] {
        compute_moments(engine, Tensor({2, 5}, DType::f32), make_geometry({2, 4}, {1}));
    });
}

}  // namespace
}  // namespace keel::batch_normalization
