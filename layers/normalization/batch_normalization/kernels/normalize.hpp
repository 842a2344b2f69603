#pragma once

// Internal: the element-wise pass of batch normalization, written once per element.
//
// For statistic index k (see geometry.hpp) every element x becomes
//     u = ((x − mean_hi[k]) − mean_lo[k]) · scale[k] + shift[k]
// and, without an adjustment, y = u. Subtracting the mean before scaling (never x·a + (b − μ·a))
// keeps data with a large mean and a tiny spread exact; the hi+lo split carries the f64 mean
// exactly enough that the output error does not depend on ulp32(mean).
// With an adjustment (Keras' `adjustment`, broadcast element-wise):
//     y = (u · adjustment_scale[e] + adjustment_bias[e]) · outer_scale[k] + outer_shift[k].
// Output is rounded once to y's dtype.

#include <string>
#include <string_view>
#include <vector>

#include <keel/engine/engine.hpp>
#include <keel/engine/tensor.hpp>

#include "layers/normalization/batch_normalization/kernels/geometry.hpp"

namespace keel::batch_normalization {

// How the pass writes its output. Ordinary stores leave it in cache for the next layer to read;
// non-temporal (streaming) stores send it to memory without reading each line first, which is
// faster when input and output together exceed the last-level cache and the output would be
// evicted anyway. `automatic` chooses by that size.
enum class OutputStores { automatic, cached, streaming };

struct NormalizeCoefficients {
    std::vector<float> mean_hi;  // per statistic index
    std::vector<float> mean_lo;  // f32(mean − mean_hi); zeros when the mean is already f32
    std::vector<float> scale;
    std::vector<float> shift;
    // Then y = max(y, 0) in the same pass (the runtime's BatchNormalization+ReLU fusion). Not with
    // an adjustment.
    bool relu = false;
    // Not with an adjustment, which always stores ordinarily.
    OutputStores stores = OutputStores::automatic;
};

// Splits f64 means into hi/lo f32 pairs.
void split_means(const std::vector<double>& mean, std::vector<float>& hi, std::vector<float>& lo);

struct ElementwiseAdjustment {
    // f32 tensors of x's rank whose dims are 1 or equal x's (NumPy broadcasting, already
    // right-aligned and padded with leading 1s by the caller).
    Tensor scale;
    Tensor bias;
    std::vector<float> outer_scale;  // per statistic index (γ, or 1)
    std::vector<float> outer_shift;  // per statistic index (β, or 0)
};

// `x` and `y` have the same shape (`x_shape`, which the geometry was made from) and the same dtype:
// f32, bf16 or f16. `adjustment` may be null.
void normalize(const Engine& engine, const Tensor& x, const ReductionGeometry& geometry,
               const NormalizeCoefficients& coefficients, const ElementwiseAdjustment* adjustment,
               Tensor& y);

// Throws keel::Error (shape_mismatch, naming `where` and `name`) unless `operand` broadcasts
// element-wise against x as ElementwiseAdjustment requires: x's rank, each dimension 1 or x's.
void check_adjustment_broadcast(std::string_view where, std::string_view name,
                                const Tensor& operand, const Shape& x_shape);

// The name of the kernel variant normalize uses for this geometry, e.g.
// "keel:normalize_channels_first_adjusted:avx2", for reports. One variant serves every dtype.
std::string normalize_kernel_name(const ReductionGeometry& geometry, bool with_adjustment);

}  // namespace keel::batch_normalization
