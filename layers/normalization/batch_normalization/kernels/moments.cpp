// Per-statistic mean and biased variance in one pass over memory.
//
// Every geometry is cut into a *prefix* of outer dimensions and a *core* made of the innermost
// ones, and the core is reduced by one of two vectorized kernels:
//  - the matrix kernel, for a core [rows, columns] whose columns are statistics (channels-last
//    data; also short reduced runs, laid side by side as columns and folded together at the end).
//    It vectorizes across columns and keeps per-column accumulators;
//  - the run kernel, for a core [K, R] whose reduced runs R are long (channels-first data). It
//    vectorizes along each run.
// The prefix only says where each core sits and which statistics it feeds: channels-last [R, K] and
// channels-first [R, K, R] have no kept prefix dimension; multi-axis and virtual-batch geometries
// ([R, K, R, K], ...) iterate over it (the general path). Both kernels reduce blocks of at most
// kBlockElements with two passes in f32 (the second pass also sums the deviations, which corrects
// the f32 rounding of the first pass' mean exactly as in the corrected two-pass algorithm of Chan,
// Golub and LeVeque), then merge blocks with Chan's formula in f64. The work is cut into items
// whose number depends only on the shape, and their partial results are merged in a fixed order,
// so the statistics do not depend on the thread count or on scheduling.

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "layers/normalization/batch_normalization/kernels/moments.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep

#include <hwy/highway.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include <keel/engine/error.hpp>

#include "engine/threading.hpp"
#include "layers/normalization/batch_normalization/kernels/blocking.hpp"
#include "layers/normalization/batch_normalization/kernels/common.hpp"
#include "layers/normalization/batch_normalization/kernels/moments.hpp"
#include "layers/normalization/batch_normalization/kernels/simd_io-inl.h"

HWY_BEFORE_NAMESPACE();
namespace keel::batch_normalization {
namespace HWY_NAMESPACE {

// Packing and tiling assume every target's f32 vector divides kMaxLanes.
static_assert(hn::MaxLanes(FloatTag()) <= static_cast<std::size_t>(kMaxLanes));

namespace {

// The statistics of one block from its f32 sums: the shift m (the first pass' mean), Σ(x − m) and
// Σ(x − m)². Σ(x − m)/n corrects the mean for the rounding of m, and Σ(x − m)² − (Σ(x − m))²/n is
// the block's M2 about its exact mean. Both corrections are tiny differences of exact-shift sums,
// never a difference of large squares.
HWY_INLINE void merge_block(double& count, double& mean, double& m2, double n, float shift,
                            float deviation_sum, float square_sum) {
    const double deviation = static_cast<double>(deviation_sum);
    const double block_mean = static_cast<double>(shift) + deviation / n;
    double block_m2 = static_cast<double>(square_sum) - deviation * deviation / n;
    if (block_m2 < 0.0) block_m2 = 0.0;  // rounding only; a NaN stays NaN
    merge_moments(count, mean, m2, n, block_mean, block_m2);
}

// merge_block for `columns` columns at once (a multiple of the f64 lane count), in f64 vectors:
// with a block of 64 rows this merge is a fifth of the kernel's work when done one column at a
// time.
HWY_INLINE void merge_block_columns(double n, const float* shift, const float* deviation_sum,
                                    const float* square_sum, double* count, double* mean,
                                    double* m2, std::int64_t columns) {
    const hn::ScalableTag<double> dd;
    const hn::Rebind<float, decltype(dd)> df_half;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    const auto block_count = hn::Set(dd, n);
    const auto inverse_count = hn::Set(dd, 1.0 / n);
    const auto zero = hn::Zero(dd);
    for (std::int64_t c = 0; c < columns; c += lanes) {
        const auto deviation = hn::PromoteTo(dd, hn::LoadU(df_half, deviation_sum + c));
        const auto block_mean =
            hn::MulAdd(deviation, inverse_count, hn::PromoteTo(dd, hn::LoadU(df_half, shift + c)));
        auto block_m2 = hn::NegMulAdd(hn::Mul(deviation, deviation), inverse_count,
                                      hn::PromoteTo(dd, hn::LoadU(df_half, square_sum + c)));
        block_m2 = hn::IfThenElse(block_m2 < zero, zero, block_m2);  // a NaN stays NaN
        const auto old_count = hn::LoadU(dd, count + c);
        const auto old_mean = hn::LoadU(dd, mean + c);
        const auto total = hn::Add(old_count, block_count);
        const auto weight = hn::Div(block_count, total);
        const auto delta = hn::Sub(block_mean, old_mean);
        hn::StoreU(hn::MulAdd(delta, weight, old_mean), dd, mean + c);
        hn::StoreU(
            hn::Add(hn::LoadU(dd, m2 + c),
                    hn::Add(block_m2, hn::Mul(hn::Mul(delta, delta), hn::Mul(old_count, weight)))),
            dd, m2 + c);
        hn::StoreU(total, dd, count + c);
    }
}

template <class Format>
void accumulate_matrix_rows(const MatrixRows& job) {
    using Storage = typename Format::Storage;
    const FloatTag df;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(df));
    const std::int64_t width = job.width;
    const std::int64_t full = width / lanes * lanes;
    // Columns [full, width) are covered by one more vector that ends exactly at `width`; its lanes
    // that overlap the last whole vector are masked off.
    const std::int64_t tail = width - full;
    const std::int64_t tail_column = width - lanes;
    const auto tail_mask = hn::Not(hn::FirstN(df, static_cast<std::size_t>(lanes - tail)));
    const std::int64_t pitch = job.pitch;
    const std::int64_t block_rows =
        std::clamp<std::int64_t>(kBlockElements / width, 1, kMaxBlockRows);

    HWY_ALIGN float shift[kMaxTileWidth + kMinTileWidth];
    HWY_ALIGN float deviation_sum[kMaxTileWidth + kMinTileWidth];
    HWY_ALIGN float square_sum[kMaxTileWidth + kMinTileWidth];
    HWY_ALIGN float tail_shift[hn::MaxLanes(FloatTag())];
    HWY_ALIGN float tail_deviation_sum[hn::MaxLanes(FloatTag())];
    HWY_ALIGN float tail_square_sum[hn::MaxLanes(FloatTag())];

