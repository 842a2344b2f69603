// The element-wise pass: reads x once and writes y once.
//
// The planner describes the tensor as rows of contiguous elements plus an odometer over the outer
// dimensions. Within a row every operand (the per-statistic coefficients and, with an adjustment,
// its two broadcast tensors) is either one value or an array read along the row, so the inner loop
// is always a plain vector loop: channels-last rows read the coefficient arrays in place, channels-
// first rows use scalars, narrow rows are widened by replicating the coefficients into a table
// whose period is a multiple of every target's vector (3 channels: a 48-element table), short
// reduced runs get their coefficients expanded over two dimensions, and per-sample adjustments
// ([N, 1, 1, C], [N, C, 1, 1]) move the row's base pointers, never the inner loop.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "layers/normalization/batch_normalization/kernels/normalize.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

#include "engine/threading.hpp"
#include "layers/normalization/batch_normalization/kernels/blocking.hpp"
#include "layers/normalization/batch_normalization/kernels/common.hpp"
#include "layers/normalization/batch_normalization/kernels/normalize.hpp"
#include "layers/normalization/batch_normalization/kernels/simd_io-inl.h"

HWY_BEFORE_NAMESPACE();
namespace keel::batch_normalization {
namespace HWY_NAMESPACE {

namespace {

// The operands of one row: arrays indexed by position modulo the period, or scalars.
struct RowOperands {
    const float* mean_hi = nullptr;
    const float* mean_lo = nullptr;
    const float* scale = nullptr;
    const float* shift = nullptr;
    const float* outer_scale = nullptr;
    const float* outer_shift = nullptr;
    const float* adjustment_scale = nullptr;
    const float* adjustment_bias = nullptr;
    float mean_hi_value = 0.0F;
    float mean_lo_value = 0.0F;
    float scale_value = 0.0F;
    float shift_value = 0.0F;
    float outer_scale_value = 0.0F;
    float outer_shift_value = 0.0F;
    float adjustment_scale_value = 0.0F;
    float adjustment_bias_value = 0.0F;
};

enum class AdjustmentMode { none, scalars, arrays };

// One vector (kFull) or the first `count` lanes of positions [position, position + count) of a
// row, whose array operands are read at index `j`.
template <class In, class Out, bool kStatisticArrays, AdjustmentMode kAdjustment, bool kRelu,
          bool kFull>
HWY_INLINE void normalize_vector(const typename In::Storage* x, typename Out::Storage* y,
                                 std::int64_t position, std::int64_t j, std::size_t count,
                                 const RowOperands& op) {
    const FloatTag df;
    auto operand = [&](const float* array, float value) {
        if (array == nullptr) return hn::Set(df, value);
        if constexpr (kFull) {
            return hn::LoadU(df, array + j);
        } else {
            return load_partial_as_f32<F32Format>(df, array + j, count);
        }
    };
    FloatVec v;
    if constexpr (kFull) {
        v = load_as_f32<In>(df, x + position);
    } else {
        v = load_partial_as_f32<In>(df, x + position, count);
    }
    FloatVec mean_hi, mean_lo, scale, shift;
    if constexpr (kStatisticArrays) {
        mean_hi = operand(op.mean_hi, 0.0F);
        mean_lo = operand(op.mean_lo, 0.0F);
        scale = operand(op.scale, 0.0F);
        shift = operand(op.shift, 0.0F);
    } else {
        mean_hi = hn::Set(df, op.mean_hi_value);
        mean_lo = hn::Set(df, op.mean_lo_value);
        scale = hn::Set(df, op.scale_value);
        shift = hn::Set(df, op.shift_value);
    }
    // The mean is subtracted before scaling, hi part first: x − hi is exact when x is near the
    // mean, so data with a large mean and a tiny spread keeps its precision.
    FloatVec u = hn::MulAdd(hn::Sub(hn::Sub(v, mean_hi), mean_lo), scale, shift);
    if constexpr (kAdjustment != AdjustmentMode::none) {
        FloatVec adjustment_scale, adjustment_bias, outer_scale, outer_shift;
        if constexpr (kAdjustment == AdjustmentMode::arrays) {
            // Scale and bias may broadcast differently: either one can still be a scalar here.
            adjustment_scale = operand(op.adjustment_scale, op.adjustment_scale_value);
            adjustment_bias = operand(op.adjustment_bias, op.adjustment_bias_value);
        } else {
            adjustment_scale = hn::Set(df, op.adjustment_scale_value);
            adjustment_bias = hn::Set(df, op.adjustment_bias_value);
        }
        if constexpr (kStatisticArrays) {
            outer_scale = operand(op.outer_scale, 0.0F);
            outer_shift = operand(op.outer_shift, 0.0F);
        } else {
            outer_scale = hn::Set(df, op.outer_scale_value);
            outer_shift = hn::Set(df, op.outer_shift_value);
        }
        u = hn::MulAdd(hn::MulAdd(u, adjustment_scale, adjustment_bias), outer_scale, outer_shift);
    }
    if constexpr (kRelu) {
        // Zero first: x86's max returns its second operand when one is NaN, so a NaN input stays
        // NaN through the fused ReLU as it does through the ReLU layer.
        u = hn::Max(hn::Zero(df), u);
    }
    if constexpr (kFull) {
        store_from_f32<Out>(df, u, y + position);
    } else {
        store_partial_from_f32<Out>(df, u, y + position, count);
    }
}

// Positions [begin, end) of one row. Nothing outside the row or the operand arrays is touched:
// a segment's last partial vector is either a whole vector ending at the segment's end, which
// recomputes and rewrites a few outputs with the same values (only when y does not overlap x,
// whose inputs the first write would have replaced), or goes through staging buffers.
template <class In, class Out, bool kStatisticArrays, AdjustmentMode kAdjustment, bool kRelu>
void normalize_span(const typename In::Storage* x, typename Out::Storage* y, std::int64_t begin,
                    std::int64_t end, std::int64_t period, bool may_rewrite,
                    const RowOperands& op) {
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    auto segment = [&](std::int64_t position, std::int64_t j, std::int64_t length) {
        std::int64_t k = 0;
        for (; k + lanes <= length; k += lanes) {
            normalize_vector<In, Out, kStatisticArrays, kAdjustment, kRelu, true>(
                x, y, position + k, j + k, static_cast<std::size_t>(lanes), op);
        }
        if (k < length && may_rewrite && length >= lanes) {
            normalize_vector<In, Out, kStatisticArrays, kAdjustment, kRelu, true>(
                x, y, position + length - lanes, j + length - lanes,
                static_cast<std::size_t>(lanes), op);
        } else if (k < length) {
            normalize_vector<In, Out, kStatisticArrays, kAdjustment, kRelu, false>(
                x, y, position + k, j + k, static_cast<std::size_t>(length - k), op);
        }
    };
    if (period == 0) {
        segment(begin, 0, end - begin);
        return;
    }
    // Only the first segment can start inside a period.
    std::int64_t j = begin % period;
    for (std::int64_t position = begin; position < end; j = 0) {
        const std::int64_t length = std::min(period - j, end - position);
        segment(position, j, length);
        position += length;
    }
}

// Per-thread storage for gathered coefficient tables: up to eight operands of one period.
std::vector<float>& table_storage() {
    thread_local std::vector<float> storage;
    return storage;
}

// Resolves operands for each row from its bases, gathering tables only when a base changes.
class OperandResolver {
  public:
    explicit OperandResolver(const NormalizePlan& plan) : plan_(plan) {
        const bool gathers = plan.statistic.kind == OperandLayout::Kind::table ||
                             plan.adjustment_scale.kind == OperandLayout::Kind::table ||
                             plan.adjustment_bias.kind == OperandLayout::Kind::table;
        if (gathers) {
            // Tables exist only for periods the planner bounded (kMaxPackedWidth,
            // kMaxExpandedPeriod): at most eight operands of one period.
            std::vector<float>& storage = table_storage();
            const std::size_t needed = 8 * static_cast<std::size_t>(plan.period);
            if (storage.size() < needed) storage.resize(needed);
            tables_ = storage.data();
        }
    }

