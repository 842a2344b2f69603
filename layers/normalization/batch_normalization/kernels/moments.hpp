#pragma once

// Internal: per-statistic mean and biased variance, computed robustly in one pass over memory.
//
// Each block of data (small enough to stay in the core's cache) is reduced with a two-pass mean /
// squared deviation in f32; blocks are merged with Chan's parallel formula in f64. This never forms
// E[x²] − E[x]², so data with mean 1e4 and spread 1e-2 keeps its variance to a few f32 ulps.
//
// The work is split in two: a MomentsPlan, made once per geometry, holds everything the geometry
// alone decides (how the data is cut into items and where their partial results go); a call then
// reduces one tensor with a plan and a MomentsWorkspace, the reusable buffers it works in.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

#include "layers/normalization/batch_normalization/kernels/geometry.hpp"

namespace keel::batch_normalization {

struct Moments {
    std::vector<double> mean;      // per statistic index, geometry.statistic_count entries
    std::vector<double> variance;  // biased: Σ(x − mean)² / n
};

// How compute_moments cuts one geometry into work items (moments.cpp).
struct MomentsSchedule;

// Everything compute_moments derives from the geometry alone. Immutable: one plan serves any
// number of concurrent calls on tensors of that geometry.
class MomentsPlan {
  public:
    explicit MomentsPlan(const ReductionGeometry& geometry);

    const ReductionGeometry& geometry() const noexcept { return geometry_; }
    // The partial results (count, mean and M2 in f64: 24 bytes each) a call keeps for its
    // fixed-order final merge. Bounded by the statistics, never by the data:
    // at most kMaxLanes · statistic_count + kMaxPartialResults (blocking.hpp).
    std::int64_t partial_results() const noexcept;
    // The doubles a call needs in its workspace: count, mean and M2 for every statistic and
    // every partial result.
    std::size_t workspace_doubles() const noexcept;
    const MomentsSchedule* schedule() const noexcept { return schedule_.get(); }

  private:
    ReductionGeometry geometry_;
    std::shared_ptr<const MomentsSchedule> schedule_;  // null for an empty geometry
};

// The buffers one compute_moments call works in. Reused from call to call, it grows to the largest
// plan it served (plan.workspace_doubles() doubles) and then never allocates again. One call at a
// time: concurrent calls need a workspace each.
struct MomentsWorkspace {
    std::vector<double> storage;
};

// `x` is f32, bf16 or f16 with plan.geometry().element_count elements, and reduction_count must
// be > 0 (keel::Error otherwise); `mean` and `variance` (biased) receive statistic_count values
// each. Parallel over the engine's threads; vectorized
// with Highway's runtime dispatch. The result does not depend on the thread count.
void compute_moments(const Engine& engine, const Tensor& x, const MomentsPlan& plan,
                     MomentsWorkspace& workspace, std::span<double> mean,
                     std::span<double> variance);

// The same, planning and allocating its buffers on each call (tests, tools, one-off uses).
// `geometry.reduction_count` must be > 0.
Moments compute_moments(const Engine& engine, const Tensor& x, const ReductionGeometry& geometry);

// MomentsPlan(geometry).partial_results(), 0 for an empty geometry. Besides them a call needs the
// statistics themselves and one column tile per thread (on the stack); tests check that this stays
// bounded by the statistics, never by the data.
std::int64_t moments_partial_results(const ReductionGeometry& geometry);

// The name of the kernel variant compute_moments uses for this geometry, e.g.
// "keel:moments_channels_last:avx2", for reports. One variant serves every input dtype.
std::string moments_kernel_name(const ReductionGeometry& geometry);

}  // namespace keel::batch_normalization