    const Storage* x = static_cast<const Storage*>(job.x);
    for (std::int64_t block_begin = 0; block_begin < job.rows; block_begin += block_rows) {
        const std::int64_t rows = std::min(block_rows, job.rows - block_begin);
        const Storage* block = x + block_begin * pitch;

        // Pass 1: column sums of x − x₀, x₀ being the block's first row. The shift keeps the
        // sums near the data's spread rather than its magnitude, so the first-pass mean is off by
        // little more than its own f32 rounding even for data like 1e4 ± 1e-2. Four rows are
        // added pairwise before joining the accumulator: the sequential chain (and its rounding)
        // stays at rows/4 + 2 additions.
        for (std::int64_t c = 0; c < full; c += lanes) {
            hn::Store(load_as_f32<Format>(df, block + c), df, shift + c);
            hn::Store(hn::Zero(df), df, deviation_sum + c);
        }
        const auto tail_base =
            tail != 0 ? load_as_f32<Format>(df, block + tail_column) : hn::Zero(df);
        auto tail_sum = hn::Zero(df);
        std::int64_t r = 0;
        for (; r + 4 <= rows; r += 4) {
            const Storage* row0 = block + r * pitch;
            const Storage* row1 = row0 + pitch;
            const Storage* row2 = row1 + pitch;
            const Storage* row3 = row2 + pitch;
            for (std::int64_t c = 0; c < full; c += lanes) {
                const auto base = hn::Load(df, shift + c);
                const auto pair01 = hn::Add(hn::Sub(load_as_f32<Format>(df, row0 + c), base),
                                            hn::Sub(load_as_f32<Format>(df, row1 + c), base));
                const auto pair23 = hn::Add(hn::Sub(load_as_f32<Format>(df, row2 + c), base),
                                            hn::Sub(load_as_f32<Format>(df, row3 + c), base));
                hn::Store(hn::Add(hn::Load(df, deviation_sum + c), hn::Add(pair01, pair23)), df,
                          deviation_sum + c);
            }
            if (tail != 0) {
                const auto pair01 =
                    hn::Add(hn::Sub(load_as_f32<Format>(df, row0 + tail_column), tail_base),
                            hn::Sub(load_as_f32<Format>(df, row1 + tail_column), tail_base));
                const auto pair23 =
                    hn::Add(hn::Sub(load_as_f32<Format>(df, row2 + tail_column), tail_base),
                            hn::Sub(load_as_f32<Format>(df, row3 + tail_column), tail_base));
                tail_sum = hn::Add(tail_sum, hn::Add(pair01, pair23));
            }
        }
        for (; r < rows; ++r) {
            const Storage* row = block + r * pitch;
            for (std::int64_t c = 0; c < full; c += lanes) {
                const auto d = hn::Sub(load_as_f32<Format>(df, row + c), hn::Load(df, shift + c));
                hn::Store(hn::Add(hn::Load(df, deviation_sum + c), d), df, deviation_sum + c);
            }
            if (tail != 0) {
                tail_sum = hn::Add(tail_sum,
                                   hn::Sub(load_as_f32<Format>(df, row + tail_column), tail_base));
            }
        }
        const auto inverse_rows = hn::Set(df, 1.0F / static_cast<float>(rows));
        for (std::int64_t c = 0; c < full; c += lanes) {
            const auto base = hn::Load(df, shift + c);
            hn::Store(hn::MulAdd(hn::Load(df, deviation_sum + c), inverse_rows, base), df,
                      shift + c);
            hn::Store(hn::Zero(df), df, deviation_sum + c);
            hn::Store(hn::Zero(df), df, square_sum + c);
        }
        const auto tail_mean = hn::MulAdd(tail_sum, inverse_rows, tail_base);

        // Pass 2, over the same rows (now in L1): Σ(x − m) and Σ(x − m)².
        auto tail_deviation = hn::Zero(df);
        auto tail_square = hn::Zero(df);
        r = 0;
        for (; r + 4 <= rows; r += 4) {
            const Storage* row0 = block + r * pitch;
            const Storage* row1 = row0 + pitch;
            const Storage* row2 = row1 + pitch;
            const Storage* row3 = row2 + pitch;
            for (std::int64_t c = 0; c < full; c += lanes) {
                const auto m = hn::Load(df, shift + c);
                const auto d0 = hn::Sub(load_as_f32<Format>(df, row0 + c), m);
                const auto d1 = hn::Sub(load_as_f32<Format>(df, row1 + c), m);
                const auto d2 = hn::Sub(load_as_f32<Format>(df, row2 + c), m);
                const auto d3 = hn::Sub(load_as_f32<Format>(df, row3 + c), m);
                const auto deviations = hn::Add(hn::Add(d0, d1), hn::Add(d2, d3));
                const auto squares = hn::Add(hn::MulAdd(d0, d0, hn::Mul(d1, d1)),
                                             hn::MulAdd(d2, d2, hn::Mul(d3, d3)));
                hn::Store(hn::Add(hn::Load(df, deviation_sum + c), deviations), df,
                          deviation_sum + c);
                hn::Store(hn::Add(hn::Load(df, square_sum + c), squares), df, square_sum + c);
            }
            if (tail != 0) {
                const auto d0 = hn::Sub(load_as_f32<Format>(df, row0 + tail_column), tail_mean);
                const auto d1 = hn::Sub(load_as_f32<Format>(df, row1 + tail_column), tail_mean);
                const auto d2 = hn::Sub(load_as_f32<Format>(df, row2 + tail_column), tail_mean);
                const auto d3 = hn::Sub(load_as_f32<Format>(df, row3 + tail_column), tail_mean);
                tail_deviation = hn::Add(tail_deviation, hn::Add(hn::Add(d0, d1), hn::Add(d2, d3)));
                tail_square = hn::Add(tail_square, hn::Add(hn::MulAdd(d0, d0, hn::Mul(d1, d1)),
                                                           hn::MulAdd(d2, d2, hn::Mul(d3, d3))));
            }
        }
        for (; r < rows; ++r) {
            const Storage* row = block + r * pitch;
            for (std::int64_t c = 0; c < full; c += lanes) {
                const auto d = hn::Sub(load_as_f32<Format>(df, row + c), hn::Load(df, shift + c));
                hn::Store(hn::Add(hn::Load(df, deviation_sum + c), d), df, deviation_sum + c);
                hn::Store(hn::MulAdd(d, d, hn::Load(df, square_sum + c)), df, square_sum + c);
            }
            if (tail != 0) {
                const auto d = hn::Sub(load_as_f32<Format>(df, row + tail_column), tail_mean);
                tail_deviation = hn::Add(tail_deviation, d);
                tail_square = hn::MulAdd(d, d, tail_square);
            }
        }

        const double n = static_cast<double>(rows);
        merge_block_columns(n, shift, deviation_sum, square_sum, job.count, job.mean, job.m2, full);
        if (tail != 0) {
            // The masked-off lanes hold other columns' data; only the last `tail` lanes are used.
            hn::Store(tail_mean, df, tail_shift);
            hn::Store(hn::IfThenElseZero(tail_mask, tail_deviation), df, tail_deviation_sum);
            hn::Store(hn::IfThenElseZero(tail_mask, tail_square), df, tail_square_sum);
            for (std::int64_t lane = lanes - tail; lane < lanes; ++lane) {
                const std::int64_t c = tail_column + lane;
                merge_block(job.count[c], job.mean[c], job.m2[c], n, tail_shift[lane],
                            tail_deviation_sum[lane], tail_square_sum[lane]);
            }
        }
    }
}

// One piece of a run: `length` >= Lanes elements, reduced with four vector accumulators.
template <class Format>
void accumulate_run_piece(const typename Format::Storage* x, std::int64_t length, double& count,
                          double& mean, double& m2) {
    const FloatTag df;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(df));
    const std::int64_t covered = length / lanes * lanes;
    // Elements [covered, length) come from one vector ending at `length`, masked to the lanes
    // the whole vectors did not cover.
    const auto tail_mask =
        hn::Not(hn::FirstN(df, static_cast<std::size_t>(lanes - (length - covered))));
    const bool has_tail = covered != length;
    const typename Format::Storage* tail = x + length - lanes;

