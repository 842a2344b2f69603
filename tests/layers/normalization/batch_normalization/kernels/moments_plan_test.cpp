// compute_moments split into a plan made once per geometry and a reusable workspace: the same
// numbers as the one-shot call, whatever the workspace served before; and the vectorized inverse
// standard deviations equal to their scalar expression bit for bit.

#include "layers/normalization/batch_normalization/kernels/moments.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

#include "layers/normalization/batch_normalization/kernels/blocking.hpp"
#include "layers/normalization/batch_normalization/kernels/kernel_test_support.hpp"

namespace keel::batch_normalization {
namespace {

using kernel_testing::compiled_targets;
using kernel_testing::describe;
using kernel_testing::engine_with_threads;
using kernel_testing::expect_error;
using kernel_testing::GeometryCase;
using kernel_testing::random_tensor;
using kernel_testing::target_name;
using kernel_testing::TargetScope;

std::vector<std::uint64_t> bits_of(const std::vector<double>& values) {
    std::vector<std::uint64_t> bits;
    for (const double value : values) bits.push_back(std::bit_cast<std::uint64_t>(value));
    return bits;
}

TEST(MomentsPlan, AReusedWorkspaceGivesTheOneShotResults) {
    // One workspace through geometries of both kernels, growing and shrinking: stale contents
    // from a larger call must never leak into a smaller one.
    const std::vector<GeometryCase> cases = {
        {{64, 300, 3}, {2}},    {{2, 16, 20, 20}, {1}},   {{3, 5, 7, 19}, {3}},
        {{2, 6, 5, 8}, {1, 3}}, {{1, 4096, 15, 15}, {1}}, {{4, 2, 9, 24}, {1, 3}},
        {{1, 64, 8, 8}, {1}},   {{256, 1024}, {1}},       {{8, 32, 32, 32}, {3}}};
    for (const int threads : {1, 2}) {
        const Engine& engine = engine_with_threads(threads);
        MomentsWorkspace workspace;
        for (int round = 0; round < 2; ++round) {
            for (std::size_t i = 0; i < cases.size(); ++i) {
                const GeometryCase& c = cases[i];
                SCOPED_TRACE(describe(c) + ", " + std::to_string(threads) + " thread(s)");
                const Tensor x =
                    random_tensor(c.shape, DType::f32, static_cast<std::uint32_t>(i), 3.0F, 2.0F);
                const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
                const Moments expected = compute_moments(engine, x, geometry);
                const MomentsPlan plan(geometry);
                std::vector<double> mean(static_cast<std::size_t>(geometry.statistic_count));
                std::vector<double> variance(mean.size());
                compute_moments(engine, x, plan, workspace, mean, variance);
                EXPECT_EQ(bits_of(mean), bits_of(expected.mean));
                EXPECT_EQ(bits_of(variance), bits_of(expected.variance));
                EXPECT_GE(workspace.storage.size(), plan.workspace_doubles());
            }
        }
    }
}

TEST(MomentsPlan, WorkspaceIsBoundedByTheStatisticsNotByTheData) {
    // Statistics and partial results, 3 doubles each (moments_partial_results' bound).
    for (const GeometryCase& c : std::vector<GeometryCase>{{{1, 16384, 15, 15}, {1}},
                                                           {{64, 100000}, {1}},
                                                           {{8, 64, 112, 112}, {1}},
                                                           {{32, 56, 56, 64}, {3}},
                                                           {{1 << 24}, {}}}) {
        SCOPED_TRACE(describe(c));
        const ReductionGeometry geometry = make_geometry(c.shape, c.kept_axes);
        const MomentsPlan plan(geometry);
        EXPECT_EQ(plan.partial_results(), moments_partial_results(geometry));
        EXPECT_LE(plan.workspace_doubles(),
                  static_cast<std::size_t>(
                      3 * ((kMaxLanes + 1) * geometry.statistic_count + kMaxPartialResults)));
    }
}

TEST(MomentsPlan, RejectsOutputsOfTheWrongSize) {
    const ReductionGeometry geometry = make_geometry({4, 3}, {1});
    const MomentsPlan plan(geometry);
    MomentsWorkspace workspace;
    std::vector<double> mean(2);
    std::vector<double> variance(3);
    expect_error(ErrorCategory::shape_mismatch, [&] {
        compute_moments(engine_with_threads(1), Tensor({4, 3}, DType::f32), plan, workspace, mean,
                        variance);
    });
}

}  // namespace
}  // namespace keel::batch_normalization