    void resolve(std::int64_t statistic_base, std::int64_t scale_base, std::int64_t bias_base,
                 RowOperands& op) {
        const NormalizePlan& plan = plan_;
        const std::int64_t period = plan.period;
        const std::size_t period_size = static_cast<std::size_t>(period);
        const float* statistic_sources[6] = {plan.mean_hi, plan.mean_lo,     plan.scale,
                                             plan.shift,   plan.outer_scale, plan.outer_shift};
        const float** statistic_arrays[6] = {&op.mean_hi, &op.mean_lo,     &op.scale,
                                             &op.shift,   &op.outer_scale, &op.outer_shift};
        float* statistic_values[6] = {&op.mean_hi_value,     &op.mean_lo_value,
                                      &op.scale_value,       &op.shift_value,
                                      &op.outer_scale_value, &op.outer_shift_value};
        const int statistic_operands = plan.with_adjustment ? 6 : 4;
        switch (plan.statistic.kind) {
            case OperandLayout::Kind::scalar:
                for (int i = 0; i < statistic_operands; ++i) {
                    *statistic_values[i] = statistic_sources[i][statistic_base];
                    *statistic_arrays[i] = nullptr;
                }
                break;
            case OperandLayout::Kind::direct:
                for (int i = 0; i < statistic_operands; ++i) {
                    *statistic_arrays[i] = statistic_sources[i] + statistic_base;
                }
                break;
            case OperandLayout::Kind::table:
                if (statistic_base != built_statistic_base_) {
                    for (std::int64_t j = 0; j < period; ++j) {
                        const std::int64_t index =
                            statistic_base + index_in_period(plan.statistic, j);
                        for (int i = 0; i < statistic_operands; ++i) {
                            tables_[static_cast<std::size_t>(i) * period_size +
                                    static_cast<std::size_t>(j)] = statistic_sources[i][index];
                        }
                    }
                    built_statistic_base_ = statistic_base;
                }
                for (int i = 0; i < statistic_operands; ++i) {
                    *statistic_arrays[i] = tables_ + static_cast<std::size_t>(i) * period_size;
                }
                break;
        }
        if (!plan.with_adjustment) return;
        resolve_adjustment(plan.adjustment_scale, plan.adjustment_scale_values, scale_base, 6,
                           built_scale_base_, op.adjustment_scale, op.adjustment_scale_value);
        resolve_adjustment(plan.adjustment_bias, plan.adjustment_bias_values, bias_base, 7,
                           built_bias_base_, op.adjustment_bias, op.adjustment_bias_value);
    }

