#include "layers/normalization/batch_normalization/reference.hpp"

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <keel/engine/dtype.hpp>
#include <keel/engine/error.hpp>

namespace keel::batch_normalization {

namespace {

constexpr std::string_view kWhere = "BatchNormalization reference";

// The statistic index of a flat element index: row-major over the geometry's kept dims.
std::int64_t statistic_index(const ReductionGeometry& geometry, std::int64_t flat) {
    std::int64_t statistic = 0;
    std::int64_t stride = 1;
    for (std::size_t i = geometry.dims.size(); i-- > 0;) {
        const std::int64_t digit = flat % geometry.dims[i];
        flat /= geometry.dims[i];
        if (geometry.kept[i]) {
            statistic += digit * stride;
            stride *= geometry.dims[i];
        }
    }
    return statistic;
}

void store_rounded(Tensor& y, std::int64_t index, double value) {
    switch (y.dtype()) {
        case DType::f32:
            y.data_as<float>()[index] = static_cast<float>(value);
            return;
        case DType::bf16:
            y.data_as<std::uint16_t>()[index] = double_to_bf16_bits(value);
            return;
        case DType::f16:
            y.data_as<std::uint16_t>()[index] = double_to_f16_bits(value);
            return;
        case DType::f64:
            y.data_as<double>()[index] = value;
            return;
    }
}

}  // namespace

std::int64_t broadcast_index(const Shape& shape, const Shape& operand, std::int64_t flat) {
    std::int64_t index = 0;
    std::int64_t stride = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        const std::int64_t digit = flat % shape[i];
        flat /= shape[i];
        if (operand[i] != 1) index += digit * stride;
        stride *= operand[i];
    }
    return index;
}

Moments reference_moments(const Tensor& x, const ReductionGeometry& geometry) {
    check_kernel_input(kWhere, x, geometry);
    if (geometry.reduction_count <= 0) {
        throw invalid_argument(kWhere, "reduction_count", std::to_string(geometry.reduction_count),
                               "at least one element per statistic");
    }
    const std::size_t statistics = static_cast<std::size_t>(geometry.statistic_count);
    Moments moments;
    if (geometry.element_count == 0) return moments;
    moments.mean.assign(statistics, 0.0);
    moments.variance.assign(statistics, 0.0);
    const double n = static_cast<double>(geometry.reduction_count);

    for (std::int64_t e = 0; e < x.element_count(); ++e) {
        moments.mean[static_cast<std::size_t>(statistic_index(geometry, e))] += x.get(e);
    }
    for (double& mean : moments.mean) mean /= n;
    for (std::int64_t e = 0; e < x.element_count(); ++e) {
        const std::size_t s = static_cast<std::size_t>(statistic_index(geometry, e));
        const double deviation = static_cast<double>(x.get(e)) - moments.mean[s];
        moments.variance[s] += deviation * deviation;
    }
    for (double& variance : moments.variance) variance /= n;
    return moments;
}

void reference_normalize(const Tensor& x, const ReductionGeometry& geometry,
                         const NormalizeCoefficients& coefficients,
                         const ElementwiseAdjustment* adjustment, Tensor& y) {
    check_kernel_input(kWhere, x, geometry);
    if (y.shape() != x.shape()) {
        throw shape_mismatch(kWhere, "y", shape_to_string(y.shape()),
                             "x's shape " + shape_to_string(x.shape()));
    }
    const std::size_t statistics = static_cast<std::size_t>(geometry.statistic_count);
    if (coefficients.mean_hi.size() != statistics || coefficients.mean_lo.size() != statistics ||
        coefficients.scale.size() != statistics || coefficients.shift.size() != statistics ||
        (adjustment != nullptr && (adjustment->outer_scale.size() != statistics ||
                                   adjustment->outer_shift.size() != statistics))) {
        throw shape_mismatch(kWhere, "coefficients", "vectors of another length",
                             std::to_string(statistics) + " values each (one per statistic)");
    }
    if (adjustment != nullptr) {
        check_adjustment_broadcast(kWhere, "adjustment.scale", adjustment->scale, x.shape());
        check_adjustment_broadcast(kWhere, "adjustment.bias", adjustment->bias, x.shape());
    }

    for (std::int64_t e = 0; e < x.element_count(); ++e) {
        const std::size_t s = static_cast<std::size_t>(statistic_index(geometry, e));
        const double mean = static_cast<double>(coefficients.mean_hi[s]) +
                            static_cast<double>(coefficients.mean_lo[s]);
        double value =
            (static_cast<double>(x.get(e)) - mean) * coefficients.scale[s] + coefficients.shift[s];
        if (adjustment != nullptr) {
            const double adjustment_scale =
                adjustment->scale.get(broadcast_index(x.shape(), adjustment->scale.shape(), e));
            const double adjustment_bias =
                adjustment->bias.get(broadcast_index(x.shape(), adjustment->bias.shape(), e));
            value = (value * adjustment_scale + adjustment_bias) * adjustment->outer_scale[s] +
                    adjustment->outer_shift[s];
        }
        store_rounded(y, e, value);
    }
}

}  // namespace keel::batch_normalization
