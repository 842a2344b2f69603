// The per-statistic arithmetic of a training call (coefficients.hpp), one vector of statistics at a
// time, then one lane at a time for the rest of a run.
//
// Bit-exactness: every Highway operation used here is a correctly rounded IEEE operation, the
// same as the scalar one, provided nothing fuses a product into the following sum. GCC contracts
// a vector multiply and add into an FMA on targets that have one (its default is
// -ffp-contract=fast, also in ISO C++ modes), so layers/CMakeLists.txt compiles this file with
// -ffp-contract=off; the tests compare every target with the scalar expressions bit for bit (NaNs
// match any NaN).

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "layers/normalization/batch_normalization/kernels/coefficients.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include <keel/engine/error.hpp>

#include "layers/normalization/batch_normalization/kernels/coefficients.hpp"

HWY_BEFORE_NAMESPACE();
namespace keel::batch_normalization {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

// f32(value) per lane, rounded to nearest as a C++ conversion rounds: values beyond f32's range
// become infinite. Highway's emulated targets clamp them to f32's largest finite value instead,
// so those convert lane by lane.
template <class FloatTag, class DoubleVec>
HWY_INLINE hn::Vec<FloatTag> to_f32(FloatTag df, DoubleVec value) {
#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
    const hn::Rebind<double, FloatTag> dd;
    HWY_ALIGN double wide[hn::MaxLanes(dd)];
    HWY_ALIGN float narrow[hn::MaxLanes(df)];
    hn::Store(value, dd, wide);
    for (std::size_t i = 0; i < hn::Lanes(df); ++i) narrow[i] = static_cast<float>(wide[i]);
    return hn::Load(df, narrow);
#else
    return hn::DemoteTo(df, value);
#endif
}

// Lanes(dd) f32 values from `source`, widened to f64 (exact).
template <class DoubleTag>
HWY_INLINE hn::Vec<DoubleTag> load_widened(DoubleTag dd, const float* source) {
    return hn::PromoteTo(dd, hn::LoadU(hn::Rebind<float, DoubleTag>(), source));
}

// One vector of group_mean_moments' outputs, for parameters [p, p + Lanes(dd)).
template <class DoubleTag>
HWY_INLINE void group_mean_vector(DoubleTag dd, const double* mean, const double* variance,
                                  std::int64_t groups, std::int64_t parameters, std::int64_t p,
                                  float* update_mean, float* update_variance) {
    const hn::Rebind<float, DoubleTag> df;
    auto mean_sum = hn::Zero(dd);
    auto variance_sum = hn::Zero(dd);
    for (std::int64_t g = 0; g < groups; ++g) {
        mean_sum = hn::Add(mean_sum, hn::LoadU(dd, mean + g * parameters + p));
        variance_sum = hn::Add(variance_sum, hn::LoadU(dd, variance + g * parameters + p));
    }
    if (groups != 1) {
        const auto count = hn::Set(dd, static_cast<double>(groups));
        mean_sum = hn::Div(mean_sum, count);
        variance_sum = hn::Div(variance_sum, count);
    }
    hn::StoreU(to_f32(df, mean_sum), df, update_mean + p);
    hn::StoreU(to_f32(df, variance_sum), df, update_variance + p);
}

// a < b ? b : a, which is std::max(a, b) (NaN a stays, NaN b is not chosen).
template <class Vec>
HWY_INLINE Vec max_as_std(Vec a, Vec b) {
    return hn::IfThenElse(hn::Lt(a, b), b, a);
}

// b < a ? b : a, which is std::min(a, b).
template <class Vec>
HWY_INLINE Vec min_as_std(Vec a, Vec b) {
    return hn::IfThenElse(hn::Lt(b, a), b, a);
}

// One vector of renorm_corrections' outputs, for parameters [p, p + Lanes(df)).
template <class FloatTag>
HWY_INLINE void renorm_vector(FloatTag df, const RenormOperands& op, std::int64_t p,
                              float* batch_stddev, float* r, float* d) {
    const auto stddev =
        hn::Sqrt(hn::Add(hn::LoadU(df, op.update_variance.data() + p), hn::Set(df, op.epsilon)));
    const auto floored =
        max_as_std(hn::LoadU(df, op.renorm_stddev.data() + p), hn::Set(df, op.stddev_floor));
    auto r_value = hn::Div(stddev, floored);
    auto d_value = hn::Div(
        hn::Sub(hn::LoadU(df, op.update_mean.data() + p), hn::LoadU(df, op.renorm_mean.data() + p)),
        floored);
    r_value = max_as_std(r_value, hn::Set(df, op.clipping.rmin));
    r_value = min_as_std(r_value, hn::Set(df, op.clipping.rmax));
    d_value = max_as_std(d_value, hn::Set(df, -op.clipping.dmax));
    d_value = min_as_std(d_value, hn::Set(df, op.clipping.dmax));
    hn::StoreU(stddev, df, batch_stddev + p);
    hn::StoreU(r_value, df, r + p);
    hn::StoreU(d_value, df, d + p);
}

// One vector of training_coefficients' outputs: statistics [k, k + Lanes(dd)), whose parameters
// are [p, p + Lanes(dd)). kRenorm is false when r and d are empty (1 and +0).
template <CoefficientForm kForm, bool kRenorm, class DoubleTag>
HWY_INLINE void coefficient_vector(DoubleTag dd, const CoefficientOperands& op, std::int64_t k,
                                   std::int64_t p, float* scale, float* shift) {
    const hn::Rebind<float, DoubleTag> df;
    const auto variance = hn::PromoteTo(dd, to_f32(df, hn::LoadU(dd, op.variance.data() + k)));
    const auto inverse =
        hn::Div(hn::Set(dd, 1.0),
                hn::Sqrt(hn::Add(variance, hn::Set(dd, static_cast<double>(op.epsilon)))));
    const auto r = kRenorm ? load_widened(dd, op.r.data() + p) : hn::Set(dd, 1.0);
    if constexpr (kForm == CoefficientForm::adjusted) {
        hn::StoreU(to_f32(df, hn::Mul(inverse, r)), df, scale + k);
        hn::StoreU(kRenorm ? hn::LoadU(df, op.d.data() + p) : hn::Zero(df), df, shift + k);
    } else {
        const auto d = kRenorm ? load_widened(dd, op.d.data() + p) : hn::Zero(dd);
        const auto gamma = load_widened(dd, op.gamma.data() + p);
        const auto beta = load_widened(dd, op.beta.data() + p);
        if constexpr (kForm == CoefficientForm::plain) {
            hn::StoreU(to_f32(df, hn::Mul(hn::Mul(inverse, r), gamma)), df, scale + k);
            hn::StoreU(to_f32(df, hn::Add(hn::Mul(d, gamma), beta)), df, shift + k);
        } else {
            const auto adjustment_scale = load_widened(dd, op.adjustment_scale.data() + p);
            const auto adjustment_bias = load_widened(dd, op.adjustment_bias.data() + p);
            hn::StoreU(to_f32(df, hn::Mul(hn::Mul(hn::Mul(inverse, r), adjustment_scale), gamma)),
                       df, scale + k);
            hn::StoreU(
                to_f32(df, hn::Add(hn::Mul(hn::Add(hn::Mul(d, adjustment_scale), adjustment_bias),
                                           gamma),
                                   beta)),
                df, shift + k);
        }
    }
}

template <CoefficientForm kForm, bool kRenorm>
void coefficients_for(const CoefficientOperands& op, float* scale, float* shift) {
    const hn::ScalableTag<double> dd;
    const hn::CappedTag<double, 1> d1;
    const auto lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    const auto statistics = static_cast<std::int64_t>(op.variance.size());
    // One group's run of parameters at a time: p restarts at 0 with each group.
    for (std::int64_t group_start = 0; group_start < statistics; group_start += op.parameters) {
        std::int64_t p = 0;
        for (; p + lanes <= op.parameters; p += lanes) {
            coefficient_vector<kForm, kRenorm>(dd, op, group_start + p, p, scale, shift);
        }
        for (; p < op.parameters; ++p) {
            coefficient_vector<kForm, kRenorm>(d1, op, group_start + p, p, scale, shift);
        }
    }
}

template <CoefficientForm kForm>
void coefficients_for_form(const CoefficientOperands& op, float* scale, float* shift) {
    if (op.r.empty()) {
        coefficients_for<kForm, false>(op, scale, shift);
    } else {
        coefficients_for<kForm, true>(op, scale, shift);
    }
}

}  // namespace