  private:
    std::int64_t index_in_period(const OperandLayout& layout, std::int64_t j) const {
        return j / plan_.inner_length * layout.middle_stride +
               j % plan_.inner_length * layout.inner_stride;
    }

    void resolve_adjustment(const OperandLayout& layout, const float* source, std::int64_t base,
                            std::size_t slot, std::int64_t& built_base, const float*& array,
                            float& value) {
        const std::int64_t period = plan_.period;
        value = source[base];
        array = nullptr;
        if (layout.kind == OperandLayout::Kind::direct) {
            array = source + base;
            return;
        }
        if (layout.kind == OperandLayout::Kind::scalar) return;
        float* table = tables_ + slot * static_cast<std::size_t>(period);
        if (base != built_base) {
            for (std::int64_t j = 0; j < period; ++j) {
                table[j] = source[base + index_in_period(layout, j)];
            }
            built_base = base;
        }
        array = table;
    }

    const NormalizePlan& plan_;
    float* tables_ = nullptr;
    std::int64_t built_statistic_base_ = -1;
    std::int64_t built_scale_base_ = -1;
    std::int64_t built_bias_base_ = -1;
};

template <class In, class Out, bool kStatisticArrays, AdjustmentMode kAdjustment, bool kRelu>
void normalize_units(const NormalizePlan& plan, std::int64_t unit_begin, std::int64_t unit_end) {
    const auto* x = static_cast<const typename In::Storage*>(plan.x);
    auto* y = static_cast<typename Out::Storage*>(plan.y);
    OperandResolver resolver(plan);

    // Odometer over the outer dimensions, started at the first unit's row.
    std::int64_t row = unit_begin / plan.chunks_per_row;
    std::int64_t index[kMaxRank] = {};
    std::int64_t statistic_base = 0, scale_base = 0, bias_base = 0;
    std::int64_t remaining = row;
    for (int k = plan.outer_rank; k-- > 0;) {
        index[k] = remaining % plan.outer_size[k];
        remaining /= plan.outer_size[k];
        statistic_base += index[k] * plan.statistic.outer_stride[k];
        scale_base += index[k] * plan.adjustment_scale.outer_stride[k];
        bias_base += index[k] * plan.adjustment_bias.outer_stride[k];
    }

    RowOperands op;
    resolver.resolve(statistic_base, scale_base, bias_base, op);
    for (std::int64_t unit = unit_begin; unit < unit_end; ++unit) {
        const std::int64_t unit_row = unit / plan.chunks_per_row;
        if (unit_row != row) {
            row = unit_row;
            for (int k = plan.outer_rank; k-- > 0;) {
                statistic_base += plan.statistic.outer_stride[k];
                scale_base += plan.adjustment_scale.outer_stride[k];
                bias_base += plan.adjustment_bias.outer_stride[k];
                if (++index[k] < plan.outer_size[k]) break;
                index[k] = 0;
                statistic_base -= plan.outer_size[k] * plan.statistic.outer_stride[k];
                scale_base -= plan.outer_size[k] * plan.adjustment_scale.outer_stride[k];
                bias_base -= plan.outer_size[k] * plan.adjustment_bias.outer_stride[k];
            }
            resolver.resolve(statistic_base, scale_base, bias_base, op);
        }
        const std::int64_t chunk = unit % plan.chunks_per_row;
        const std::int64_t begin = chunk * plan.chunk_length;
        const std::int64_t end = std::min(plan.row_length, begin + plan.chunk_length);
        const std::int64_t row_start = row * plan.row_length;
        normalize_span<In, Out, kStatisticArrays, kAdjustment, kRelu>(
            x + row_start, y + row_start, begin, end, plan.period, plan.may_rewrite_outputs, op);
    }
}

template <class In, class Out>
void normalize_units_for_formats(const NormalizePlan& plan, std::int64_t begin, std::int64_t end) {
    const bool statistic_arrays = plan.statistic.kind != OperandLayout::Kind::scalar;
    AdjustmentMode adjustment = AdjustmentMode::none;
    if (plan.with_adjustment) {
        adjustment = plan.adjustment_scale.kind == OperandLayout::Kind::scalar &&
                             plan.adjustment_bias.kind == OperandLayout::Kind::scalar
                         ? AdjustmentMode::scalars
                         : AdjustmentMode::arrays;
    }
    switch (adjustment) {
        case AdjustmentMode::none:
            // The fused ReLU exists for inference, which never has an adjustment.
            if (plan.relu) {
                return statistic_arrays
                           ? normalize_units<In, Out, true, AdjustmentMode::none, true>(plan, begin,
                                                                                        end)
                           : normalize_units<In, Out, false, AdjustmentMode::none, true>(
                                 plan, begin, end);
            }
            return statistic_arrays ? normalize_units<In, Out, true, AdjustmentMode::none, false>(
                                          plan, begin, end)
                                    : normalize_units<In, Out, false, AdjustmentMode::none, false>(
                                          plan, begin, end);
        case AdjustmentMode::scalars:
            return statistic_arrays
                       ? normalize_units<In, Out, true, AdjustmentMode::scalars, false>(plan, begin,
                                                                                        end)
                       : normalize_units<In, Out, false, AdjustmentMode::scalars, false>(
                             plan, begin, end);
        case AdjustmentMode::arrays:
            return statistic_arrays
                       ? normalize_units<In, Out, true, AdjustmentMode::arrays, false>(plan, begin,
                                                                                       end)
                       : normalize_units<In, Out, false, AdjustmentMode::arrays, false>(plan, begin,
                                                                                        end);
    }
}

}  // namespace

void NormalizeUnits(const NormalizePlan& plan, std::int64_t begin, std::int64_t end) {
    visit_format(plan.x_dtype, [&](auto in) {
        visit_format(plan.y_dtype, [&](auto out) {
            normalize_units_for_formats<decltype(in), decltype(out)>(plan, begin, end);
        });
    });
}

}  // namespace HWY_NAMESPACE
}  // namespace keel::batch_normalization
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace keel::batch_normalization {

// Every call goes through HWY_DYNAMIC_DISPATCH: a function pointer saved before the process's first
// dispatch is Highway's target-choosing stub, which re-detects the CPU on each call through it
// (that made the first compute_moments of a [1, 16384, 15, 15] tensor 50x slower).
HWY_EXPORT(NormalizeUnits);
HWY_EXPORT(KernelTargetName);

namespace {

constexpr std::string_view kWhere = "BatchNormalization normalize";

// One dimension with the index step of each operand: statistics, adjustment scale and bias.
struct StridedDim {
    std::int64_t size = 1;
    std::int64_t statistic = 0;
    std::int64_t scale = 0;
    std::int64_t bias = 0;
};

// Row-major strides of `shape` where a dimension of 1 broadcasts (stride 0).
std::vector<std::int64_t> broadcast_strides(const Shape& shape) {
    std::vector<std::int64_t> strides(shape.size(), 0);
    std::int64_t stride = 1;
    for (std::size_t i = shape.size(); i-- > 0;) {
        if (shape[i] != 1) {
            strides[i] = stride;
            stride *= shape[i];
        }
    }
    return strides;
}

// Drops size-1 dimensions and merges neighbours along which every operand steps contiguously
// (or not at all), leaving the fewest dimensions an odometer needs.
std::vector<StridedDim> merge_dims(const std::vector<StridedDim>& dims) {
    std::vector<StridedDim> merged;
    for (const StridedDim& dim : dims) {
        if (dim.size == 1) continue;
        if (!merged.empty()) {
            StridedDim& outer = merged.back();
            if (outer.statistic == dim.statistic * dim.size &&
                outer.scale == dim.scale * dim.size && outer.bias == dim.bias * dim.size) {
                outer.size *= dim.size;
                outer.statistic = dim.statistic;
                outer.scale = dim.scale;
                outer.bias = dim.bias;
                continue;
            }
        }
        merged.push_back(dim);
    }
    if (merged.empty()) merged.push_back(StridedDim{});
    return merged;
}

// Which of x's own dimensions are kept: the geometry merged them, so split its dims back over
// x's shape (every non-1 dimension is at least 2, so the split is unique).
std::vector<bool> kept_per_dimension(const Shape& shape, const ReductionGeometry& geometry) {
    std::vector<bool> kept(shape.size(), false);
    std::size_t merged = 0;
    std::int64_t product = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] == 1) continue;
        if (merged >= geometry.dims.size()) break;
        kept[i] = geometry.kept[merged];
        product *= shape[i];
        if (product == geometry.dims[merged]) {
            ++merged;
            product = 1;
        } else if (product > geometry.dims[merged]) {
            break;
        }
    }
    if (merged != geometry.dims.size() || product != 1) {
        throw shape_mismatch(kWhere, "x", shape_to_string(shape),
                             "the shape the geometry " + geometry.to_string() + " was made from");
    }
    return kept;
}