    // Pass 1 sums x − x₀ (x₀ the piece's first element), for the reason given in the matrix
    // kernel: the shift then costs little more than its own f32 rounding.
    const auto base = hn::Set(df, hn::GetLane(load_as_f32<Format>(df, x)));
    auto sum0 = hn::Zero(df);
    auto sum1 = hn::Zero(df);
    auto sum2 = hn::Zero(df);
    auto sum3 = hn::Zero(df);
    std::int64_t i = 0;
    for (; i + 4 * lanes <= length; i += 4 * lanes) {
        sum0 = hn::Add(sum0, hn::Sub(load_as_f32<Format>(df, x + i), base));
        sum1 = hn::Add(sum1, hn::Sub(load_as_f32<Format>(df, x + i + lanes), base));
        sum2 = hn::Add(sum2, hn::Sub(load_as_f32<Format>(df, x + i + 2 * lanes), base));
        sum3 = hn::Add(sum3, hn::Sub(load_as_f32<Format>(df, x + i + 3 * lanes), base));
    }
    for (; i < covered; i += lanes) {
        sum0 = hn::Add(sum0, hn::Sub(load_as_f32<Format>(df, x + i), base));
    }
    if (has_tail) {
        sum1 = hn::Add(sum1,
                       hn::IfThenElseZero(tail_mask, hn::Sub(load_as_f32<Format>(df, tail), base)));
    }
    const float total =
        hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(sum0, sum1), hn::Add(sum2, sum3))));
    const float shift = hn::GetLane(base) + total / static_cast<float>(length);
    const auto m = hn::Set(df, shift);

    auto deviation0 = hn::Zero(df);
    auto deviation1 = hn::Zero(df);
    auto deviation2 = hn::Zero(df);
    auto deviation3 = hn::Zero(df);
    auto square0 = hn::Zero(df);
    auto square1 = hn::Zero(df);
    auto square2 = hn::Zero(df);
    auto square3 = hn::Zero(df);
    i = 0;
    for (; i + 4 * lanes <= length; i += 4 * lanes) {
        const auto d0 = hn::Sub(load_as_f32<Format>(df, x + i), m);
        const auto d1 = hn::Sub(load_as_f32<Format>(df, x + i + lanes), m);
        const auto d2 = hn::Sub(load_as_f32<Format>(df, x + i + 2 * lanes), m);
        const auto d3 = hn::Sub(load_as_f32<Format>(df, x + i + 3 * lanes), m);
        deviation0 = hn::Add(deviation0, d0);
        deviation1 = hn::Add(deviation1, d1);
        deviation2 = hn::Add(deviation2, d2);
        deviation3 = hn::Add(deviation3, d3);
        square0 = hn::MulAdd(d0, d0, square0);
        square1 = hn::MulAdd(d1, d1, square1);
        square2 = hn::MulAdd(d2, d2, square2);
        square3 = hn::MulAdd(d3, d3, square3);
    }
    for (; i < covered; i += lanes) {
        const auto d = hn::Sub(load_as_f32<Format>(df, x + i), m);
        deviation0 = hn::Add(deviation0, d);
        square0 = hn::MulAdd(d, d, square0);
    }
    if (has_tail) {
        const auto d = hn::IfThenElseZero(tail_mask, hn::Sub(load_as_f32<Format>(df, tail), m));
        deviation1 = hn::Add(deviation1, d);
        square1 = hn::MulAdd(d, d, square1);
    }
    const float deviation_sum = hn::GetLane(hn::SumOfLanes(
        df, hn::Add(hn::Add(deviation0, deviation1), hn::Add(deviation2, deviation3))));
    const float square_sum = hn::GetLane(
        hn::SumOfLanes(df, hn::Add(hn::Add(square0, square1), hn::Add(square2, square3))));
    merge_block(count, mean, m2, static_cast<double>(length), shift, deviation_sum, square_sum);
}

