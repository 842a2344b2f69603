#pragma once

// Internal: the naive double-precision path. It stays naive on purpose: tests check every
// optimized kernel against it, and KEEL_BATCH_NORMALIZATION_KERNEL=reference routes whole layers
// through it.

#include <cstdint>

#include <keel/engine/tensor.hpp>

#include "layers/normalization/batch_normalization/kernels/moments.hpp"
#include "layers/normalization/batch_normalization/kernels/normalize.hpp"

namespace keel::batch_normalization {

// The flat index into a tensor of shape `operand` (NumPy-broadcastable against `shape`) that
// element `flat` of `shape` reads.
std::int64_t broadcast_index(const Shape& shape, const Shape& operand, std::int64_t flat);

// Two-pass mean and biased variance in double, element by element.
Moments reference_moments(const Tensor& x, const ReductionGeometry& geometry);

// The same formula as normalize(), evaluated in double per element with the f64 mean
// (mean_hi + mean_lo), rounded once to y's dtype.
void reference_normalize(const Tensor& x, const ReductionGeometry& geometry,
                         const NormalizeCoefficients& coefficients,
                         const ElementwiseAdjustment* adjustment, Tensor& y);

}  // namespace keel::batch_normalization