std::vector<StridedDim> strided_dims(const Tensor& x, const ReductionGeometry& geometry,
                                     const ElementwiseAdjustment* adjustment) {
    Shape sizes;
    std::vector<bool> kept;
    if (adjustment == nullptr) {
        sizes = geometry.dims;
        kept = geometry.kept;
    } else {
        sizes = x.shape();
        kept = kept_per_dimension(sizes, geometry);
    }
    std::vector<StridedDim> dims(sizes.size());
    std::int64_t statistic_stride = 1;
    for (std::size_t i = sizes.size(); i-- > 0;) {
        dims[i].size = sizes[i];
        if (kept[i]) {
            dims[i].statistic = statistic_stride;
            statistic_stride *= sizes[i];
        }
    }
    if (adjustment != nullptr) {
        const std::vector<std::int64_t> scale = broadcast_strides(adjustment->scale.shape());
        const std::vector<std::int64_t> bias = broadcast_strides(adjustment->bias.shape());
        for (std::size_t i = 0; i < dims.size(); ++i) {
            dims[i].scale = scale[i];
            dims[i].bias = bias[i];
        }
    }
    return merge_dims(dims);
}

OperandLayout::Kind row_kind(std::int64_t middle_stride, std::int64_t inner_stride,
                             std::int64_t inner_length, std::int64_t period) {
    if (middle_stride == 0 && inner_stride == 0) return OperandLayout::Kind::scalar;
    const bool contiguous =
        inner_stride == 1 && (period <= inner_length || middle_stride == inner_length);
    return contiguous ? OperandLayout::Kind::direct : OperandLayout::Kind::table;
}

