#include "layers/normalization/batch_normalization/kernels/geometry.hpp"

#include <cstddef>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

namespace keel::batch_normalization {

namespace {

constexpr std::string_view kWhere = "BatchNormalization geometry";

std::string axes_to_string(const std::vector<int>& axes) {
    std::string text = "[";
    for (std::size_t i = 0; i < axes.size(); ++i) {
        if (i > 0) text += ", ";
        text += std::to_string(axes[i]);
    }
    return text + "]";
}

}  // namespace

ReductionGeometry make_geometry(const Shape& shape, const std::vector<int>& kept_axes) {
    // Validates the shape (negative dims, rank, overflow) with keel's usual message.
    const std::int64_t total = keel::element_count(shape, kWhere);

    std::vector<bool> is_kept(shape.size(), false);
    for (const int axis : kept_axes) {
        if (axis < 0 || axis >= static_cast<int>(shape.size())) {
            throw invalid_argument(kWhere, "kept_axes", axes_to_string(kept_axes),
                                   "axes in [0, " + std::to_string(shape.size()) + ")");
        }
        if (is_kept[static_cast<std::size_t>(axis)]) {
            throw invalid_argument(kWhere, "kept_axes", axes_to_string(kept_axes),
                                   "each axis at most once");
        }
        is_kept[static_cast<std::size_t>(axis)] = true;
    }

    ReductionGeometry geometry;
    geometry.element_count = total;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (is_kept[i]) {
            geometry.statistic_count *= shape[i];
        } else {
            geometry.reduction_count *= shape[i];
        }
    }
    // An empty tensor has nothing to iterate over; the counts above still tell the caller how
    // many statistics it asked for (and that each would reduce over nothing).
    if (total == 0) return geometry;

    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] == 1) continue;
        if (!geometry.dims.empty() && geometry.kept.back() == is_kept[i]) {
            geometry.dims.back() *= shape[i];
        } else {
            geometry.dims.push_back(shape[i]);
            geometry.kept.push_back(is_kept[i]);
        }
    }
    return geometry;
}

std::string ReductionGeometry::to_string() const {
    std::string text = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) {
        if (i > 0) text += ' ';
        text += kept[i] ? "K:" : "R:";
        text += std::to_string(dims[i]);
    }
    return text + "]";
}

bool ReductionGeometry::channels_last() const {
    if (element_count == 0) return false;
    // [] (a single element) is the degenerate [K:1].
    if (dims.empty()) return true;
    if (dims.size() == 1) return kept[0];
    return dims.size() == 2 && !kept[0] && kept[1];
}

bool ReductionGeometry::channels_first() const {
    if (element_count == 0) return false;
    // [] and [K] are degenerate forms of both layouts; [R] is [R, K:1, R] with one statistic.
    if (dims.size() <= 1) return true;
    if (dims.size() == 2) return kept[0] && !kept[1];
    return dims.size() == 3 && !kept[0] && kept[1] && !kept[2];
}

void check_kernel_input(std::string_view where, const Tensor& x,
                        const ReductionGeometry& geometry) {
    if (x.dtype() != DType::f32 && x.dtype() != DType::bf16 && x.dtype() != DType::f16) {
        throw unsupported(where, "x of dtype " + std::string(dtype_name(x.dtype())),
                          "the kernels read float32, bfloat16 or float16");
    }
    if (geometry.dims.size() != geometry.kept.size() ||
        x.element_count() != geometry.element_count) {
        throw shape_mismatch(where, "x", shape_to_string(x.shape()),
                             "a tensor of the geometry " + geometry.to_string() + " (" +
                                 std::to_string(geometry.element_count) + " elements)");
    }
}

}  // namespace keel::batch_normalization
