// The element-wise pass: reads x once and writes y once.
//
// The planner describes the tensor as rows of contiguous elements plus an odometer over the outer
// dimensions. Within a row every operand (the per-statistic coefficients and, with an adjustment,
// its two broadcast tensors) is either one value or an array read along the row, so the inner loop
// is always a plain vector loop: channels-last rows read the coefficient arrays in place, channels-
// first rows use scalars, narrow rows are widened by replicating the coefficients into a table
// whose period is a multiple of every target's vector (3 channels: a 48-element table), reduced
// runs shorter than a vector get their coefficients expanded over two dimensions, and per-sample
// adjustments ([N, 1, 1, C], [N, C, 1, 1]) move the row's base pointers, never the inner loop.
// Plain passes (no adjustment) go further: channels-last rows keep blocks of coefficients in
// registers across many periods, short channels-first rows are taken Lanes rows at a time with
// per-lane coefficients, and bf16 data goes through as pairs of vectors split into even and odd
// elements, which needs no cross-lane shuffle to widen or to narrow.
// Outputs too large to stay in the last-level cache next to the input are written with
// non-temporal stores.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "layers/normalization/batch_normalization/kernels/normalize.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/cache_control.h>
#include <hwy/highway.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include <keel/engine/error.hpp>

#include "engine/cpu_cache.hpp"
#include "engine/threading.hpp"
#include "layers/normalization/batch_normalization/kernels/blocking.hpp"
#include "layers/normalization/batch_normalization/kernels/common.hpp"
#include "layers/normalization/batch_normalization/kernels/normalize.hpp"
#include "layers/normalization/batch_normalization/kernels/simd_io-inl.h"

#ifndef KEEL_BATCH_NORMALIZATION_NORMALIZE_VARIANT_
#define KEEL_BATCH_NORMALIZATION_NORMALIZE_VARIANT_
namespace keel::batch_normalization {

// What normalize() decides per call besides the plan's description of the tensor.
struct NormalizeVariant {
    // Whole aligned output vectors bypass the cache (the output cannot stay there anyway).
    bool stream_stores = false;
    // Every mean_lo is +0: the means are exact f32 values, and the low part is not read.
    bool exact_f32_means = false;
    // The CPU has AVX512_BF16: AVX-512 targets round bf16 outputs with VCVTNEPS2BF16.
    bool hardware_bf16 = false;
};

}  // namespace keel::batch_normalization
#endif