NormalizePlan make_plan(const Tensor& x, const ReductionGeometry& geometry,
                        const NormalizeCoefficients& coefficients,
                        const ElementwiseAdjustment* adjustment, Tensor& y) {
    const std::vector<StridedDim> dims = strided_dims(x, geometry, adjustment);
    const std::size_t n = dims.size();
    const StridedDim& inner = dims[n - 1];

    NormalizePlan plan;
    plan.x_dtype = x.dtype();
    plan.y_dtype = y.dtype();
    plan.x = x.data();
    plan.y = y.data();
    const auto* x_bytes = static_cast<const std::byte*>(x.data());
    const auto* y_bytes = static_cast<const std::byte*>(y.data());
    plan.may_rewrite_outputs =
        y_bytes + y.byte_size() <= x_bytes || x_bytes + x.byte_size() <= y_bytes;
    plan.mean_hi = coefficients.mean_hi.data();
    plan.mean_lo = coefficients.mean_lo.data();
    plan.scale = coefficients.scale.data();
    plan.shift = coefficients.shift.data();
    plan.relu = coefficients.relu;
    if (adjustment != nullptr) {
        plan.with_adjustment = true;
        plan.outer_scale = adjustment->outer_scale.data();
        plan.outer_shift = adjustment->outer_shift.data();
        plan.adjustment_scale_values = adjustment->scale.data_as<float>();
        plan.adjustment_bias_values = adjustment->bias.data_as<float>();
    }

    const std::int64_t StridedDim::*members[3] = {&StridedDim::statistic, &StridedDim::scale,
                                                  &StridedDim::bias};
    OperandLayout* layouts[3] = {&plan.statistic, &plan.adjustment_scale, &plan.adjustment_bias};

    std::size_t outer_dims;
    std::int64_t middle_size = 1;
    const StridedDim* middle = nullptr;
    if (n >= 2) {
        middle = &dims[n - 2];
        middle_size = middle->size;
    }
    const bool middle_broadcasts =
        middle != nullptr && middle->statistic == 0 && middle->scale == 0 && middle->bias == 0;
    if (middle_broadcasts) {
        // Every operand repeats along the middle dimension (channels-last rows): one long row of
        // period `inner`, replicated up to a whole number of vectors when the rows are narrow.
        const std::int64_t packed = std::lcm(inner.size, kMaxLanes);
        plan.period = packed <= kMaxPackedWidth ? packed : inner.size;
        plan.row_length = middle_size * inner.size;
        plan.inner_length = inner.size;
        outer_dims = n - 2;
        for (int i = 0; i < 3; ++i) {
            layouts[i]->middle_stride = 0;
            layouts[i]->inner_stride = inner.*members[i];
        }
    } else if (middle != nullptr && inner.size < kMinRunLength &&
               middle_size * inner.size <= kMaxExpandedPeriod) {
        // Short runs with per-run operands (channels-first with a small spatial extent): expand
        // the operands over both dimensions so that the vectors run across runs.
        plan.period = middle_size * inner.size;
        plan.row_length = plan.period;
        plan.inner_length = inner.size;
        outer_dims = n - 2;
        for (int i = 0; i < 3; ++i) {
            layouts[i]->middle_stride = middle->*members[i];
            layouts[i]->inner_stride = inner.*members[i];
        }
    } else {
        plan.row_length = inner.size;
        plan.inner_length = inner.size;
        outer_dims = n - 1;
        bool any_array = false;
        for (int i = 0; i < 3; ++i) {
            layouts[i]->middle_stride = 0;
            layouts[i]->inner_stride = inner.*members[i];
            any_array = any_array || layouts[i]->inner_stride != 0;
        }
        plan.period = any_array ? inner.size : 0;
    }
    for (int i = 0; i < 3; ++i) {
        layouts[i]->kind = row_kind(layouts[i]->middle_stride, layouts[i]->inner_stride,
                                    plan.inner_length, plan.period);
    }
    if (!plan.with_adjustment) {
        plan.adjustment_scale.kind = OperandLayout::Kind::scalar;
        plan.adjustment_bias.kind = OperandLayout::Kind::scalar;
    }
    plan.outer_rank = static_cast<int>(outer_dims);
    for (std::size_t k = 0; k < outer_dims; ++k) {
        plan.outer_size[k] = dims[k].size;
        for (int i = 0; i < 3; ++i) layouts[i]->outer_stride[k] = dims[k].*members[i];
    }

    // Long rows are cut into chunks (a multiple of 64 elements) so that one row still spreads
    // over the threads.
    if (plan.row_length >= 2 * kParallelGrainElements) {
        plan.chunk_length = kParallelGrainElements;
        plan.chunks_per_row = ceil_div(plan.row_length, plan.chunk_length);
    } else {
        plan.chunk_length = plan.row_length;
        plan.chunks_per_row = 1;
    }
    return plan;
}