template <class Format>
void accumulate_run(const Run& job) {
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    // Each lane of the four accumulators sums at most kMaxBlockRows elements of a piece, which
    // bounds the f32 chain like the matrix kernel's (see kMaxF32AdditionChain).
    const std::int64_t piece_limit = std::min(kBlockElements, 4 * kMaxBlockRows * lanes);
    const auto* x = static_cast<const typename Format::Storage*>(job.x);
    if (job.length <= piece_limit) {
        accumulate_run_piece<Format>(x, job.length, *job.count, *job.mean, *job.m2);
        return;
    }
    const std::int64_t pieces = (job.length + piece_limit - 1) / piece_limit;
    for (std::int64_t piece = 0; piece < pieces; ++piece) {
        // Even split: every piece is at least length / pieces >= Lanes elements long.
        const std::int64_t begin = job.length * piece / pieces;
        const std::int64_t end = job.length * (piece + 1) / pieces;
        accumulate_run_piece<Format>(x + begin, end - begin, *job.count, *job.mean, *job.m2);
    }
}

// Merges `length` contiguous column partials into one accumulator: their combined mean and M2
// by two passes (Σ count·mean / Σ count, then Σ m2 + Σ count·(mean − μ)²), then Chan's formula.
void fold_columns(const double* count, const double* mean, const double* m2, std::int64_t length,
                  double& total_count, double& total_mean, double& total_m2) {
    const hn::ScalableTag<double> dd;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    auto count_sum = hn::Zero(dd);
    auto weighted_sum = hn::Zero(dd);
    std::int64_t c = 0;
    for (; c + lanes <= length; c += lanes) {
        const auto n = hn::LoadU(dd, count + c);
        count_sum = hn::Add(count_sum, n);
        weighted_sum = hn::MulAdd(n, hn::LoadU(dd, mean + c), weighted_sum);
    }
    double group_count = hn::GetLane(hn::SumOfLanes(dd, count_sum));
    double weighted = hn::GetLane(hn::SumOfLanes(dd, weighted_sum));
    for (std::int64_t r = c; r < length; ++r) {
        group_count += count[r];
        weighted += count[r] * mean[r];
    }
    if (group_count == 0.0) return;
    const double group_mean = weighted / group_count;
    const auto center = hn::Set(dd, group_mean);
    auto m2_sum = hn::Zero(dd);
    for (c = 0; c + lanes <= length; c += lanes) {
        const auto delta = hn::Sub(hn::LoadU(dd, mean + c), center);
        m2_sum = hn::Add(m2_sum, hn::MulAdd(hn::Mul(delta, delta), hn::LoadU(dd, count + c),
                                            hn::LoadU(dd, m2 + c)));
    }
    double group_m2 = hn::GetLane(hn::SumOfLanes(dd, m2_sum));
    for (std::int64_t r = c; r < length; ++r) {
        const double delta = mean[r] - group_mean;
        group_m2 += m2[r] + delta * delta * count[r];
    }
    merge_moments(total_count, total_mean, total_m2, group_count, group_mean, group_m2);
}

}  // namespace

void FoldColumns(const double* count, const double* mean, const double* m2, std::int64_t length,
                 double* total_count, double* total_mean, double* total_m2) {
    fold_columns(count, mean, m2, length, *total_count, *total_mean, *total_m2);
}

void AccumulateMatrixRows(DType dtype, const MatrixRows& job) {
    visit_format(dtype, [&](auto format) { accumulate_matrix_rows<decltype(format)>(job); });
}

void AccumulateRun(DType dtype, const Run& job) {
    visit_format(dtype, [&](auto format) { accumulate_run<decltype(format)>(job); });
}

// values[i] ← 1 / √(values[i] + epsilon). Vectors give the scalar expression's bits: addition,
// square root and division are each correctly rounded, and there is no product for the compiler
// to fuse into a multiply-add.
void InverseSquareRoots(double* values, std::int64_t count, double epsilon) {
    const hn::ScalableTag<double> dd;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    const auto one = hn::Set(dd, 1.0);
    const auto shift = hn::Set(dd, epsilon);
    std::int64_t i = 0;
    for (; i + lanes <= count; i += lanes) {
        hn::StoreU(hn::Div(one, hn::Sqrt(hn::Add(hn::LoadU(dd, values + i), shift))), dd,
                   values + i);
    }
    for (; i < count; ++i) values[i] = 1.0 / std::sqrt(values[i] + epsilon);
}

}  // namespace HWY_NAMESPACE
}  // namespace keel::batch_normalization
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

namespace keel::batch_normalization {

// Every call goes through HWY_DYNAMIC_DISPATCH: a function pointer saved before the process's first
// dispatch is Highway's target-choosing stub, which re-detects the CPU on each call through it
// (that made the first compute_moments of a [1, 16384, 15, 15] tensor 50x slower).
HWY_EXPORT(AccumulateMatrixRows);
HWY_EXPORT(AccumulateRun);
HWY_EXPORT(FoldColumns);
HWY_EXPORT(InverseSquareRoots);
HWY_EXPORT(KernelTargetName);

namespace {

constexpr std::string_view kWhere = "BatchNormalization moments";

// The outer dimensions of a geometry: which core block (g, q) starts where. g indexes the kept
// prefix dimensions (row-major), q the reduced ones; a block's offset is the sum of a part from
// each.
struct Prefix {
    struct Axis {
        std::int64_t size;
        std::int64_t stride;  // in elements
    };
    std::vector<Axis> kept_axes;     // outermost first
    std::vector<Axis> reduced_axes;  // outermost first
    std::int64_t groups = 1;
    std::int64_t repeats = 1;