void GroupMeanMoments(const double* mean, const double* variance, std::int64_t groups,
                      std::int64_t parameters, float* update_mean, float* update_variance) {
    const hn::ScalableTag<double> dd;
    const hn::CappedTag<double, 1> d1;
    const auto lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    std::int64_t p = 0;
    for (; p + lanes <= parameters; p += lanes) {
        group_mean_vector(dd, mean, variance, groups, parameters, p, update_mean, update_variance);
    }
    for (; p < parameters; ++p) {
        group_mean_vector(d1, mean, variance, groups, parameters, p, update_mean, update_variance);
    }
}

void RenormCorrections(const RenormOperands& op, float* batch_stddev, float* r, float* d) {
    const hn::ScalableTag<float> df;
    const hn::CappedTag<float, 1> d1;
    const auto lanes = static_cast<std::int64_t>(hn::Lanes(df));
    const auto parameters = static_cast<std::int64_t>(op.update_mean.size());
    std::int64_t p = 0;
    for (; p + lanes <= parameters; p += lanes) renorm_vector(df, op, p, batch_stddev, r, d);
    for (; p < parameters; ++p) renorm_vector(d1, op, p, batch_stddev, r, d);
}

void TrainingCoefficients(const CoefficientOperands& op, float* scale, float* shift) {
    switch (op.form) {
        case CoefficientForm::plain:
            return coefficients_for_form<CoefficientForm::plain>(op, scale, shift);
        case CoefficientForm::adjusted:
            return coefficients_for_form<CoefficientForm::adjusted>(op, scale, shift);
        case CoefficientForm::folded_adjustment:
            return coefficients_for_form<CoefficientForm::folded_adjustment>(op, scale, shift);
    }
}

}  // namespace HWY_NAMESPACE
}  // namespace keel::batch_normalization
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace keel::batch_normalization {

HWY_EXPORT(GroupMeanMoments);
HWY_EXPORT(RenormCorrections);
HWY_EXPORT(TrainingCoefficients);

namespace {

constexpr std::string_view kWhere = "BatchNormalization coefficients";

void expect_size(std::string_view argument, std::size_t size, std::size_t expected,
                 std::string_view rule) {
    if (size != expected) {
        throw shape_mismatch(kWhere, argument, std::to_string(size) + " values",
                             std::to_string(expected) + " (" + std::string(rule) + ")");
    }
}

}  // namespace

void group_mean_moments(std::span<const double> mean, std::span<const double> variance,
                        std::int64_t groups, std::span<float> update_mean,
                        std::span<float> update_variance) {
    if (groups < 1) {
        throw invalid_argument(kWhere, "groups", std::to_string(groups), "at least 1");
    }
    const std::size_t parameters = update_mean.size();
    const std::size_t statistics = parameters * static_cast<std::size_t>(groups);
    expect_size("mean", mean.size(), statistics, "one per group and parameter");
    expect_size("variance", variance.size(), statistics, "one per group and parameter");
    expect_size("update_variance", update_variance.size(), parameters, "one per parameter");
    HWY_DYNAMIC_DISPATCH(GroupMeanMoments)
    (mean.data(), variance.data(), groups, static_cast<std::int64_t>(parameters),
     update_mean.data(), update_variance.data());
}

void renorm_corrections(const RenormOperands& operands, std::span<float> batch_stddev,
                        std::span<float> r, std::span<float> d) {
    const std::size_t parameters = operands.update_mean.size();
    expect_size("update_variance", operands.update_variance.size(), parameters,
                "one per parameter");
    expect_size("renorm_mean", operands.renorm_mean.size(), parameters, "one per parameter");
    expect_size("renorm_stddev", operands.renorm_stddev.size(), parameters, "one per parameter");
    expect_size("batch_stddev", batch_stddev.size(), parameters, "one per parameter");
    expect_size("r", r.size(), parameters, "one per parameter");
    expect_size("d", d.size(), parameters, "one per parameter");
    HWY_DYNAMIC_DISPATCH(RenormCorrections)(operands, batch_stddev.data(), r.data(), d.data());
}

void training_coefficients(const CoefficientOperands& operands, std::span<float> scale,
                           std::span<float> shift) {
    const std::size_t statistics = operands.variance.size();
    if (operands.parameters < 1 ||
        statistics % static_cast<std::size_t>(operands.parameters) != 0) {
        throw invalid_argument(
            kWhere, "parameters", std::to_string(operands.parameters),
            "a positive divisor of the statistic count " + std::to_string(statistics));
    }
    const auto parameters = static_cast<std::size_t>(operands.parameters);
    const bool renorm = !operands.r.empty();
    if (renorm) expect_size("r", operands.r.size(), parameters, "one per parameter, or none");
    expect_size("d", operands.d.size(), renorm ? parameters : 0, "as many as r");
    if (operands.form != CoefficientForm::adjusted) {
        expect_size("gamma", operands.gamma.size(), parameters, "one per parameter");
        expect_size("beta", operands.beta.size(), parameters, "one per parameter");
    }
    if (operands.form == CoefficientForm::folded_adjustment) {
        expect_size("adjustment_scale", operands.adjustment_scale.size(), parameters,
                    "one per parameter");
        expect_size("adjustment_bias", operands.adjustment_bias.size(), parameters,
                    "one per parameter");
    }
    expect_size("scale", scale.size(), statistics, "one per statistic");
    expect_size("shift", shift.size(), statistics, "one per statistic");
    HWY_DYNAMIC_DISPATCH(TrainingCoefficients)(operands, scale.data(), shift.data());
}

}  // namespace keel::batch_normalization

#endif  // HWY_ONCE