HWY_BEFORE_NAMESPACE();
namespace keel::batch_normalization {
namespace HWY_NAMESPACE {

namespace {

// The operands of one row: arrays indexed by position modulo the period, or scalars. A null
// mean_lo array means every low part is +0 (the means are exact f32 values, as in inference).
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

// A whole vector of outputs: streamed past the cache when asked and `destination` is aligned to
// the stored vector's size, stored ordinarily otherwise.
template <class Out, bool kStream>
HWY_INLINE void store_output(FloatTag df, FloatVec value, typename Out::Storage* destination) {
    if constexpr (kStream && kStreams<Out>) {
        const std::uintptr_t bytes = hn::Lanes(df) * sizeof(typename Out::Storage);
        if ((reinterpret_cast<std::uintptr_t>(destination) & (bytes - 1)) == 0) {
            stream_from_f32<Out>(df, value, destination);
            return;
        }
    }
    store_from_f32<Out>(df, value, destination);
}

// One vector (kFull) or the first `count` lanes of positions [position, position + count) of a
// row, whose array operands are read at index `j`. kMeanLo is false when op.mean_lo is null.
template <class In, class Out, bool kStatisticArrays, AdjustmentMode kAdjustment, bool kRelu,
          bool kMeanLo, bool kStream, bool kFull>
HWY_INLINE void normalize_vector(const typename In::Storage* x, typename Out::Storage* y,
                                 std::int64_t position, std::int64_t j, std::size_t count,
                                 const RowOperands& op) {
    const FloatTag df;
    auto array = [&](const float* values) {
        if constexpr (kFull) {
            return hn::LoadU(df, values + j);
        } else {
            return load_partial_as_f32<F32Format>(df, values + j, count);
        }
    };
    // Adjustment scale and bias may broadcast differently: either one can be a scalar in a row.
    auto array_or_value = [&](const float* values, float value) {
        return values == nullptr ? hn::Set(df, value) : array(values);
    };
    FloatVec v;
    if constexpr (kFull) {
        v = load_as_f32<In>(df, x + position);
    } else {
        v = load_partial_as_f32<In>(df, x + position, count);
    }
    // The mean is subtracted before scaling, hi part first: x − hi is exact when x is near the
    // mean, so data with a large mean and a tiny spread keeps its precision. Subtracting a low
    // part of +0 changes nothing, so rows without one skip it.
    FloatVec t, scale, shift;
    if constexpr (kStatisticArrays) {
        t = hn::Sub(v, array(op.mean_hi));
        if constexpr (kMeanLo) t = hn::Sub(t, array(op.mean_lo));
        scale = array(op.scale);
        shift = array(op.shift);
    } else {
        t = hn::Sub(hn::Sub(v, hn::Set(df, op.mean_hi_value)), hn::Set(df, op.mean_lo_value));
        scale = hn::Set(df, op.scale_value);
        shift = hn::Set(df, op.shift_value);
    }
    FloatVec u = hn::MulAdd(t, scale, shift);
    if constexpr (kAdjustment != AdjustmentMode::none) {
        FloatVec adjustment_scale, adjustment_bias, outer_scale, outer_shift;
        if constexpr (kAdjustment == AdjustmentMode::arrays) {
            adjustment_scale = array_or_value(op.adjustment_scale, op.adjustment_scale_value);
            adjustment_bias = array_or_value(op.adjustment_bias, op.adjustment_bias_value);
        } else {
            adjustment_scale = hn::Set(df, op.adjustment_scale_value);
            adjustment_bias = hn::Set(df, op.adjustment_bias_value);
        }
        if constexpr (kStatisticArrays) {
            outer_scale = array(op.outer_scale);
            outer_shift = array(op.outer_shift);
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
        store_output<Out, kStream>(df, u, y + position);
    } else {
        store_partial_from_f32<Out>(df, u, y + position, count);
    }
}

// `length` positions of one row from `position`, reading array operands from index `j`. Nothing
// outside the segment or the operand arrays is touched: the last partial vector is either a whole
// vector ending at the segment's end, which recomputes and rewrites a few outputs with the same
// values (only when y does not overlap x, whose inputs the first write would have replaced), or
// goes through staging buffers.
template <class In, class Out, bool kStatisticArrays, AdjustmentMode kAdjustment, bool kRelu,
          bool kMeanLo, bool kStream>
HWY_INLINE void normalize_segment(const typename In::Storage* x, typename Out::Storage* y,
                                  std::int64_t position, std::int64_t j, std::int64_t length,
                                  bool may_rewrite, const RowOperands& row_operands) {
    // A local copy: the compiler must assume that every store to y may change memory the operands
    // were read from, and would reload them for each vector.
    const RowOperands op = row_operands;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    std::int64_t k = 0;
    for (; k + lanes <= length; k += lanes) {
        normalize_vector<In, Out, kStatisticArrays, kAdjustment, kRelu, kMeanLo, kStream, true>(
            x, y, position + k, j + k, static_cast<std::size_t>(lanes), op);
    }
    if (k < length && may_rewrite && length >= lanes) {
        normalize_vector<In, Out, kStatisticArrays, kAdjustment, kRelu, kMeanLo, kStream, true>(
            x, y, position + length - lanes, j + length - lanes, static_cast<std::size_t>(lanes),
            op);
    } else if (k < length) {
        normalize_vector<In, Out, kStatisticArrays, kAdjustment, kRelu, kMeanLo, kStream, false>(
            x, y, position + k, j + k, static_cast<std::size_t>(length - k), op);
    }
}

// A statistic's coefficients as vectors: one value per lane (channels-last blocks, row groups) or
// one value broadcast (channels-first rows).
struct CoefficientVecs {
    FloatVec mean_hi;
    FloatVec mean_lo;
    FloatVec scale;
    FloatVec shift;
};

// The same arithmetic as normalize_vector without an adjustment, on coefficients in registers.
template <bool kRelu, bool kMeanLo>
HWY_INLINE FloatVec normalize_value(FloatVec v, const CoefficientVecs& c) {
    FloatVec t = hn::Sub(v, c.mean_hi);
    if constexpr (kMeanLo) t = hn::Sub(t, c.mean_lo);
    FloatVec u = hn::MulAdd(t, c.scale, c.shift);
    if constexpr (kRelu) u = hn::Max(hn::Zero(FloatTag()), u);
    return u;
}

template <bool kMeanLo>
HWY_INLINE CoefficientVecs load_coefficients(const RowOperands& op, std::int64_t j) {
    const FloatTag df;
    return {hn::LoadU(df, op.mean_hi + j), kMeanLo ? hn::LoadU(df, op.mean_lo + j) : hn::Zero(df),
            hn::LoadU(df, op.scale + j), hn::LoadU(df, op.shift + j)};
}

// Coefficient vectors a channels-last block keeps in registers while it walks a tile of periods:
// four operands of four vectors fill half of AVX-512's 32 registers. The other x86 targets have
// 16: three operands of four vectors (exact means, no low parts: inference) fit, four operands
// take two vectors. Re-reading the coefficients for every vector (three or four loads beside the
// one of x) made the pass load-bound: [8, 28, 28, 256] took 1.5x a copy, with the registers 1.1x.
// On AVX2, four vectors instead of two took [8, 112, 112, 32] and [4, 16, 28, 28, 64]
// channels-last inference 0.64-0.78x the time (fewer walks over each tile), C = 256 unchanged.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
template <bool kMeanLo>
inline constexpr std::size_t kBlockVectors = 4;
#else
template <bool kMeanLo>
inline constexpr std::size_t kBlockVectors = kMeanLo ? 2 : 4;
#endif
// Periods are walked in tiles of at most 4 KiB of input, each tile once per block of coefficients:
// within a tile no load is a multiple of 4 KiB away from a recent store to y, which the CPU would
// take for the same address (4K aliasing) when x and y lie alike modulo 4 KiB, as tensors of one
// size do.
constexpr std::int64_t kTileBytes = 4096;

// The passes that get the register-blocked and grouped kernels: f32 and bf16 data, and the fused
// ReLU only with exact means (inference). The rest (f16, ReLU with split means) take the general
// row loop, which computes the same values: every variant is compiled for every target, and this
// bounds the file's compile time.
template <class In, bool kRelu, bool kMeanLo>
inline constexpr bool kBlockedPasses = !std::is_same_v<In, F16Format> && !(kRelu && kMeanLo);

// Columns [j, j + kVectors · Lanes) of `periods` consecutive periods from `start`.
template <std::size_t kVectors, class In, class Out, bool kRelu, bool kMeanLo, bool kStream>
HWY_INLINE void normalize_block(const typename In::Storage* x, typename Out::Storage* y,
                                std::int64_t start, std::int64_t j, std::int64_t periods,
                                std::int64_t period, const RowOperands& op) {
    const FloatTag df;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(df));
    CoefficientVecs coefficients[kVectors];
    for (std::size_t w = 0; w < kVectors; ++w) {
        coefficients[w] = load_coefficients<kMeanLo>(op, j + static_cast<std::int64_t>(w) * lanes);
    }
    for (std::int64_t p = 0; p < periods; ++p) {
        const std::int64_t base = start + p * period + j;
        for (std::size_t w = 0; w < kVectors; ++w) {
            const std::int64_t at = base + static_cast<std::int64_t>(w) * lanes;
            const FloatVec u =
                normalize_value<kRelu, kMeanLo>(load_as_f32<In>(df, x + at), coefficients[w]);
            store_output<Out, kStream>(df, u, y + at);
        }
    }
}

// bf16 in, bf16 out: elements go through the pass as pairs of vectors (see load_bf16_pair), the
// even and odd elements each with their own coefficients.
template <class In, class Out>
inline constexpr bool kPairs = (std::is_same_v<In, Bf16Format> && kBf16Output<Out>);

// Pairs of vectors per channels-last block: two on every target. On AVX2, whose 16 registers
// also hold narrow_bf16_pair's four rounding constants, one pair per block counted the same
// instructions for inference and 5% more for training (split means) with callgrind on
// [8, 56, 56, 64] NHWC.
inline constexpr std::size_t kBlockPairs = 2;

template <class Out, bool kRelu, bool kMeanLo, bool kStream>
HWY_INLINE void normalize_pair(const std::uint16_t* x, std::uint16_t* y,
                               const CoefficientVecs& even, const CoefficientVecs& odd) {
    FloatVec even_values, odd_values;
    load_bf16_pair(x, even_values, odd_values);
    const WordVec bits = narrow_bf16_pair<Out>(normalize_value<kRelu, kMeanLo>(even_values, even),
                                               normalize_value<kRelu, kMeanLo>(odd_values, odd));
    const WordTag du32;
    auto* destination = reinterpret_cast<std::uint32_t*>(y);
    if constexpr (kStream) {
        if ((reinterpret_cast<std::uintptr_t>(y) & (sizeof(WordVec) - 1)) == 0) {
            hn::Stream(bits, du32, destination);
            return;
        }
    }
    hn::StoreU(bits, du32, destination);
}

// As normalize_block, in pairs, with `op` in pair order (see interleave_for_pairs).
template <std::size_t kPairCount, class Out, bool kRelu, bool kMeanLo, bool kStream>
HWY_INLINE void normalize_pair_block(const std::uint16_t* x, std::uint16_t* y, std::int64_t start,
                                     std::int64_t j, std::int64_t periods, std::int64_t period,
                                     const RowOperands& op) {
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    CoefficientVecs even[kPairCount], odd[kPairCount];
    for (std::size_t q = 0; q < kPairCount; ++q) {
        const std::int64_t at = j + 2 * static_cast<std::int64_t>(q) * lanes;
        even[q] = load_coefficients<kMeanLo>(op, at);
        odd[q] = load_coefficients<kMeanLo>(op, at + lanes);
    }
    for (std::int64_t p = 0; p < periods; ++p) {
        const std::int64_t base = start + p * period + j;
        for (std::size_t q = 0; q < kPairCount; ++q) {
            const std::int64_t at = base + 2 * static_cast<std::int64_t>(q) * lanes;
            normalize_pair<Out, kRelu, kMeanLo, kStream>(x + at, y + at, even[q], odd[q]);
        }
    }
}

// `periods` whole periods of a plain channels-last row from `start` (a period's first position),
// column block by column block within tiles of periods. `pairs`, when not null, holds the
// coefficient arrays in pair order for the bf16 pair kernel (period a multiple of a pair).
template <class In, class Out, bool kRelu, bool kMeanLo, bool kStream>
HWY_INLINE void normalize_periods(const typename In::Storage* x, typename Out::Storage* y,
                                  std::int64_t start, std::int64_t periods, std::int64_t period,
                                  const RowOperands& op, const RowOperands* pairs) {
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    constexpr std::size_t kVectors = kBlockVectors<kMeanLo>;
    const std::int64_t block = static_cast<std::int64_t>(kVectors) * lanes;
    const std::int64_t period_bytes = period * static_cast<std::int64_t>(sizeof(*x));
    const std::int64_t tile = std::max<std::int64_t>(1, kTileBytes / period_bytes);
    for (std::int64_t first = 0; first < periods; first += tile) {
        const std::int64_t count = std::min(tile, periods - first);
        const std::int64_t tile_start = start + first * period;
        std::int64_t j = 0;
        if constexpr (kPairs<In, Out>) {
            if (pairs != nullptr) {
                const std::int64_t pair_block = 2 * static_cast<std::int64_t>(kBlockPairs) * lanes;
                for (; j + pair_block <= period; j += pair_block) {
                    normalize_pair_block<kBlockPairs, Out, kRelu, kMeanLo, kStream>(
                        x, y, tile_start, j, count, period, *pairs);
                }
                for (; j < period; j += 2 * lanes) {
                    normalize_pair_block<1, Out, kRelu, kMeanLo, kStream>(x, y, tile_start, j,
                                                                          count, period, *pairs);
                }
            }
        }
        for (; j + block <= period; j += block) {
            normalize_block<kVectors, In, Out, kRelu, kMeanLo, kStream>(x, y, tile_start, j, count,
                                                                        period, op);
        }
        // Narrow periods in as few blocks as possible: a period of two vectors in one pass.
        if constexpr (kVectors > 2) {
            for (; j + 2 * lanes <= period; j += 2 * lanes) {
                normalize_block<2, In, Out, kRelu, kMeanLo, kStream>(x, y, tile_start, j, count,
                                                                     period, op);
            }
        }
        for (; j < period; j += lanes) {
            normalize_block<1, In, Out, kRelu, kMeanLo, kStream>(x, y, tile_start, j, count, period,
                                                                 op);
        }
    }
}

// Positions [begin, end) of one row. Plain passes with array operands whose period is whole
// vectors run their whole periods through normalize_periods; the rest goes in segments that each
// stay within one operand period. `pairs` as for normalize_periods.
template <class In, class Out, bool kStatisticArrays, AdjustmentMode kAdjustment, bool kRelu,
          bool kMeanLo, bool kStream>
HWY_INLINE void normalize_row_span(const typename In::Storage* x, typename Out::Storage* y,
                                   std::int64_t begin, std::int64_t end, std::int64_t period,
                                   bool may_rewrite, const RowOperands& op,
                                   const RowOperands* pairs = nullptr) {
    if (period == 0) {
        if constexpr (kPairs<In, Out> && kAdjustment == AdjustmentMode::none) {
            // One value per row: the pairs need no reordered coefficients.
            const FloatTag df;
            const CoefficientVecs scalars{hn::Set(df, op.mean_hi_value),
                                          hn::Set(df, op.mean_lo_value),
                                          hn::Set(df, op.scale_value), hn::Set(df, op.shift_value)};
            const std::int64_t width = 2 * static_cast<std::int64_t>(hn::Lanes(df));
            for (; begin + width <= end; begin += width) {
                normalize_pair<Out, kRelu, true, kStream>(x + begin, y + begin, scalars, scalars);
            }
            if (begin == end) return;
        }
        normalize_segment<In, Out, kStatisticArrays, kAdjustment, kRelu, kMeanLo, kStream>(
            x, y, begin, 0, end - begin, may_rewrite, op);
        return;
    }
    std::int64_t position = begin;
    // Only the first segment can start inside a period.
    std::int64_t j = begin % period;
    if constexpr (kStatisticArrays && kAdjustment == AdjustmentMode::none &&
                  kBlockedPasses<In, kRelu, kMeanLo>) {
        if (period % static_cast<std::int64_t>(hn::Lanes(FloatTag())) == 0) {
            if (j != 0) {
                const std::int64_t length = std::min(period - j, end - position);
                normalize_segment<In, Out, kStatisticArrays, kAdjustment, kRelu, kMeanLo, kStream>(
                    x, y, position, j, length, may_rewrite, op);
                position += length;
                j = 0;
            }
            const std::int64_t periods = (end - position) / period;
            if (periods > 0) {
                // A local copy, as in normalize_segment.
                const RowOperands local = op;
                normalize_periods<In, Out, kRelu, kMeanLo, kStream>(x, y, position, periods, period,
                                                                    local, pairs);
                position += periods * period;
            }
        }
    }
    for (; position < end; j = 0) {
        const std::int64_t length = std::min(period - j, end - position);
        normalize_segment<In, Out, kStatisticArrays, kAdjustment, kRelu, kMeanLo, kStream>(
            x, y, position, j, length, may_rewrite, op);
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
    OperandResolver(const NormalizePlan& plan, const NormalizeVariant& variant)
        : plan_(plan), exact_means_(variant.exact_f32_means) {
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

    HWY_INLINE void resolve(std::int64_t statistic_base, std::int64_t scale_base,
                            std::int64_t bias_base, RowOperands& op) {
        const NormalizePlan& plan = plan_;
        switch (plan.statistic.kind) {
            case OperandLayout::Kind::scalar:
                op.mean_hi_value = plan.mean_hi[statistic_base];
                op.mean_lo_value = plan.mean_lo[statistic_base];
                op.scale_value = plan.scale[statistic_base];
                op.shift_value = plan.shift[statistic_base];
                if (plan.with_adjustment) {
                    op.outer_scale_value = plan.outer_scale[statistic_base];
                    op.outer_shift_value = plan.outer_shift[statistic_base];
                }
                break;
            case OperandLayout::Kind::direct:
                op.mean_hi = plan.mean_hi + statistic_base;
                op.mean_lo = exact_means_ ? nullptr : plan.mean_lo + statistic_base;
                op.scale = plan.scale + statistic_base;
                op.shift = plan.shift + statistic_base;
                if (plan.with_adjustment) {
                    op.outer_scale = plan.outer_scale + statistic_base;
                    op.outer_shift = plan.outer_shift + statistic_base;
                }
                break;
            case OperandLayout::Kind::table:
                resolve_statistic_tables(statistic_base, op);
                break;
        }
        if (!plan.with_adjustment) return;
        resolve_adjustment(plan.adjustment_scale, plan.adjustment_scale_values, scale_base, 6,
                           built_scale_base_, op.adjustment_scale, op.adjustment_scale_value);
        resolve_adjustment(plan.adjustment_bias, plan.adjustment_bias_values, bias_base, 7,
                           built_bias_base_, op.adjustment_bias, op.adjustment_bias_value);
    }

  private:
    float* table(std::size_t slot) const {
        return tables_ + slot * static_cast<std::size_t>(plan_.period);
    }

    // Writes one period of `source` as `layout` reads it from `base`: the middle dimension in
    // steps of middle_stride, the inner one in steps of inner_stride (a fill when it is 0).
    void gather(const OperandLayout& layout, const float* source, std::int64_t base,
                float* destination) const {
        const std::int64_t inner = plan_.inner_length;
        for (std::int64_t start = 0; start < plan_.period; start += inner) {
            const float* from = source + base + start / inner * layout.middle_stride;
            if (layout.inner_stride == 0) {
                std::fill_n(destination + start, inner, *from);
            } else {
                for (std::int64_t i = 0; i < inner; ++i) {
                    destination[start + i] = from[i * layout.inner_stride];
                }
            }
        }
    }

    void resolve_statistic_tables(std::int64_t base, RowOperands& op) {
        const NormalizePlan& plan = plan_;
        const float* sources[6] = {plan.mean_hi, plan.mean_lo,     plan.scale,
                                   plan.shift,   plan.outer_scale, plan.outer_shift};
        const float** arrays[6] = {&op.mean_hi, &op.mean_lo,     &op.scale,
                                   &op.shift,   &op.outer_scale, &op.outer_shift};
        const std::size_t operands = plan.with_adjustment ? 6 : 4;
        for (std::size_t i = 0; i < operands; ++i) {
            if (i == 1 && exact_means_) {
                op.mean_lo = nullptr;
                continue;
            }
            if (base != built_statistic_base_) gather(plan.statistic, sources[i], base, table(i));
            *arrays[i] = table(i);
        }
        built_statistic_base_ = base;
    }

    void resolve_adjustment(const OperandLayout& layout, const float* source, std::int64_t base,
                            std::size_t slot, std::int64_t& built_base, const float*& array,
                            float& value) {
        value = source[base];
        array = nullptr;
        if (layout.kind == OperandLayout::Kind::direct) {
            array = source + base;
            return;
        }
        if (layout.kind == OperandLayout::Kind::scalar) return;
        if (base != built_base) {
            gather(layout, source, base, table(slot));
            built_base = base;
        }
        array = table(slot);
    }

    const NormalizePlan& plan_;
    const bool exact_means_;
    float* tables_ = nullptr;
    std::int64_t built_statistic_base_ = -1;
    std::int64_t built_scale_base_ = -1;
    std::int64_t built_bias_base_ = -1;
};

// The statistic index of consecutive rows, from the plan's outer dimensions.
class StatisticOdometer {
  public:
    StatisticOdometer(const NormalizePlan& plan, std::int64_t row) : plan_(plan) {
        for (int k = plan.outer_rank; k-- > 0;) {
            index_[k] = row % plan.outer_size[k];
            row /= plan.outer_size[k];
            base_ += index_[k] * plan.statistic.outer_stride[k];
        }
    }

    // The current row's statistic index; then moves to the next row.
    std::int64_t next() {
        const std::int64_t current = base_;
        for (int k = plan_.outer_rank; k-- > 0;) {
            base_ += plan_.statistic.outer_stride[k];
            if (++index_[k] < plan_.outer_size[k]) break;
            index_[k] = 0;
            base_ -= plan_.outer_size[k] * plan_.statistic.outer_stride[k];
        }
        return current;
    }

    // Whether the next `count` rows have consecutive statistic indices from the current one
    // (channels-first data, within one sample): then their coefficients are read as vectors.
    bool consecutive(std::int64_t count) const {
        const int k = plan_.outer_rank - 1;
        return k >= 0 && plan_.statistic.outer_stride[k] == 1 &&
               index_[k] + count <= plan_.outer_size[k];
    }

    // After consecutive(count): the current index, moving past those rows.
    std::int64_t skip(std::int64_t count) {
        const int k = plan_.outer_rank - 1;
        const std::int64_t current = base_;
        base_ += count - 1;
        index_[k] += count - 1;
        next();
        return current;
    }

  private:
    const NormalizePlan& plan_;
    std::int64_t index_[kMaxRank] = {};
    std::int64_t base_ = 0;
};

// Rows shorter than this with one value per row (channels-first data with a small spatial extent,
// such as [64, 512, 7, 7]) are normalized Lanes rows at a time (normalize_row_groups). Longer rows
// pay too little per row to gain from it, and their lane tables (row_length · Lanes indices) stop
// fitting in L1 beside the data: measured on AVX-512, rows of 49 went 1.3x faster grouped (2x
// within keel's row loop), rows of 100 as fast either way, rows of 196 1.3x slower.
constexpr std::int64_t kMaxGroupedRowLength = 128;

// Which row of a group each lane of its vectors belongs to, for groups of `rows` rows of `length`
// elements: entry e is row e / length, except that with `pairs` each block of two vectors lists
// the rows of its even elements first, then those of its odd ones (the bf16 pair kernel's order).
// Built once per thread and geometry: rebuilt for every call, with a division per entry, it cost
// tiny calls more than their arithmetic ([1, 64, 8, 8]: 1024 64-bit divisions).
const std::int32_t* lane_row_table(std::int64_t length, std::int64_t rows, bool pairs) {
    struct Table {
        std::int64_t length = 0;
        std::int64_t rows = 0;
        bool pairs = false;
        std::vector<std::int32_t> entries;
    };
    thread_local Table table;
    if (table.length == length && table.rows == rows && table.pairs == pairs) {
        return table.entries.data();
    }
    table.entries.resize(static_cast<std::size_t>(length * rows));
    std::int32_t row = 0;
    std::int64_t column = 0;
    const std::int64_t half = rows / 2;
    for (std::int64_t e = 0; e < length * rows; ++e) {
        std::int64_t slot = e;
        if (pairs) {
            const std::int64_t block = e - e % rows;
            const std::int64_t within = e - block;
            slot = block + (within % 2 == 0 ? within / 2 : half + within / 2);
        }
        table.entries[static_cast<std::size_t>(slot)] = row;
        if (++column == length) {
            column = 0;
            ++row;
        }
    }
    table.length = length;
    table.rows = rows;
    table.pairs = pairs;
    return table.entries.data();
}

// The coefficients of the odometer's next `count` rows, one row per array element.
HWY_INLINE void gather_row_coefficients(const NormalizePlan& plan, StatisticOdometer& statistics,
                                        std::int64_t count, float* mean_hi, float* mean_lo,
                                        float* scale, float* shift) {
    for (std::int64_t l = 0; l < count; ++l) {
        const std::int64_t s = statistics.next();
        mean_hi[l] = plan.mean_hi[s];
        mean_lo[l] = plan.mean_lo[s];
        scale[l] = plan.scale[s];
        shift[l] = plan.shift[s];
    }
}

// The coefficients of the odometer's next Lanes rows, one row per lane.
HWY_INLINE CoefficientVecs row_coefficients(const NormalizePlan& plan,
                                            StatisticOdometer& statistics) {
    const FloatTag df;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(df));
    if (statistics.consecutive(lanes)) {
        const std::int64_t s = statistics.skip(lanes);
        return {hn::LoadU(df, plan.mean_hi + s), hn::LoadU(df, plan.mean_lo + s),
                hn::LoadU(df, plan.scale + s), hn::LoadU(df, plan.shift + s)};
    }
    HWY_ALIGN float mean_hi[hn::MaxLanes(FloatTag())];
    HWY_ALIGN float mean_lo[hn::MaxLanes(FloatTag())];
    HWY_ALIGN float scale[hn::MaxLanes(FloatTag())];
    HWY_ALIGN float shift[hn::MaxLanes(FloatTag())];
    gather_row_coefficients(plan, statistics, lanes, mean_hi, mean_lo, scale, shift);
    return {hn::Load(df, mean_hi), hn::Load(df, mean_lo), hn::Load(df, scale), hn::Load(df, shift)};
}

#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
// normalize_row_groups for bf16 pairs: 2 · Lanes rows at a time, row_length pairs, each lane
// taking its row's coefficients from the two vectors holding the group's.
template <class Out, bool kRelu, bool kMeanLo, bool kStream>
std::int64_t normalize_row_pair_groups(const NormalizePlan& plan, StatisticOdometer& statistics,
                                       std::int64_t row, std::int64_t row_end) {
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    const std::int64_t length = plan.row_length;
    const std::int64_t rows = 2 * lanes;
    // For pair v: the rows of its even elements (v · 2 · Lanes + 2 · i), then of its odd ones.
    const std::int32_t* const lane_table = lane_row_table(length, rows, true);
    const auto* x = static_cast<const std::uint16_t*>(plan.x);
    auto* y = static_cast<std::uint16_t*>(plan.y);
    for (; row + rows <= row_end; row += rows) {
        const CoefficientVecs low = row_coefficients(plan, statistics);
        const CoefficientVecs high = row_coefficients(plan, statistics);
        auto select = [](FloatVec first, __m512i indices, FloatVec second) {
            return FloatVec{_mm512_permutex2var_ps(first.raw, indices, second.raw)};
        };
        auto lookup = [&](__m512i indices) {
            return CoefficientVecs{
                select(low.mean_hi, indices, high.mean_hi),
                kMeanLo ? select(low.mean_lo, indices, high.mean_lo) : low.mean_lo,
                select(low.scale, indices, high.scale), select(low.shift, indices, high.shift)};
        };
        const std::int64_t start = row * length;
        for (std::int64_t v = 0; v < length; ++v) {
            const std::int32_t* indices = lane_table + v * rows;
            const CoefficientVecs even = lookup(_mm512_loadu_si512(indices));
            const CoefficientVecs odd = lookup(_mm512_loadu_si512(indices + lanes));
            const std::int64_t at = start + v * rows;
            normalize_pair<Out, kRelu, kMeanLo, kStream>(x + at, y + at, even, odd);
        }
    }
    return row;
}
#endif

// Rows [row_begin, row_end) of a plain pass with one value of each coefficient per row, Lanes rows
// at a time: those rows are row_length whole vectors, and each lane takes its row's coefficients
// from vectors holding the group's (a table lookup), so no row has a partial vector of its own and
// the per-row work is four scalar loads at most. Rows left over go through normalize_row_span.
template <class In, class Out, bool kRelu, bool kMeanLo, bool kStream>
void normalize_row_groups(const NormalizePlan& plan, std::int64_t row_begin, std::int64_t row_end) {
    const FloatTag df;
    const hn::RebindToSigned<FloatTag> di32;
    const auto* x = static_cast<const typename In::Storage*>(plan.x);
    auto* y = static_cast<typename Out::Storage*>(plan.y);
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(df));
    const std::int64_t length = plan.row_length;
    StatisticOdometer statistics(plan, row_begin);
    std::int64_t row = row_begin;
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
    if constexpr (kPairs<In, Out>) {
        row =
            normalize_row_pair_groups<Out, kRelu, kMeanLo, kStream>(plan, statistics, row, row_end);
    } else
#endif
    {
        // Lane l of a group's vector v holds element v · Lanes + l of the group: row
        // (v · Lanes + l) / row_length.
        const std::int32_t* const lane_table = lane_row_table(length, lanes, false);
        for (; row + lanes <= row_end; row += lanes) {
            const CoefficientVecs group = row_coefficients(plan, statistics);
            const auto* group_x = x + row * length;
            auto* group_y = y + row * length;
            for (std::int64_t v = 0; v < length; ++v) {
                const auto lane_row =
                    hn::IndicesFromVec(df, hn::LoadU(di32, lane_table + v * lanes));
                CoefficientVecs coefficients{hn::TableLookupLanes(group.mean_hi, lane_row),
                                             group.mean_lo,
                                             hn::TableLookupLanes(group.scale, lane_row),
                                             hn::TableLookupLanes(group.shift, lane_row)};
                if constexpr (kMeanLo) {
                    coefficients.mean_lo = hn::TableLookupLanes(group.mean_lo, lane_row);
                }
                const std::int64_t at = v * lanes;
                const FloatVec u = normalize_value<kRelu, kMeanLo>(
                    load_as_f32<In>(df, group_x + at), coefficients);
                store_output<Out, kStream>(df, u, group_y + at);
            }
        }
    }
    for (; row < row_end; ++row) {
        const std::int64_t s = statistics.next();
        RowOperands op;
        op.mean_hi_value = plan.mean_hi[s];
        op.mean_lo_value = plan.mean_lo[s];
        op.scale_value = plan.scale[s];
        op.shift_value = plan.shift[s];
        normalize_row_span<In, Out, false, AdjustmentMode::none, kRelu, true, kStream>(
            x + row * length, y + row * length, 0, length, 0, plan.may_rewrite_outputs, op);
    }
}

// Per-thread storage for coefficient arrays in pair order.
std::vector<float>& pair_table_storage() {
    thread_local std::vector<float> storage;
    return storage;
}

// Copies the array operands of `op` (one period each) into `pairs`, reordered for the bf16 pair
// kernel: within each block of two vectors, first the even positions, then the odd ones.
void interleave_for_pairs(const RowOperands& op, std::int64_t period, std::int64_t lanes,
                          RowOperands& pairs) {
    std::vector<float>& storage = pair_table_storage();
    const std::size_t size = static_cast<std::size_t>(period);
    if (storage.size() < 4 * size) storage.resize(4 * size);
    const float* sources[4] = {op.mean_hi, op.mean_lo, op.scale, op.shift};
    const float** arrays[4] = {&pairs.mean_hi, &pairs.mean_lo, &pairs.scale, &pairs.shift};
    pairs = op;
    for (std::size_t i = 0; i < 4; ++i) {
        if (sources[i] == nullptr) continue;
        float* destination = storage.data() + i * size;
        for (std::int64_t block = 0; block < period; block += 2 * lanes) {
            for (std::int64_t l = 0; l < lanes; ++l) {
                destination[block + l] = sources[i][block + 2 * l];
                destination[block + lanes + l] = sources[i][block + 2 * l + 1];
            }
        }
        *arrays[i] = destination;
    }
}

template <class In, class Out, bool kStatisticArrays, AdjustmentMode kAdjustment, bool kRelu,
          bool kStream>
void normalize_units(const NormalizePlan& plan, const NormalizeVariant& variant,
                     std::int64_t unit_begin, std::int64_t unit_end) {
    if constexpr (!kStatisticArrays && kAdjustment == AdjustmentMode::none &&
                  kBlockedPasses<In, kRelu, false>) {
        if (plan.period == 0 && plan.chunks_per_row == 1 &&
            plan.row_length < kMaxGroupedRowLength &&
            (variant.exact_f32_means || kBlockedPasses<In, kRelu, true>)) {
            if (variant.exact_f32_means) {
                normalize_row_groups<In, Out, kRelu, false, kStream>(plan, unit_begin, unit_end);
            } else if constexpr (kBlockedPasses<In, kRelu, true>) {
                normalize_row_groups<In, Out, kRelu, true, kStream>(plan, unit_begin, unit_end);
            }
            if constexpr (kStream) hwy::FlushStream();
            return;
        }
    }
    const auto* x = static_cast<const typename In::Storage*>(plan.x);
    auto* y = static_cast<typename Out::Storage*>(plan.y);
    OperandResolver resolver(plan, variant);
    // The bf16 pair kernel wants channels-last coefficients reordered; worth it from a few periods.
    bool pair_order = false;
    RowOperands pairs;
    if constexpr (kPairs<In, Out> && kStatisticArrays && kAdjustment == AdjustmentMode::none) {
        const std::int64_t pair_width = 2 * static_cast<std::int64_t>(hn::Lanes(FloatTag()));
        pair_order = plan.period % pair_width == 0 && plan.row_length >= 4 * plan.period;
    }
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    const std::int64_t chunks_per_row = plan.chunks_per_row;

    // Odometer over the outer dimensions, started at the first unit's row.
    std::int64_t row = unit_begin / chunks_per_row;
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
    if (pair_order) interleave_for_pairs(op, plan.period, lanes, pairs);
    for (std::int64_t unit = unit_begin; unit < unit_end; ++unit) {
        // Rows of one chunk (the common case: short rows) need no division.
        const std::int64_t unit_row = chunks_per_row == 1 ? unit : unit / chunks_per_row;
        const std::int64_t chunk = chunks_per_row == 1 ? 0 : unit % chunks_per_row;
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
            if (pair_order) interleave_for_pairs(op, plan.period, lanes, pairs);
        }
        const std::int64_t begin = chunk * plan.chunk_length;
        const std::int64_t end = std::min(plan.row_length, begin + plan.chunk_length);
        const std::int64_t row_start = row * plan.row_length;
        const RowOperands* pair_operands = pair_order ? &pairs : nullptr;
        if (kStatisticArrays && op.mean_lo == nullptr) {
            normalize_row_span<In, Out, kStatisticArrays, kAdjustment, kRelu, false, kStream>(
                x + row_start, y + row_start, begin, end, plan.period, plan.may_rewrite_outputs, op,
                pair_operands);
        } else {
            normalize_row_span<In, Out, kStatisticArrays, kAdjustment, kRelu, true, kStream>(
                x + row_start, y + row_start, begin, end, plan.period, plan.may_rewrite_outputs, op,
                pair_operands);
        }
    }
    if constexpr (kStream) hwy::FlushStream();
}

template <class In, class Out, bool kStatisticArrays>
void normalize_units_for_operands(const NormalizePlan& plan, const NormalizeVariant& variant,
                                  std::int64_t begin, std::int64_t end) {
    if (plan.with_adjustment) {
        const bool scalars = plan.adjustment_scale.kind == OperandLayout::Kind::scalar &&
                             plan.adjustment_bias.kind == OperandLayout::Kind::scalar;
        return scalars ? normalize_units<In, Out, kStatisticArrays, AdjustmentMode::scalars, false,
                                         false>(plan, variant, begin, end)
                       : normalize_units<In, Out, kStatisticArrays, AdjustmentMode::arrays, false,
                                         false>(plan, variant, begin, end);
    }
    // The fused ReLU exists for inference, which never has an adjustment; so do streaming stores,
    // which serve the large plain passes.
    if (plan.relu) {
        return variant.stream_stores
                   ? normalize_units<In, Out, kStatisticArrays, AdjustmentMode::none, true, true>(
                         plan, variant, begin, end)
                   : normalize_units<In, Out, kStatisticArrays, AdjustmentMode::none, true, false>(
                         plan, variant, begin, end);
    }
    return variant.stream_stores
               ? normalize_units<In, Out, kStatisticArrays, AdjustmentMode::none, false, true>(
                     plan, variant, begin, end)
               : normalize_units<In, Out, kStatisticArrays, AdjustmentMode::none, false, false>(
                     plan, variant, begin, end);
}

template <class In, class Out>
void normalize_units_for_formats(const NormalizePlan& plan, const NormalizeVariant& variant,
                                 std::int64_t begin, std::int64_t end) {
    if (plan.statistic.kind == OperandLayout::Kind::scalar) {
        normalize_units_for_operands<In, Out, false>(plan, variant, begin, end);
    } else {
        normalize_units_for_operands<In, Out, true>(plan, variant, begin, end);
    }
}

}  // namespace

void NormalizeUnits(const NormalizePlan& plan, const NormalizeVariant& variant, std::int64_t begin,
                    std::int64_t end) {
    // x and y share their dtype (check_arguments): one kernel per format, not per pair, keeps
    // this file's compile time in bounds (every variant is instantiated for every target).
    if constexpr (kHardwareBf16Target) {
        if (plan.y_dtype == DType::bf16 && variant.hardware_bf16) {
            return normalize_units_for_formats<Bf16Format, Bf16HardwareFormat>(plan, variant, begin,
                                                                               end);
        }
    }
    visit_format(plan.y_dtype, [&](auto format) {
        normalize_units_for_formats<decltype(format), decltype(format)>(plan, variant, begin, end);
    });
}

// hi[i] ← f32(mean[i]) and lo[i] ← f32(mean[i] − hi[i]), or +0 where that remainder is not
// finite: a plain loop the compiler vectorizes for this target. Conversions and one subtraction,
// nothing to fuse into a multiply-add, so every target gives the scalar expression's bits. A
// training call splits one mean per statistic, 7168 of them with axis [1, 3] on [8, 28, 28, 256]:
// the scalar loop took 11% of a training call on [1, 28, 1, 256] with that axis (statistics
// without data), which then took 0.93x as long vectorized.
void SplitMeans(const double* mean, float* hi, float* lo, std::int64_t count) {
    for (std::int64_t i = 0; i < count; ++i) {
        const float high = static_cast<float>(mean[i]);
        const double rest = mean[i] - static_cast<double>(high);
        // rest − rest is +0 exactly when rest is finite (∞ − ∞ and NaN give NaN). Masking the
        // bits, rather than choosing between values with a floating-point comparison, is what the
        // compiler vectorizes.
        const std::uint32_t keep =
            std::bit_cast<std::uint64_t>(rest - rest) == 0 ? ~std::uint32_t{0} : 0;
        hi[i] = high;
        lo[i] = std::bit_cast<float>(std::bit_cast<std::uint32_t>(static_cast<float>(rest)) & keep);
    }
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
HWY_EXPORT(SplitMeans);
HWY_EXPORT(KernelTargetName);

namespace {

constexpr std::string_view kWhere = "BatchNormalization normalize";

// Runs with per-run operands at least this long are rows of their own with scalar coefficients
// (one vector or more each); shorter ones get their coefficients expanded across runs. Expanding
// longer runs only adds three operand loads per vector: on AVX-512, [64, 512, 7, 7] and
// [1, 64, 8, 8] channels-first normalize 1.4x and 5x faster as rows than expanded.
constexpr std::int64_t kMinScalarRowLength = kMaxLanes;

// One dimension with the index step of each operand: statistics, adjustment scale and bias.
struct StridedDim {
    std::int64_t size = 1;
    std::int64_t statistic = 0;
    std::int64_t scale = 0;
    std::int64_t bias = 0;
};

// The planner's dimensions: at most one more than a tensor has (virtual batches split the batch),
// kept in fixed arrays so that planning allocates nothing.
constexpr std::size_t kMaxPlanDims = static_cast<std::size_t>(kMaxRank) + 1;

struct StridedDims {
    std::array<StridedDim, kMaxPlanDims> dim{};
    std::size_t count = 0;
};

// Row-major strides of `shape` where a dimension of 1 broadcasts (stride 0).
std::array<std::int64_t, kMaxPlanDims> broadcast_strides(const Shape& shape) {
    std::array<std::int64_t, kMaxPlanDims> strides{};
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
StridedDims merge_dims(const StridedDims& dims) {
    StridedDims merged;
    for (std::size_t i = 0; i < dims.count; ++i) {
        const StridedDim& dim = dims.dim[i];
        if (dim.size == 1) continue;
        if (merged.count > 0) {
            StridedDim& outer = merged.dim[merged.count - 1];
            if (outer.statistic == dim.statistic * dim.size &&
                outer.scale == dim.scale * dim.size && outer.bias == dim.bias * dim.size) {
                outer.size *= dim.size;
                outer.statistic = dim.statistic;
                outer.scale = dim.scale;
                outer.bias = dim.bias;
                continue;
            }
        }
        merged.dim[merged.count++] = dim;
    }
    if (merged.count == 0) merged.dim[merged.count++] = StridedDim{};
    return merged;
}

// Which of x's own dimensions are kept: the geometry merged them, so split its dims back over
// x's shape (every non-1 dimension is at least 2, so the split is unique).
std::array<bool, kMaxPlanDims> kept_per_dimension(const Shape& shape,
                                                  const ReductionGeometry& geometry) {
    std::array<bool, kMaxPlanDims> kept{};
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

StridedDims strided_dims(const Tensor& x, const ReductionGeometry& geometry,
                         const ElementwiseAdjustment* adjustment) {
    StridedDims dims;
    const Shape& sizes = adjustment == nullptr ? geometry.dims : x.shape();
    std::array<bool, kMaxPlanDims> kept{};
    if (adjustment == nullptr) {
        for (std::size_t i = 0; i < sizes.size(); ++i) kept[i] = geometry.kept[i];
    } else {
        kept = kept_per_dimension(sizes, geometry);
    }
    dims.count = sizes.size();
    std::int64_t statistic_stride = 1;
    for (std::size_t i = sizes.size(); i-- > 0;) {
        dims.dim[i].size = sizes[i];
        if (kept[i]) {
            dims.dim[i].statistic = statistic_stride;
            statistic_stride *= sizes[i];
        }
    }
    if (adjustment != nullptr) {
        const auto scale = broadcast_strides(adjustment->scale.shape());
        const auto bias = broadcast_strides(adjustment->bias.shape());
        for (std::size_t i = 0; i < dims.count; ++i) {
            dims.dim[i].scale = scale[i];
            dims.dim[i].bias = bias[i];
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
    const StridedDims strided = strided_dims(x, geometry, adjustment);
    const auto& dims = strided.dim;
    const std::size_t n = strided.count;
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
        // period `inner`, replicated up to a whole number of vectors when the rows are narrow (of
        // bf16 pairs, two vectors, for 16-bit data).
        const std::int64_t vector_elements = x.dtype() == DType::f32 ? kMaxLanes : 2 * kMaxLanes;
        const std::int64_t packed = std::lcm(inner.size, vector_elements);
        plan.period = packed <= kMaxPackedWidth ? packed : inner.size;
        plan.row_length = middle_size * inner.size;
        plan.inner_length = inner.size;
        outer_dims = n - 2;
        for (int i = 0; i < 3; ++i) {
            layouts[i]->middle_stride = 0;
            layouts[i]->inner_stride = inner.*members[i];
        }
    } else if (middle != nullptr && inner.size < kMinScalarRowLength &&
               middle_size * inner.size <= kMaxExpandedPeriod) {
        // Runs shorter than a vector with per-run operands (channels-first with a tiny spatial
        // extent): expand the operands over both dimensions so that the vectors run across runs.
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
    if (y.dtype() != x.dtype()) {
        throw unsupported(kWhere, "y of dtype " + std::string(dtype_name(y.dtype())),
                          "x's dtype, " + std::string(dtype_name(x.dtype())));
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
    // A NaN or infinite mean has no meaningful remainder: lo is +0, keeping the pair's sum equal
    // to the mean.
    HWY_DYNAMIC_DISPATCH(SplitMeans)
    (mean.data(), hi.data(), lo.data(), static_cast<std::int64_t>(mean.size()));
}

void normalize(const Engine& engine, const Tensor& x, const ReductionGeometry& geometry,
               const NormalizeCoefficients& coefficients, const ElementwiseAdjustment* adjustment,
               Tensor& y) {
    check_arguments(x, geometry, coefficients, adjustment, y);
    if (x.element_count() == 0) return;
    const NormalizePlan plan = make_plan(x, geometry, coefficients, adjustment, y);
    NormalizeVariant variant;
    static const bool hardware_bf16 = __builtin_cpu_supports("avx512bf16") != 0;
    variant.hardware_bf16 = hardware_bf16;
    variant.exact_f32_means =
        std::all_of(coefficients.mean_lo.begin(), coefficients.mean_lo.end(),
                    [](float lo) { return std::bit_cast<std::uint32_t>(lo) == 0; });
    // Adjusted passes (training with Keras' adjustment) always store ordinarily: one variant
    // fewer of every kernel.
    const bool may_stream = adjustment == nullptr;
    switch (coefficients.stores) {
        case OutputStores::automatic:
            variant.stream_stores =
                may_stream &&
                static_cast<std::int64_t>(x.byte_size() + y.byte_size()) > last_level_cache_bytes();
            break;
        case OutputStores::cached:
            break;
        case OutputStores::streaming:
            variant.stream_stores = may_stream;
            break;
    }
    std::int64_t rows = 1;
    for (int k = 0; k < plan.outer_rank; ++k) rows *= plan.outer_size[k];
    const std::int64_t units = rows * plan.chunks_per_row;
    const std::int64_t unit_elements = std::max<std::int64_t>(1, plan.chunk_length);
    parallel_for(engine, units, std::max<std::int64_t>(1, kParallelGrainElements / unit_elements),
                 [&](std::int64_t begin, std::int64_t end) {
                     HWY_DYNAMIC_DISPATCH(NormalizeUnits)(plan, variant, begin, end);
                 });
}

std::string normalize_kernel_name(const ReductionGeometry& geometry, bool with_adjustment) {
    return kernel_name("normalize", geometry, with_adjustment ? "_adjusted" : "",
                       HWY_DYNAMIC_DISPATCH(KernelTargetName)());
}

}  // namespace keel::batch_normalization

#endif  // HWY_ONCE