    static std::int64_t unravel(const std::vector<Axis>& axes, std::int64_t index) {
        std::int64_t offset = 0;
        for (std::size_t i = axes.size(); i-- > 0;) {
            offset += index % axes[i].size * axes[i].stride;
            index /= axes[i].size;
        }
        return offset;
    }
    std::int64_t group_offset(std::int64_t group) const { return unravel(kept_axes, group); }
    std::int64_t repeat_offset(std::int64_t repeat) const { return unravel(reduced_axes, repeat); }
};

// Steps q = 0, 1, 2, ... through the reduced prefix axes with additions only (an odometer), for
// loops that visit many small blocks in order.
class RepeatCursor {
  public:
    RepeatCursor(const Prefix& prefix, std::int64_t repeat) : axes_(prefix.reduced_axes) {
        for (std::size_t i = axes_.size(); i-- > 0;) {
            digits_[i] = repeat % axes_[i].size;
            repeat /= axes_[i].size;
            offset_ += digits_[i] * axes_[i].stride;
        }
    }
    std::int64_t offset() const { return offset_; }
    // Advances to the next repeat, wrapping to repeat 0 after the last.
    void next() {
        for (std::size_t i = axes_.size(); i-- > 0;) {
            offset_ += axes_[i].stride;
            if (++digits_[i] < axes_[i].size) return;
            offset_ -= axes_[i].size * axes_[i].stride;
            digits_[i] = 0;
        }
    }

  private:
    const std::vector<Prefix::Axis>& axes_;
    std::int64_t digits_[kMaxRank] = {};
    std::int64_t offset_ = 0;
};

struct Decomposition {
    bool runs = false;  // core kernel: runs, else matrix
    Prefix prefix;
    std::int64_t local_statistics = 1;  // statistics one core feeds (after the prefix's)
    // Matrix core: rows_per_repeat rows of `width` columns; column c feeds local statistic
    // (c mod width) / column_divisor.
    std::int64_t rows_per_repeat = 1;
    std::int64_t width = 1;
    std::int64_t column_divisor = 1;
    // Run core: local_statistics runs of run_length.
    std::int64_t run_length = 1;
};

Decomposition decompose(const ReductionGeometry& geometry) {
    std::vector<std::int64_t> dims = geometry.dims;
    std::vector<bool> kept = geometry.kept;
    if (dims.empty()) {  // a single element: [K:1]
        dims = {1};
        kept = {true};
    }
    const std::size_t n = dims.size();
    Decomposition d;
    std::size_t prefix_size;
    if (kept[n - 1]) {
        d.width = dims[n - 1];
        d.local_statistics = d.width;
        d.rows_per_repeat = n >= 2 ? dims[n - 2] : 1;
        prefix_size = n >= 2 ? n - 2 : 0;
    } else {
        const std::int64_t run_length = dims[n - 1];
        const std::int64_t runs_per_core = n >= 2 ? dims[n - 2] : 1;
        d.local_statistics = runs_per_core;
        if (run_length >= kMinRunLength) {
            d.runs = true;
            d.run_length = run_length;
            prefix_size = n >= 2 ? n - 2 : 0;
        } else {
            d.width = runs_per_core * run_length;
            d.column_divisor = run_length;
            d.rows_per_repeat = n >= 3 ? dims[n - 3] : 1;
            prefix_size = n >= 3 ? n - 3 : 0;
        }
    }
    std::vector<std::int64_t> strides(n, 1);  // row-major, in elements
    for (std::size_t i = n - 1; i-- > 0;) strides[i] = strides[i + 1] * dims[i + 1];
    for (std::size_t i = 0; i < prefix_size; ++i) {
        if (kept[i]) {
            d.prefix.kept_axes.push_back({dims[i], strides[i]});
            d.prefix.groups *= dims[i];
        } else {
            d.prefix.reduced_axes.push_back({dims[i], strides[i]});
            d.prefix.repeats *= dims[i];
        }
    }
    return d;
}

// Running (count, mean, M2) per entry, in three arrays of a MomentsWorkspace.
struct Accumulators {
    double* count = nullptr;
    double* mean = nullptr;
    double* m2 = nullptr;

    // Takes 3·size zeroed doubles from `storage`, advancing it.
    static Accumulators take(double*& storage, std::int64_t size) {
        Accumulators accumulators{storage, storage + size, storage + 2 * size};
        storage += 3 * size;
        return accumulators;
    }
};

// Items of grain-sized work for parallel_for: run inline when the whole tensor is small.
std::int64_t item_grain(std::int64_t element_count, std::int64_t items) {
    const std::int64_t per_item = std::max<std::int64_t>(1, element_count / items);
    return std::max<std::int64_t>(1, kParallelGrainElements / per_item);
}

// How the matrix kernel cuts a decomposition into items (group, row chunk, column tile).
//
// A statistic's columns (column_divisor of them, a short run laid across columns) never straddle
// two tiles, so an item folds its columns into one partial result per statistic as soon as it has
// reduced them: the partial results kept for the final merge scale with the statistics, not with
// the columns (a [1, 16384, 15, 15] NCHW tensor is one row of 3.7 million columns, but only 16384
// statistics).
struct MatrixSchedule {
    // Narrow rows are packed `pack` at a time into rows whose width is a multiple of every
    // target's vector, so that no lane is wasted (e.g. 3 channels: 16 rows of 48 columns).
    std::int64_t pack = 1;
    std::int64_t packed_width = 1;
    std::vector<std::int64_t> tile_begin;  // column tiles, then packed_width
    std::int64_t group_rows = 1;           // packed or not, rows of one group
    std::int64_t chunk_rows = 1;
    std::int64_t chunks = 1;
    std::int64_t partials_per_chunk = 1;  // pack · local statistics