void check_arguments(const Tensor& x, const ReductionGeometry& geometry,
                     const NormalizeCoefficients& coefficients,
                     const ElementwiseAdjustment* adjustment, const Tensor& y) {
    check_kernel_input(kWhere, x, geometry);
    if (y.dtype() != DType::f32 && y.dtype() != DType::bf16 && y.dtype() != DType::f16) {
        throw unsupported(kWhere, "y of dtype " + std::string(dtype_name(y.dtype())),
                          "the kernels write float32, bfloat16 or float16");
    }
    if (y.shape() != x.shape()) {
        throw shape_mismatch(kWhere, "y", shape_to_string(y.shape()),
                             "x's shape " + shape_to_string(x.shape()));
    }
    const std::size_t statistics = static_cast<std::size_t>(geometry.statistic_count);
    auto check_size = [&](const std::vector<float>& values, std::string_view name) {
        if (values.size() != statistics) {
            throw shape_mismatch(kWhere, name, std::to_string(values.size()) + " values",
                                 std::to_string(statistics) + " (one per statistic)");
        }
    };
    check_size(coefficients.mean_hi, "coefficients.mean_hi");
    check_size(coefficients.mean_lo, "coefficients.mean_lo");
    check_size(coefficients.scale, "coefficients.scale");
    check_size(coefficients.shift, "coefficients.shift");
    if (adjustment == nullptr) return;
    if (coefficients.relu) {
        throw unsupported(kWhere, "relu with an adjustment",
                          "the fused ReLU serves inference, which has no adjustment");
    }
    check_size(adjustment->outer_scale, "adjustment.outer_scale");
    check_size(adjustment->outer_shift, "adjustment.outer_shift");
    auto check_tensor = [&](const Tensor& tensor, std::string_view name) {
        if (tensor.dtype() != DType::f32) {
            throw unsupported(
                kWhere, std::string(name) + " of dtype " + std::string(dtype_name(tensor.dtype())),
                "adjustment tensors are float32");
        }
        check_adjustment_broadcast(kWhere, name, tensor, x.shape());
    };
    check_tensor(adjustment->scale, "adjustment.scale");
    check_tensor(adjustment->bias, "adjustment.bias");
}

}  // namespace

