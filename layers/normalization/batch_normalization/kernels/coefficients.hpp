#pragma once

// Internal: the per-statistic arithmetic of a training call, between the moments and the
// element-wise pass. With several normalized axes there are many statistics (7168 with axis
// [1, 3] on [8, 28, 28, 256]), so this work is vectorized with Highway's runtime dispatch like
// the passes over the data. Every function gives, on every target, the bits of the scalar
// expression written in its comment (a NaN's sign and payload aside): each operation is a
// correctly rounded IEEE one, evaluated in the order written, and this file is compiled without
// floating-point contraction (a product fused into the following sum would round once instead of
// twice).

#include <cstdint>
#include <span>

namespace keel::batch_normalization {

// The moments the moving-statistic updates and batch renormalization see: for each parameter p,
// the mean over the G virtual batches of the per-group moments (statistic g·P + p, group-major),
// rounded to f32 as TF's variables hold them:
//     update_mean[p] = f32((((+0 + mean[p]) + mean[P + p]) + ...) / G)
// and the same for the variances, without the division when G = 1 (x / 1 == x exactly).
// `mean` and `variance` hold groups · update_mean.size() values.
void group_mean_moments(std::span<const double> mean, std::span<const double> variance,
                        std::int64_t groups, std::span<float> update_mean,
                        std::span<float> update_variance);

// Batch renormalization's clipping bounds (spec §6c) in f32; a bound the layer does not set is
// infinite, which clips nothing (max(r, −∞) is r, NaN included, as the comparisons below read).
struct RenormClipping {
    float rmin = 0.0F;
    float rmax = 0.0F;
    float dmax = 0.0F;
};

// Batch renormalization's corrections from the pre-update renorm statistics, in f32 as TF, per
// parameter p:
//     batch_stddev[p] = √(update_variance[p] + ε)
//     floored = renorm_stddev[p] < stddev_floor ? stddev_floor : renorm_stddev[p]
//     r = batch_stddev[p] / floored, then r < rmin ? rmin : r, then rmax < r ? rmax : r
//     d = (update_mean[p] − renorm_mean[p]) / floored, then d < −dmax ? −dmax : d,
//         then dmax < d ? dmax : d
// (std::max and std::min's selections). Every span has update_mean.size() values.
struct RenormOperands {
    std::span<const float> update_mean;
    std::span<const float> update_variance;
    std::span<const float> renorm_mean;
    std::span<const float> renorm_stddev;
    float epsilon = 0.0F;
    float stddev_floor = 0.0F;
    RenormClipping clipping;
};
void renorm_corrections(const RenormOperands& operands, std::span<float> batch_stddev,
                        std::span<float> r, std::span<float> d);

// How the per-statistic coefficients fold the layer's parameters (normalize.hpp's formula).
enum class CoefficientForm {
    // y = (x − μ)·scale + shift with scale = inv·r·γ, shift = d·γ + β.
    plain,
    // An element-wise adjustment follows: scale = inv·r, shift = d (γ and β are applied after it).
    adjusted,
    // A per-parameter adjustment (s, b) folds in: scale = inv·r·s·γ, shift = (d·s + b)·γ + β.
    folded_adjustment,
};

// The training call's per-statistic coefficients. For statistic k = g·P + p (P parameters, k in
// [0, variance.size())), in f64 from the f32 operands, rounded to f32 once at the end:
//     inv = 1 / √(f64(f32(variance[k])) + ε)    (the batch variance rounded to f32 as TF's is)
//     plain:              scale[k] = f32(((inv·r)·γ)),       shift[k] = f32((d·γ) + β)
//     adjusted:           scale[k] = f32(inv·r),             shift[k] = d
//     folded_adjustment:  scale[k] = f32((((inv·r)·s)·γ)),   shift[k] = f32((((d·s) + b)·γ) + β)
// with r = r[p], d = d[p], γ = gamma[p], β = beta[p], s = adjustment_scale[p],
// b = adjustment_bias[p]. Without batch renormalization (r and d empty) r is 1 and d is +0 in
// the same expressions. gamma and beta are read by the plain and folded forms, the adjustment by
// the folded one; every parameter span has P values.
struct CoefficientOperands {
    CoefficientForm form = CoefficientForm::plain;
    std::int64_t parameters = 0;       // P, which divides variance.size()
    std::span<const double> variance;  // per statistic
    float epsilon = 0.0F;
    std::span<const float> r;  // per parameter, or empty
    std::span<const float> d;
    std::span<const float> gamma;
    std::span<const float> beta;
    std::span<const float> adjustment_scale;
    std::span<const float> adjustment_bias;
};
// `scale` and `shift` have variance.size() values.
void training_coefficients(const CoefficientOperands& operands, std::span<float> scale,
                           std::span<float> shift);

}  // namespace keel::batch_normalization