    std::int64_t tiles() const { return static_cast<std::int64_t>(tile_begin.size()) - 1; }
    std::int64_t partial_count(const Prefix& prefix) const {
        return prefix.groups * chunks * partials_per_chunk;
    }
};

// A short run is laid across at most one tile's columns.
static_assert(kMinRunLength <= kMaxTileWidth);

MatrixSchedule schedule_matrix(const Decomposition& d) {
    MatrixSchedule schedule;
    const std::int64_t width = d.width;
    std::int64_t pack = kMaxLanes / std::gcd(width, kMaxLanes);
    if (pack > 1 && width * pack > kMaxPackedWidth) pack = 1;
    schedule.pack = pack;
    schedule.packed_width = width * pack;
    schedule.partials_per_chunk = pack * d.local_statistics;

    // Tiles of a whole number of statistics; a short remainder joins the previous tile so every
    // tile spans a vector (the remainder being under kMinTileWidth, the joined tile stays within
    // the kernel's kMaxTileWidth + kMinTileWidth columns).
    const std::int64_t tile_step = kMaxTileWidth / d.column_divisor * d.column_divisor;
    for (std::int64_t c = 0; c < schedule.packed_width; c += tile_step) {
        if (c > 0 && schedule.packed_width - c < kMinTileWidth) break;
        schedule.tile_begin.push_back(c);
    }
    schedule.tile_begin.push_back(schedule.packed_width);

    // Row chunks of one group: about kParallelGrainElements per item, a multiple of `pack` rows,
    // and few enough that the partial results stay small.
    schedule.group_rows = d.prefix.repeats * d.rows_per_repeat;
    const std::int64_t tile_width = std::min(schedule.packed_width, tile_step);
    schedule.chunk_rows = ceil_div(ceil_div(kParallelGrainElements, tile_width), pack) * pack;
    schedule.chunks = ceil_div(schedule.group_rows, schedule.chunk_rows);
    const std::int64_t max_chunks = std::max<std::int64_t>(
        1, kMaxPartialResults / (d.prefix.groups * schedule.partials_per_chunk));
    if (schedule.chunks > max_chunks) {
        schedule.chunk_rows = ceil_div(ceil_div(schedule.group_rows, max_chunks), pack) * pack;
        schedule.chunks = ceil_div(schedule.group_rows, schedule.chunk_rows);
    }
    return schedule;
}

// How the run kernel cuts a decomposition into items. Units are (statistic, repeat, piece),
// statistic-major; runs much longer than an item are cut into pieces so that a few long runs
// (e.g. one statistic) still spread over the threads. Each item keeps one partial result per
// statistic it touches, item i's from partial_begin[i].
struct RunSchedule {
    std::int64_t pieces_per_run = 1;
    std::int64_t units_per_statistic = 1;
    std::int64_t units = 0;
    std::int64_t units_per_item = 1;
    std::int64_t items = 0;
    std::vector<std::int64_t> partial_begin;  // items + 1 entries