void check_adjustment_broadcast(std::string_view where, std::string_view name,
                                const Tensor& operand, const Shape& x_shape) {
    bool broadcastable = operand.shape().size() == x_shape.size();
    for (std::size_t i = 0; broadcastable && i < x_shape.size(); ++i) {
        broadcastable = operand.shape()[i] == 1 || operand.shape()[i] == x_shape[i];
    }
    if (!broadcastable) {
        throw shape_mismatch(
            where, name, shape_to_string(operand.shape()),
            "x's rank with each dimension 1 or equal to x's " + shape_to_string(x_shape));
    }
}

void split_means(const std::vector<double>& mean, std::vector<float>& hi, std::vector<float>& lo) {
    hi.resize(mean.size());
    lo.resize(mean.size());
    for (std::size_t i = 0; i < mean.size(); ++i) {
        hi[i] = static_cast<float>(mean[i]);
        // A NaN or infinite mean has no meaningful remainder; keep the pair's sum equal to it.
        const double rest = mean[i] - static_cast<double>(hi[i]);
        lo[i] = std::isfinite(rest) ? static_cast<float>(rest) : 0.0F;
    }
}

void normalize(const Engine& engine, const Tensor& x, const ReductionGeometry& geometry,
               const NormalizeCoefficients& coefficients, const ElementwiseAdjustment* adjustment,
               Tensor& y) {
    check_arguments(x, geometry, coefficients, adjustment, y);
    if (x.element_count() == 0) return;
    const NormalizePlan plan = make_plan(x, geometry, coefficients, adjustment, y);
    std::int64_t rows = 1;
    for (int k = 0; k < plan.outer_rank; ++k) rows *= plan.outer_size[k];
    const std::int64_t units = rows * plan.chunks_per_row;
    const std::int64_t unit_elements = std::max<std::int64_t>(1, plan.chunk_length);
    parallel_for(engine, units, std::max<std::int64_t>(1, kParallelGrainElements / unit_elements),
                 [&](std::int64_t begin, std::int64_t end) {
                     HWY_DYNAMIC_DISPATCH(NormalizeUnits)(plan, begin, end);
                 });
}

std::string normalize_kernel_name(const ReductionGeometry& geometry, bool with_adjustment) {
    return kernel_name("normalize", geometry, with_adjustment ? "_adjusted" : "",
                       HWY_DYNAMIC_DISPATCH(KernelTargetName)());
}

}  // namespace keel::batch_normalization

#endif  // HWY_ONCE
