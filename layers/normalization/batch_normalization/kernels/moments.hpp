#pragma once

// Internal: per-statistic mean and biased variance, computed robustly in one pass over memory.
//
// Each block of data (small enough to stay in L1) is reduced with a two-pass mean / squared
// deviation in f32; blocks are merged with Chan's parallel formula in f64. This never forms
// E[x²] − E[x]², so data with mean 1e4 and spread 1e-2 keeps its variance to a few f32 ulps.

#include <cstdint>
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

// `x` is f32, bf16 or f16 with geometry.element_count elements; reduction_count must be > 0.
// Parallel over the engine's threads; vectorized with Highway's runtime dispatch.
Moments compute_moments(const Engine& engine, const Tensor& x, const ReductionGeometry& geometry);

// How many partial results (count, mean and M2 in f64: 24 bytes each) compute_moments keeps for
// its fixed-order final merge of this geometry. Besides them it needs the statistics themselves
// and one column tile per thread; tests check that this stays bounded by the statistics, never by
// the data.
std::int64_t moments_partial_results(const ReductionGeometry& geometry);

// The name of the kernel variant compute_moments uses for this geometry, e.g.
// "keel:moments_channels_last:avx2", for reports. One variant serves every input dtype.
std::string moments_kernel_name(const ReductionGeometry& geometry);

}  // namespace keel::batch_normalization