    std::int64_t partial_count() const { return partial_begin.back(); }
};

RunSchedule schedule_runs(const Decomposition& d) {
    RunSchedule schedule;
    const std::int64_t run_length = d.run_length;
    schedule.pieces_per_run =
        run_length >= 2 * kParallelGrainElements ? run_length / kParallelGrainElements : 1;
    schedule.units_per_statistic = d.prefix.repeats * schedule.pieces_per_run;
    schedule.units = d.prefix.groups * d.local_statistics * schedule.units_per_statistic;
    const std::int64_t unit_elements = run_length / schedule.pieces_per_run;
    schedule.units_per_item = std::max<std::int64_t>(1, kParallelGrainElements / unit_elements);
    schedule.items = ceil_div(schedule.units, schedule.units_per_item);

    schedule.partial_begin.assign(static_cast<std::size_t>(schedule.items) + 1, 0);
    for (std::int64_t item = 0; item < schedule.items; ++item) {
        const std::int64_t first = item * schedule.units_per_item;
        const std::int64_t last = std::min(schedule.units, first + schedule.units_per_item) - 1;
        schedule.partial_begin[static_cast<std::size_t>(item) + 1] =
            schedule.partial_begin[static_cast<std::size_t>(item)] +
            last / schedule.units_per_statistic - first / schedule.units_per_statistic + 1;
    }
    return schedule;
}

void matrix_moments(const Engine& engine, const Tensor& x, const Decomposition& d,
                    const MatrixSchedule& schedule, const Accumulators& partial,
                    const Accumulators& statistics) {
    const DType dtype = x.dtype();
    const std::size_t element_size = dtype_size(dtype);
    const auto* data = static_cast<const std::byte*>(x.data());
    const Prefix& prefix = d.prefix;
    const std::int64_t width = d.width;
    const std::int64_t column_divisor = d.column_divisor;
    const std::int64_t pack = schedule.pack;
    const std::int64_t packed_width = schedule.packed_width;
    const std::int64_t tiles = schedule.tiles();
    const std::int64_t chunks = schedule.chunks;
    const std::int64_t chunk_rows = schedule.chunk_rows;
    const std::int64_t group_rows = schedule.group_rows;

    // Partial result (group, chunk, k) holds the k-th statistic of a packed row: packed columns
    // [k·column_divisor, (k + 1)·column_divisor), i.e. local statistic k mod local_statistics.
    const std::int64_t items = prefix.groups * chunks * tiles;

    auto run_item = [&](std::int64_t item) {
        const std::int64_t tile = item % tiles;
        const std::int64_t chunk = item / tiles % chunks;
        const std::int64_t group = item / tiles / chunks;
        const std::int64_t column_begin = schedule.tile_begin[static_cast<std::size_t>(tile)];
        const std::int64_t column_end = schedule.tile_begin[static_cast<std::size_t>(tile) + 1];
        const std::int64_t columns = column_end - column_begin;
        // The tile's per-column accumulators, over all of the chunk's rows. Only the tile's own
        // columns are cleared: the whole arrays are 12 KiB, which would cost a small tensor's
        // call more than reducing it.
        std::array<double, kMaxTileWidth + kMinTileWidth> count;
        std::array<double, kMaxTileWidth + kMinTileWidth> mean;
        std::array<double, kMaxTileWidth + kMinTileWidth> m2;
        std::fill_n(count.begin(), columns, 0.0);
        std::fill_n(mean.begin(), columns, 0.0);
        std::fill_n(m2.begin(), columns, 0.0);

        const std::int64_t row_end = std::min(group_rows, (chunk + 1) * chunk_rows);
        for (std::int64_t row = chunk * chunk_rows; row < row_end;) {
            // A piece: consecutive rows of one repeat, contiguous in memory.
            const std::int64_t repeat = row / d.rows_per_repeat;
            const std::int64_t piece_end = std::min(row_end, (repeat + 1) * d.rows_per_repeat);
            const std::int64_t piece_rows = piece_end - row;
            const std::int64_t first = prefix.group_offset(group) + prefix.repeat_offset(repeat) +
                                       (row - repeat * d.rows_per_repeat) * width;
            const std::int64_t packed_rows = piece_rows / pack;
            if (packed_rows > 0) {
                HWY_DYNAMIC_DISPATCH(AccumulateMatrixRows)
                (dtype, MatrixRows{data + (first + column_begin) * element_size, packed_rows,
                                   packed_width, columns, count.data(), mean.data(), m2.data()});
            }
            // Rows that do not fill a packed row: the first `leftover` columns of one more.
            const std::int64_t leftover = (piece_rows % pack) * width;
            const std::int64_t leftover_first = first + packed_rows * packed_width;
            for (std::int64_t c = column_begin; c < std::min(column_end, leftover); ++c) {
                const std::size_t i = static_cast<std::size_t>(c - column_begin);
                merge_moments(count[i], mean[i], m2[i], 1.0, x.get(leftover_first + c), 0.0);
            }
            row = piece_end;
        }

        const std::int64_t chunk_base = (group * chunks + chunk) * schedule.partials_per_chunk;
        for (std::int64_t c = 0; c < columns; c += column_divisor) {
            const std::size_t target =
                static_cast<std::size_t>(chunk_base + (column_begin + c) / column_divisor);
            const std::size_t i = static_cast<std::size_t>(c);
            if (column_divisor == 1) {
                partial.count[target] = count[i];
                partial.mean[target] = mean[i];
                partial.m2[target] = m2[i];
            } else {
                HWY_DYNAMIC_DISPATCH(FoldColumns)
                (&count[i], &mean[i], &m2[i], column_divisor, &partial.count[target],
                 &partial.mean[target], &partial.m2[target]);
            }
        }
    };
    parallel_for(engine, items, item_grain(x.element_count(), items),
                 [&](std::int64_t begin, std::int64_t end) {
                     for (std::int64_t item = begin; item < end; ++item) run_item(item);
                 });

    // Merge the partial results into the statistics, always in the same order.
    const std::int64_t statistic_count = prefix.groups * d.local_statistics;
    parallel_for(engine, statistic_count,
                 std::max<std::int64_t>(1, kParallelGrainElements / (chunks * pack)),
                 [&](std::int64_t begin, std::int64_t end) {
                     // (group, local) of statistic s, stepped rather than divided out each time.
                     std::int64_t group = begin / d.local_statistics;
                     std::int64_t local = begin % d.local_statistics;
                     for (std::int64_t s = begin; s < end; ++s, ++local) {
                         if (local == d.local_statistics) {
                             local = 0;
                             ++group;
                         }
                         const std::size_t target = static_cast<std::size_t>(s);
                         for (std::int64_t chunk = 0; chunk < chunks; ++chunk) {
                             const std::int64_t chunk_base =
                                 (group * chunks + chunk) * schedule.partials_per_chunk;
                             for (std::int64_t p = 0; p < pack; ++p) {
                                 const std::size_t i = static_cast<std::size_t>(
                                     chunk_base + p * d.local_statistics + local);
                                 merge_moments(statistics.count[target], statistics.mean[target],
                                               statistics.m2[target], partial.count[i],
                                               partial.mean[i], partial.m2[i]);
                             }
                         }
                     }
                 });
}

void run_moments(const Engine& engine, const Tensor& x, const Decomposition& d,
                 const RunSchedule& schedule, const Accumulators& partial,
                 const Accumulators& statistics) {
    const DType dtype = x.dtype();
    const std::size_t element_size = dtype_size(dtype);
    const auto* data = static_cast<const std::byte*>(x.data());
    const Prefix& prefix = d.prefix;
    const std::int64_t run_length = d.run_length;
    const std::int64_t pieces_per_run = schedule.pieces_per_run;
    const std::int64_t units_per_statistic = schedule.units_per_statistic;
    const std::int64_t units_per_item = schedule.units_per_item;
    const std::int64_t items = schedule.items;
    const std::vector<std::int64_t>& partial_begin = schedule.partial_begin;

    parallel_for(
        engine, items, item_grain(x.element_count(), items),
        [&](std::int64_t begin, std::int64_t end) {
            for (std::int64_t item = begin; item < end; ++item) {
                const std::int64_t first = item * units_per_item;
                const std::int64_t last = std::min(schedule.units, first + units_per_item);
                const std::int64_t first_statistic = first / units_per_statistic;
                // Decode the first unit once, then step (piece, repeat, statistic) by additions.
                std::int64_t s = first_statistic;
                std::int64_t piece = first % pieces_per_run;
                RepeatCursor repeat(prefix, first % units_per_statistic / pieces_per_run);
                std::int64_t statistic_offset = prefix.group_offset(s / d.local_statistics) +
                                                s % d.local_statistics * run_length;
                std::int64_t units_left_in_statistic =
                    units_per_statistic - first % units_per_statistic;
                for (std::int64_t unit = first; unit < last; ++unit) {
                    std::int64_t piece_begin = 0;
                    std::int64_t piece_end = run_length;
                    if (pieces_per_run > 1) {
                        piece_begin = run_length * piece / pieces_per_run;
                        piece_end = run_length * (piece + 1) / pieces_per_run;
                    }
                    const std::int64_t offset = statistic_offset + repeat.offset() + piece_begin;
                    const std::size_t i = static_cast<std::size_t>(
                        partial_begin[static_cast<std::size_t>(item)] + s - first_statistic);
                    HWY_DYNAMIC_DISPATCH(AccumulateRun)
                    (dtype, Run{data + offset * element_size, piece_end - piece_begin,
                                &partial.count[i], &partial.mean[i], &partial.m2[i]});
                    if (++piece == pieces_per_run) {
                        piece = 0;
                        repeat.next();
                    }
                    if (--units_left_in_statistic == 0) {
                        units_left_in_statistic = units_per_statistic;
                        ++s;
                        statistic_offset = prefix.group_offset(s / d.local_statistics) +
                                           s % d.local_statistics * run_length;
                    }
                }
            }
        });

    for (std::int64_t item = 0; item < items; ++item) {
        const std::int64_t first_statistic = item * units_per_item / units_per_statistic;
        for (std::int64_t i = partial_begin[static_cast<std::size_t>(item)];
             i < partial_begin[static_cast<std::size_t>(item) + 1]; ++i) {
            const std::size_t s = static_cast<std::size_t>(
                first_statistic + i - partial_begin[static_cast<std::size_t>(item)]);
            const std::size_t p = static_cast<std::size_t>(i);
            merge_moments(statistics.count[s], statistics.mean[s], statistics.m2[s],
                          partial.count[p], partial.mean[p], partial.m2[p]);
        }
    }
}

void check_arguments(const Tensor& x, const ReductionGeometry& geometry) {
    check_kernel_input(kWhere, x, geometry);
    if (geometry.reduction_count <= 0) {
        throw invalid_argument(kWhere, "reduction_count", std::to_string(geometry.reduction_count),
                               "at least one element per statistic");
    }
}

}  // namespace

// The decomposition and the schedule of its kernel: everything a call needs besides its data.
struct MomentsSchedule {
    Decomposition decomposition;
    MatrixSchedule matrix;  // when !decomposition.runs
    RunSchedule run;        // when decomposition.runs
    std::int64_t partial_count = 0;
};

MomentsPlan::MomentsPlan(const ReductionGeometry& geometry) : geometry_(geometry) {
    if (geometry.element_count == 0) return;
    auto schedule = std::make_shared<MomentsSchedule>();
    schedule->decomposition = decompose(geometry);
    const Decomposition& d = schedule->decomposition;
    if (d.runs) {
        schedule->run = schedule_runs(d);
        schedule->partial_count = schedule->run.partial_count();
    } else {
        schedule->matrix = schedule_matrix(d);
        schedule->partial_count = schedule->matrix.partial_count(d.prefix);
    }
    schedule_ = std::move(schedule);
}

std::int64_t MomentsPlan::partial_results() const noexcept {
    return schedule_ ? schedule_->partial_count : 0;
}

std::size_t MomentsPlan::workspace_doubles() const noexcept {
    if (!schedule_) return 0;
    return 3 * static_cast<std::size_t>(geometry_.statistic_count + schedule_->partial_count);
}

void compute_moments(const Engine& engine, const Tensor& x, const MomentsPlan& plan,
                     MomentsWorkspace& workspace, std::span<double> mean,
                     std::span<double> variance) {
    const ReductionGeometry& geometry = plan.geometry();
    check_arguments(x, geometry);
    const std::size_t statistic_count = static_cast<std::size_t>(geometry.statistic_count);
    if (mean.size() != statistic_count || variance.size() != statistic_count) {
        throw shape_mismatch(
            kWhere, "mean and variance",
            std::to_string(mean.size()) + " and " + std::to_string(variance.size()) + " values",
            std::to_string(statistic_count) + " each (one per statistic)");
    }
    const MomentsSchedule* schedule = plan.schedule();
    if (schedule == nullptr) return;  // no elements, hence no statistics

    // Every accumulator starts empty: the kernels merge into them (Chan's formula).
    const std::size_t doubles = plan.workspace_doubles();
    if (workspace.storage.size() < doubles) workspace.storage.resize(doubles);
    std::fill_n(workspace.storage.begin(), doubles, 0.0);
    double* storage = workspace.storage.data();
    const Accumulators statistics = Accumulators::take(storage, geometry.statistic_count);
    const Accumulators partial = Accumulators::take(storage, schedule->partial_count);

    const Decomposition& d = schedule->decomposition;
    if (d.runs) {
        run_moments(engine, x, d, schedule->run, partial, statistics);
    } else {
        matrix_moments(engine, x, d, schedule->matrix, partial, statistics);
    }
    for (std::size_t s = 0; s < statistic_count; ++s) {
        mean[s] = statistics.mean[s];
        variance[s] = statistics.m2[s] / statistics.count[s];
    }
}

Moments compute_moments(const Engine& engine, const Tensor& x, const ReductionGeometry& geometry) {
    check_arguments(x, geometry);
    Moments moments;
    if (geometry.element_count == 0) return moments;  // no statistics (statistic_count is 0)
    const std::size_t statistic_count = static_cast<std::size_t>(geometry.statistic_count);
    moments.mean.resize(statistic_count);
    moments.variance.resize(statistic_count);
    MomentsWorkspace workspace;
    compute_moments(engine, x, MomentsPlan(geometry), workspace, moments.mean, moments.variance);
    return moments;
}

void inverse_standard_deviations(std::span<const double> variance, float epsilon,
                                 std::span<double> inverse) {
    if (inverse.size() != variance.size()) {
        throw shape_mismatch(kWhere, "inverse", std::to_string(inverse.size()) + " values",
                             std::to_string(variance.size()) + " (one per variance)");
    }
    for (std::size_t i = 0; i < variance.size(); ++i) {
        inverse[i] = static_cast<double>(static_cast<float>(variance[i]));
    }
    HWY_DYNAMIC_DISPATCH(InverseSquareRoots)
    (inverse.data(), static_cast<std::int64_t>(inverse.size()), static_cast<double>(epsilon));
}

std::int64_t moments_partial_results(const ReductionGeometry& geometry) {
    return MomentsPlan(geometry).partial_results();
}

std::string moments_kernel_name(const ReductionGeometry& geometry) {
    return kernel_name("moments", geometry, "", HWY_DYNAMIC_DISPATCH(KernelTargetName)());
}

}  // namespace keel::batch_normalization

#endif  // HWY_ONCE
