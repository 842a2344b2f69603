// Per-statistic mean and biased variance in one pass over memory.
//
// Every geometry is cut into a *prefix* of outer dimensions and a *core* made of the innermost
// ones, and the core is reduced by one of two vectorized kernels:
//  - the matrix kernel, for a core [rows, columns] whose columns are statistics (channels-last
//    data; also very short reduced runs, laid side by side as columns and folded together at the
//    end). It vectorizes across columns and keeps per-column accumulators;
//  - the run kernel, for a core [K, R] whose reduced runs R span a few vectors or more
//    (channels-first data). It vectorizes along each run, and joins the runs of one statistic in
//    consecutive samples (one every K·R elements) into a block, so that a short run does not pay a
//    block's horizontal sums and merge on its own.
// The prefix only says where each core sits and which statistics it feeds: channels-last [R, K] and
// channels-first [R, K, R] have no kept prefix dimension; multi-axis and virtual-batch geometries
// ([R, K, R, K], ...) iterate over it (the general path). Both kernels reduce blocks that stay in
// cache with two passes in f32: the first sums x − x₀ (x₀ the block's first element), the second
// sums (x − m)² about the first pass' mean m rounded to f32. Σ(x − m), the correction for that
// rounding in Chan, Golub and LeVeque's corrected two-pass algorithm, follows from the first sum
// (Σ(x − x₀) − n·(m − x₀)) without a third accumulation. Blocks then merge with Chan's formula in
// f64. The work is cut into items
// whose number depends only on the shape, and their partial results are merged in a fixed order
// by vector code that treats every lane alike, so the statistics do not depend on the thread count
// or on scheduling.

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

#include "engine/cpu_cache.hpp"
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

using DoubleTag = hn::ScalableTag<double>;
using DoubleVec = hn::Vec<DoubleTag>;

// The statistics of one block from its sums: the shift m (the first pass' mean, rounded to f32),
// Σ(x − m) and Σ(x − m)². Σ(x − m)/n corrects the mean for the rounding of m, and
// Σ(x − m)² − (Σ(x − m))²/n is the block's M2 about its exact mean. Both corrections are tiny
// differences of shifted sums, never a difference of large squares.
HWY_INLINE void merge_block(double& count, double& mean, double& m2, double n, float shift,
                            double deviation, float square_sum) {
    const double block_mean = static_cast<double>(shift) + deviation / n;
    double block_m2 = static_cast<double>(square_sum) - deviation * deviation / n;
    if (block_m2 < 0.0) block_m2 = 0.0;  // rounding only; a NaN stays NaN
    merge_moments(count, mean, m2, n, block_mean, block_m2);
}

// Chan's formula lane by lane: merges (count_b, mean_b, m2_b) into (count, mean, m2). Lanes with
// count_b = 0 keep their accumulator; an empty accumulator (0, 0, 0) receives an exact copy, its
// weight count_b / count_b being exactly 1 (as in merge_moments).
HWY_INLINE void merge_vectors(DoubleVec& count, DoubleVec& mean, DoubleVec& m2, DoubleVec count_b,
                              DoubleVec mean_b, DoubleVec m2_b) {
    const DoubleTag dd;
    const auto total = hn::Add(count, count_b);
    const auto weight = hn::Div(count_b, total);
    const auto delta = hn::Sub(mean_b, mean);
    const auto merged_m2 =
        hn::Add(m2, hn::Add(m2_b, hn::Mul(hn::Mul(delta, delta), hn::Mul(count, weight))));
    const auto empty = hn::Eq(count_b, hn::Zero(dd));
    mean = hn::IfThenElse(empty, mean, hn::MulAdd(delta, weight, mean));
    m2 = hn::IfThenElse(empty, m2, merged_m2);
    count = hn::IfThenElse(empty, count, total);
}

// merge_block for `columns` columns at once (a multiple of the f64 lane count), in f64 vectors.
HWY_INLINE void merge_block_columns(double n, const float* shift, const float* deviation_sum,
                                    const float* square_sum, double* count, double* mean,
                                    double* m2, std::int64_t columns) {
    const DoubleTag dd;
    const hn::Rebind<float, DoubleTag> df_half;
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
        auto total_count = hn::LoadU(dd, count + c);
        auto total_mean = hn::LoadU(dd, mean + c);
        auto total_m2 = hn::LoadU(dd, m2 + c);
        merge_vectors(total_count, total_mean, total_m2, block_count, block_mean, block_m2);
        hn::StoreU(total_count, dd, count + c);
        hn::StoreU(total_mean, dd, mean + c);
        hn::StoreU(total_m2, dd, m2 + c);
    }
}

// x − base with Sub's rounding (one rounding of the exact difference), issued as a multiply-add.
// The two passes need more additions than multiplications; on CPUs with separate add and FMA
// units (Zen 4 runs one 512-bit vector on each per cycle) this moves a share of them to the FMA
// units (measured: 7% faster on bf16 [64, 7, 7, 512], no change on f32).
HWY_INLINE FloatVec difference_on_fma(FloatVec x, FloatVec negated_base) {
    return hn::MulAdd(x, hn::Set(FloatTag(), 1.0F), negated_base);
}

// Σ(x − m)² over one column vector of a block (`rows` rows `pitch` apart from `column`), in four
// accumulators (rows r mod 4): chains of rows/4 + 2 additions.
template <class Format>
HWY_INLINE FloatVec column_squares(const typename Format::Storage* column, std::int64_t rows,
                                   std::int64_t pitch, FloatVec m) {
    using Storage = typename Format::Storage;
    const FloatTag df;
    auto square0 = hn::Zero(df);
    auto square1 = hn::Zero(df);
    auto square2 = hn::Zero(df);
    auto square3 = hn::Zero(df);
    std::int64_t k = 0;
    for (; k + 4 <= rows; k += 4) {
        const Storage* row = column + k * pitch;
        const auto d0 = hn::Sub(load_as_f32<Format>(df, row), m);
        const auto d1 = hn::Sub(load_as_f32<Format>(df, row + pitch), m);
        const auto d2 = hn::Sub(load_as_f32<Format>(df, row + 2 * pitch), m);
        const auto d3 = hn::Sub(load_as_f32<Format>(df, row + 3 * pitch), m);
        square0 = hn::MulAdd(d0, d0, square0);
        square1 = hn::MulAdd(d1, d1, square1);
        square2 = hn::MulAdd(d2, d2, square2);
        square3 = hn::MulAdd(d3, d3, square3);
    }
    for (; k < rows; ++k) {
        const auto d = hn::Sub(load_as_f32<Format>(df, column + k * pitch), m);
        square0 = hn::MulAdd(d, d, square0);
    }
    return hn::Add(hn::Add(square0, square1), hn::Add(square2, square3));
}

// Σ(x − m)² over a strip of four column vectors of a block, the sums in registers (kept in
// memory across a tile, their loads and stores cost more than the arithmetic). Two rows per step
// in separate sums: chains of rows/2 + 1 additions.
template <class Format>
HWY_INLINE void strip_squares(const typename Format::Storage* strip, std::int64_t rows,
                              std::int64_t pitch, const float* shift, float* square_sum) {
    using Storage = typename Format::Storage;
    const FloatTag df;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(df));
    const auto m0 = hn::Load(df, shift);
    const auto m1 = hn::Load(df, shift + lanes);
    const auto m2 = hn::Load(df, shift + 2 * lanes);
    const auto m3 = hn::Load(df, shift + 3 * lanes);
    auto even0 = hn::Zero(df);
    auto even1 = hn::Zero(df);
    auto even2 = hn::Zero(df);
    auto even3 = hn::Zero(df);
    auto odd0 = hn::Zero(df);
    auto odd1 = hn::Zero(df);
    auto odd2 = hn::Zero(df);
    auto odd3 = hn::Zero(df);
    std::int64_t k = 0;
    for (; k + 2 <= rows; k += 2) {
        const Storage* row = strip + k * pitch;
        const Storage* next = row + pitch;
        const auto e0 = hn::Sub(load_as_f32<Format>(df, row), m0);
        const auto e1 = hn::Sub(load_as_f32<Format>(df, row + lanes), m1);
        const auto e2 = hn::Sub(load_as_f32<Format>(df, row + 2 * lanes), m2);
        const auto e3 = hn::Sub(load_as_f32<Format>(df, row + 3 * lanes), m3);
        const auto o0 = hn::Sub(load_as_f32<Format>(df, next), m0);
        const auto o1 = hn::Sub(load_as_f32<Format>(df, next + lanes), m1);
        const auto o2 = hn::Sub(load_as_f32<Format>(df, next + 2 * lanes), m2);
        const auto o3 = hn::Sub(load_as_f32<Format>(df, next + 3 * lanes), m3);
        even0 = hn::MulAdd(e0, e0, even0);
        even1 = hn::MulAdd(e1, e1, even1);
        even2 = hn::MulAdd(e2, e2, even2);
        even3 = hn::MulAdd(e3, e3, even3);
        odd0 = hn::MulAdd(o0, o0, odd0);
        odd1 = hn::MulAdd(o1, o1, odd1);
        odd2 = hn::MulAdd(o2, o2, odd2);
        odd3 = hn::MulAdd(o3, o3, odd3);
    }
    if (k < rows) {
        const Storage* row = strip + k * pitch;
        const auto e0 = hn::Sub(load_as_f32<Format>(df, row), m0);
        const auto e1 = hn::Sub(load_as_f32<Format>(df, row + lanes), m1);
        const auto e2 = hn::Sub(load_as_f32<Format>(df, row + 2 * lanes), m2);
        const auto e3 = hn::Sub(load_as_f32<Format>(df, row + 3 * lanes), m3);
        even0 = hn::MulAdd(e0, e0, even0);
        even1 = hn::MulAdd(e1, e1, even1);
        even2 = hn::MulAdd(e2, e2, even2);
        even3 = hn::MulAdd(e3, e3, even3);
    }
    hn::Store(hn::Add(even0, odd0), df, square_sum);
    hn::Store(hn::Add(even1, odd1), df, square_sum + lanes);
    hn::Store(hn::Add(even2, odd2), df, square_sum + 2 * lanes);
    hn::Store(hn::Add(even3, odd3), df, square_sum + 3 * lanes);
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
        std::clamp<std::int64_t>(kBlockElements / width, kMinBlockRows, kMaxBlockRows);

    HWY_ALIGN float shift[kMaxTileWidth + kMinTileWidth];
    HWY_ALIGN float deviation_sum[kMaxTileWidth + kMinTileWidth];
    HWY_ALIGN float square_sum[kMaxTileWidth + kMinTileWidth];
    HWY_ALIGN float tail_shift[hn::MaxLanes(FloatTag())];
    HWY_ALIGN float tail_deviation_sum[hn::MaxLanes(FloatTag())];
    HWY_ALIGN float tail_square_sum[hn::MaxLanes(FloatTag())];

    const Storage* x = static_cast<const Storage*>(job.x);
    // Even blocks: no block of a few rows pays a merge per column on its own.
    const std::int64_t blocks = ceil_div(job.rows, block_rows);
    std::int64_t block_end = 0;
    for (std::int64_t b = 1; b <= blocks; ++b) {
        const std::int64_t block_begin = block_end;
        block_end = b == blocks ? job.rows : job.rows * b / blocks;
        const std::int64_t rows = block_end - block_begin;
        const Storage* block = x + block_begin * pitch;

        // Pass 1, row by row (the order memory streams in): column sums S of x − x₀, x₀ being
        // the block's first row. The shift keeps the sums near the data's spread rather than its
        // magnitude, so the first-pass mean is off by little more than its own f32 rounding even
        // for data like 1e4 ± 1e-2. Four rows are added pairwise before joining the sum: the
        // sequential chain (and its rounding) stays at rows/4 + 2 additions (+ 3 for the last
        // rows). shift holds −x₀ while the sums run.
        for (std::int64_t c = 0; c < full; c += lanes) {
            hn::Store(hn::Neg(load_as_f32<Format>(df, block + c)), df, shift + c);
            hn::Store(hn::Zero(df), df, deviation_sum + c);
        }
        const auto tail_base =
            tail != 0 ? load_as_f32<Format>(df, block + tail_column) : hn::Zero(df);
        const auto negated_tail_base = hn::Neg(tail_base);
        auto tail_sum = hn::Zero(df);
        std::int64_t r = 0;
        for (; r + 4 <= rows; r += 4) {
            const Storage* row0 = block + r * pitch;
            const Storage* row1 = row0 + pitch;
            const Storage* row2 = row1 + pitch;
            const Storage* row3 = row2 + pitch;
            for (std::int64_t c = 0; c < full; c += lanes) {
                const auto negated_base = hn::Load(df, shift + c);
                const auto pair01 =
                    hn::Add(difference_on_fma(load_as_f32<Format>(df, row0 + c), negated_base),
                            difference_on_fma(load_as_f32<Format>(df, row1 + c), negated_base));
                const auto pair23 =
                    hn::Add(difference_on_fma(load_as_f32<Format>(df, row2 + c), negated_base),
                            difference_on_fma(load_as_f32<Format>(df, row3 + c), negated_base));
                hn::Store(hn::Add(hn::Load(df, deviation_sum + c), hn::Add(pair01, pair23)), df,
                          deviation_sum + c);
            }
            if (tail != 0) {
                const auto pair01 =
                    hn::Add(difference_on_fma(load_as_f32<Format>(df, row0 + tail_column),
                                              negated_tail_base),
                            difference_on_fma(load_as_f32<Format>(df, row1 + tail_column),
                                              negated_tail_base));
                const auto pair23 =
                    hn::Add(difference_on_fma(load_as_f32<Format>(df, row2 + tail_column),
                                              negated_tail_base),
                            difference_on_fma(load_as_f32<Format>(df, row3 + tail_column),
                                              negated_tail_base));
                tail_sum = hn::Add(tail_sum, hn::Add(pair01, pair23));
            }
        }
        for (; r < rows; ++r) {
            const Storage* row = block + r * pitch;
            for (std::int64_t c = 0; c < full; c += lanes) {
                const auto d =
                    difference_on_fma(load_as_f32<Format>(df, row + c), hn::Load(df, shift + c));
                hn::Store(hn::Add(hn::Load(df, deviation_sum + c), d), df, deviation_sum + c);
            }
            if (tail != 0) {
                tail_sum =
                    hn::Add(tail_sum, difference_on_fma(load_as_f32<Format>(df, row + tail_column),
                                                        negated_tail_base));
            }
        }
        // The shift m = x₀ + S/n, rounded to f32, and Σ(x − m) = S − n·(m − x₀): the mean's
        // correction for that rounding, which the block's merge adds back (merge_block).
        const auto block_count = hn::Set(df, static_cast<float>(rows));
        const auto inverse_rows = hn::Set(df, 1.0F / static_cast<float>(rows));
        for (std::int64_t c = 0; c < full; c += lanes) {
            const auto base = hn::Neg(hn::Load(df, shift + c));
            const auto sum = hn::Load(df, deviation_sum + c);
            const auto m = hn::MulAdd(sum, inverse_rows, base);
            hn::Store(m, df, shift + c);
            hn::Store(hn::NegMulAdd(block_count, hn::Sub(m, base), sum), df, deviation_sum + c);
        }
        const auto tail_mean = hn::MulAdd(tail_sum, inverse_rows, tail_base);
        const auto tail_deviation =
            hn::NegMulAdd(block_count, hn::Sub(tail_mean, tail_base), tail_sum);

        // Pass 2, over the same rows (now in cache): Σ(x − m)², a strip at a time.
        std::int64_t c = 0;
        for (; c + 4 * lanes <= full; c += 4 * lanes) {
            strip_squares<Format>(block + c, rows, pitch, shift + c, square_sum + c);
        }
        for (; c < full; c += lanes) {
            hn::Store(column_squares<Format>(block + c, rows, pitch, hn::Load(df, shift + c)), df,
                      square_sum + c);
        }

        const double n = static_cast<double>(rows);
        merge_block_columns(n, shift, deviation_sum, square_sum, job.count, job.mean, job.m2, full);
        if (tail != 0) {
            const auto tail_square =
                column_squares<Format>(block + tail_column, rows, pitch, tail_mean);
            // The masked-off lanes hold other columns' data; only the last `tail` lanes are used.
            hn::Store(tail_mean, df, tail_shift);
            hn::Store(hn::IfThenElseZero(tail_mask, tail_deviation), df, tail_deviation_sum);
            hn::Store(hn::IfThenElseZero(tail_mask, tail_square), df, tail_square_sum);
            for (std::int64_t lane = lanes - tail; lane < lanes; ++lane) {
                const std::int64_t column = tail_column + lane;
                merge_block(job.count[column], job.mean[column], job.m2[column], n,
                            tail_shift[lane], tail_deviation_sum[lane], tail_square_sum[lane]);
            }
        }
    }
}

// One block of the run kernel: `runs` runs of `length` >= Lanes elements, `pitch` elements apart,
// reduced with four vector accumulators per sum. Each accumulator takes at most
// ceil(length / (4·Lanes)) vectors per run (the caller keeps their total within kMaxBlockRows).
template <class Format>
void accumulate_run_block(const typename Format::Storage* x, std::int64_t runs, std::int64_t pitch,
                          std::int64_t length, double& count, double& mean, double& m2) {
    using Storage = typename Format::Storage;
    const FloatTag df;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(df));
    const std::int64_t quads = length / (4 * lanes) * (4 * lanes);
    const std::int64_t whole = length / lanes * lanes;
    // Elements [whole, length) come from one vector ending at `length`, masked to the lanes the
    // whole vectors did not cover.
    const std::int64_t tail = length - whole;
    const std::int64_t tail_start = length - lanes;
    const auto tail_mask = hn::Not(hn::FirstN(df, static_cast<std::size_t>(lanes - tail)));

    // Pass 1 sums x − x₀ (x₀ the block's first element), for the reason given in the matrix
    // kernel: the shift then costs little more than its own f32 rounding. The (at most three)
    // whole vectors past the groups of four and the tail go to different accumulators.
    const float first = hn::GetLane(load_as_f32<Format>(df, x));
    const auto negated_base = hn::Set(df, -first);
    auto sum0 = hn::Zero(df);
    auto sum1 = hn::Zero(df);
    auto sum2 = hn::Zero(df);
    auto sum3 = hn::Zero(df);
    auto difference = [&](const Storage* p) {
        return difference_on_fma(load_as_f32<Format>(df, p), negated_base);
    };
    for (std::int64_t r = 0; r < runs; ++r) {
        const Storage* run = x + r * pitch;
        std::int64_t i = 0;
        for (; i < quads; i += 4 * lanes) {
            sum0 = hn::Add(sum0, difference(run + i));
            sum1 = hn::Add(sum1, difference(run + i + lanes));
            sum2 = hn::Add(sum2, difference(run + i + 2 * lanes));
            sum3 = hn::Add(sum3, difference(run + i + 3 * lanes));
        }
        if (i < whole) {
            sum0 = hn::Add(sum0, difference(run + i));
            i += lanes;
            if (i < whole) {
                sum1 = hn::Add(sum1, difference(run + i));
                i += lanes;
                if (i < whole) sum2 = hn::Add(sum2, difference(run + i));
            }
        }
        if (tail != 0) {
            sum3 = hn::Add(sum3, hn::IfThenElseZero(tail_mask, difference(run + tail_start)));
        }
    }
    const std::int64_t elements = runs * length;
    const float total =
        hn::GetLane(hn::SumOfLanes(df, hn::Add(hn::Add(sum0, sum1), hn::Add(sum2, sum3))));
    const float shift = first + total / static_cast<float>(elements);
    const auto m = hn::Set(df, shift);

    // Pass 2, over the same runs (now in cache): Σ(x − m)².
    auto square0 = hn::Zero(df);
    auto square1 = hn::Zero(df);
    auto square2 = hn::Zero(df);
    auto square3 = hn::Zero(df);
    auto square = [&](const Storage* p, FloatVec sum) {
        const auto d = hn::Sub(load_as_f32<Format>(df, p), m);
        return hn::MulAdd(d, d, sum);
    };
    for (std::int64_t r = 0; r < runs; ++r) {
        const Storage* run = x + r * pitch;
        std::int64_t i = 0;
        for (; i < quads; i += 4 * lanes) {
            square0 = square(run + i, square0);
            square1 = square(run + i + lanes, square1);
            square2 = square(run + i + 2 * lanes, square2);
            square3 = square(run + i + 3 * lanes, square3);
        }
        if (i < whole) {
            square0 = square(run + i, square0);
            i += lanes;
            if (i < whole) {
                square1 = square(run + i, square1);
                i += lanes;
                if (i < whole) square2 = square(run + i, square2);
            }
        }
        if (tail != 0) {
            const auto d = hn::IfThenElseZero(
                tail_mask, hn::Sub(load_as_f32<Format>(df, run + tail_start), m));
            square3 = hn::MulAdd(d, d, square3);
        }
    }
    const float square_sum = hn::GetLane(
        hn::SumOfLanes(df, hn::Add(hn::Add(square0, square1), hn::Add(square2, square3))));
    // Σ(x − m) = Σ(x − x₀) − n·(m − x₀), exact in f64 but for the f32 sum.
    const double n = static_cast<double>(elements);
    const double deviation_sum =
        static_cast<double>(total) - n * (static_cast<double>(shift) - static_cast<double>(first));
    merge_block(count, mean, m2, n, shift, deviation_sum, square_sum);
}

template <class Format>
void accumulate_runs(const Runs& job) {
    using Storage = typename Format::Storage;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(FloatTag()));
    const std::int64_t length = job.length;
    // A run longer than this is cut into pieces of one block each: each accumulator then takes
    // at most kMaxBlockRows vectors.
    const std::int64_t piece_limit = std::min(kBlockElements, 4 * kMaxBlockRows * lanes);
    // Shorter runs are joined into blocks of whole runs, as many as the cache and the chain bound
    // allow (each accumulator takes ceil(length / (4·Lanes)) vectors per run).
    const std::int64_t runs_per_block = std::max<std::int64_t>(
        1, std::min(kBlockElements / length, kMaxBlockRows / ceil_div(length, 4 * lanes)));
    const auto* x = static_cast<const Storage*>(job.x);
    if (length > piece_limit) {
        const std::int64_t pieces = ceil_div(length, piece_limit);
        for (std::int64_t s = 0; s < job.statistics; ++s) {
            for (std::int64_t r = 0; r < job.runs; ++r) {
                const Storage* run = x + s * job.statistic_stride + r * job.run_pitch;
                std::int64_t begin = 0;
                for (std::int64_t piece = 1; piece <= pieces; ++piece) {
                    // Even split: every piece is at least length / pieces >= Lanes elements long.
                    const std::int64_t end = length * piece / pieces;
                    accumulate_run_block<Format>(run + begin, 1, 0, end - begin, job.count[s],
                                                 job.mean[s], job.m2[s]);
                    begin = end;
                }
            }
        }
        return;
    }
    const std::int64_t blocks = ceil_div(job.runs, runs_per_block);
    for (std::int64_t s = 0; s < job.statistics; ++s) {
        const Storage* statistic = x + s * job.statistic_stride;
        std::int64_t begin = 0;
        for (std::int64_t block = 1; block <= blocks; ++block) {
            // Even split; a single block (the common case) needs no division.
            const std::int64_t end = block == blocks ? job.runs : job.runs * block / blocks;
            accumulate_run_block<Format>(statistic + begin * job.run_pitch, end - begin,
                                         job.run_pitch, length, job.count[s], job.mean[s],
                                         job.m2[s]);
            begin = end;
        }
    }
}

// Merges `length` contiguous column partials into one accumulator: their combined mean and M2
// by two passes (Σ count·mean / Σ count, then Σ m2 + Σ count·(mean − μ)²), then Chan's formula.
void fold_columns(const double* count, const double* mean, const double* m2, std::int64_t length,
                  double& total_count, double& total_mean, double& total_m2) {
    const DoubleTag dd;
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

// Merges partial results b[i] into accumulators a[i] for i < length. Every element goes through
// the same vector operations (the last ones through a zero-padded vector), so a statistic's result
// does not depend on which lane it fell in, hence not on how the caller split the work.
void MergeColumns(const double* count_b, const double* mean_b, const double* m2_b, double* count,
                  double* mean, double* m2, std::int64_t length) {
    const DoubleTag dd;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    std::int64_t c = 0;
    for (; c + lanes <= length; c += lanes) {
        auto total_count = hn::LoadU(dd, count + c);
        auto total_mean = hn::LoadU(dd, mean + c);
        auto total_m2 = hn::LoadU(dd, m2 + c);
        merge_vectors(total_count, total_mean, total_m2, hn::LoadU(dd, count_b + c),
                      hn::LoadU(dd, mean_b + c), hn::LoadU(dd, m2_b + c));
        hn::StoreU(total_count, dd, count + c);
        hn::StoreU(total_mean, dd, mean + c);
        hn::StoreU(total_m2, dd, m2 + c);
    }
    if (c == length) return;
    const std::size_t rest = static_cast<std::size_t>(length - c);
    constexpr std::size_t kLanes = hn::MaxLanes(DoubleTag());
    HWY_ALIGN std::array<double, kLanes> in_count{}, in_mean{}, in_m2{}, out_count{}, out_mean{},
        out_m2{};
    std::copy_n(count_b + c, rest, in_count.begin());
    std::copy_n(mean_b + c, rest, in_mean.begin());
    std::copy_n(m2_b + c, rest, in_m2.begin());
    std::copy_n(count + c, rest, out_count.begin());
    std::copy_n(mean + c, rest, out_mean.begin());
    std::copy_n(m2 + c, rest, out_m2.begin());
    auto total_count = hn::Load(dd, out_count.data());
    auto total_mean = hn::Load(dd, out_mean.data());
    auto total_m2 = hn::Load(dd, out_m2.data());
    merge_vectors(total_count, total_mean, total_m2, hn::Load(dd, in_count.data()),
                  hn::Load(dd, in_mean.data()), hn::Load(dd, in_m2.data()));
    hn::Store(total_count, dd, out_count.data());
    hn::Store(total_mean, dd, out_mean.data());
    hn::Store(total_m2, dd, out_m2.data());
    std::copy_n(out_count.begin(), rest, count + c);
    std::copy_n(out_mean.begin(), rest, mean + c);
    std::copy_n(out_m2.begin(), rest, m2 + c);
}

void AccumulateMatrixRows(DType dtype, const MatrixRows& job) {
    visit_format(dtype, [&](auto format) { accumulate_matrix_rows<decltype(format)>(job); });
}

void AccumulateRuns(DType dtype, const Runs& job) {
    visit_format(dtype, [&](auto format) { accumulate_runs<decltype(format)>(job); });
}

// mean[i] ← source_mean[i] and variance[i] ← m2[i] / count[i] (correctly rounded divisions,
// the scalar expression's bits).
void FinishMoments(const double* count, const double* source_mean, const double* m2, double* mean,
                   double* variance, std::int64_t size) {
    const hn::ScalableTag<double> dd;
    const std::int64_t lanes = static_cast<std::int64_t>(hn::Lanes(dd));
    std::int64_t i = 0;
    for (; i + lanes <= size; i += lanes) {
        hn::StoreU(hn::LoadU(dd, source_mean + i), dd, mean + i);
        hn::StoreU(hn::Div(hn::LoadU(dd, m2 + i), hn::LoadU(dd, count + i)), dd, variance + i);
    }
    for (; i < size; ++i) {
        mean[i] = source_mean[i];
        variance[i] = m2[i] / count[i];
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
HWY_EXPORT(AccumulateMatrixRows);
HWY_EXPORT(AccumulateRuns);
HWY_EXPORT(FoldColumns);
HWY_EXPORT(MergeColumns);
HWY_EXPORT(FinishMoments);
HWY_EXPORT(KernelTargetName);

namespace {

constexpr std::string_view kWhere = "BatchNormalization moments";

struct Axis {
    std::int64_t size;
    std::int64_t stride;  // in elements
};

// The offset of `index`, a row-major index over `axes`.
std::int64_t unravel(std::span<const Axis> axes, std::int64_t index) {
    std::int64_t offset = 0;
    for (std::size_t i = axes.size(); i-- > 0;) {
        offset += index % axes[i].size * axes[i].stride;
        index /= axes[i].size;
    }
    return offset;
}

// The outer dimensions of a geometry: which core block (g, q) starts where. g indexes the kept
// prefix dimensions (row-major), q the reduced ones; a block's offset is the sum of a part from
// each.
struct Prefix {
    std::vector<Axis> kept_axes;     // outermost first
    std::vector<Axis> reduced_axes;  // outermost first
    std::int64_t groups = 1;
    std::int64_t repeats = 1;

    std::int64_t group_offset(std::int64_t group) const { return unravel(kept_axes, group); }
    std::int64_t repeat_offset(std::int64_t repeat) const { return unravel(reduced_axes, repeat); }
};

// Steps q = 0, 1, 2, ... through some axes with additions only (an odometer), for loops that
// visit many small blocks in order.
class RepeatCursor {
  public:
    RepeatCursor(std::span<const Axis> axes, std::int64_t repeat) : axes_(axes) {
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
    std::span<const Axis> axes_;
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
    // Run core: local_statistics runs of run_length. The innermost reduced prefix axis (one run of
    // a statistic every inner_pitch elements) is read by the run kernel itself; the reduced axes
    // outside it are stepped by the caller.
    std::int64_t run_length = 1;
    std::int64_t inner_repeats = 1;
    std::int64_t inner_pitch = 0;
    std::vector<Axis> outer_reduced_axes;
    std::int64_t outer_repeats = 1;
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
        const std::int64_t runs_per_statistic = geometry.reduction_count / run_length;
        if (run_length >= kLongRunLength ||
            (run_length >= kMinRunLength && runs_per_statistic < run_length)) {
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
    if (d.runs && !d.prefix.reduced_axes.empty()) {
        // The kinds alternate, so the innermost prefix axis is this reduced one, right outside
        // the core: a statistic's runs in consecutive samples are inner_pitch apart.
        d.inner_repeats = d.prefix.reduced_axes.back().size;
        d.inner_pitch = d.prefix.reduced_axes.back().stride;
        d.outer_reduced_axes.assign(d.prefix.reduced_axes.begin(), d.prefix.reduced_axes.end() - 1);
        d.outer_repeats = d.prefix.repeats / d.inner_repeats;
    }
    return d;
}

// Running (count, mean, M2) per entry, in three arrays of a MomentsWorkspace.
struct Accumulators {
    double* count = nullptr;
    double* mean = nullptr;
    double* m2 = nullptr;

    // Takes 3·size doubles from `storage`, advancing it.
    static Accumulators take(double*& storage, std::int64_t size) {
        Accumulators accumulators{storage, storage + size, storage + 2 * size};
        storage += 3 * size;
        return accumulators;
    }
    // Empties entries [begin, end).
    void clear(std::int64_t begin, std::int64_t end) const {
        std::fill(count + begin, count + end, 0.0);
        std::fill(mean + begin, mean + end, 0.0);
        std::fill(m2 + begin, m2 + end, 0.0);
    }
    // mean[i] and variance[i] (biased) of entries [begin, end).
    void finish(std::int64_t begin, std::int64_t end, double* mean_out,
                double* variance_out) const {
        HWY_DYNAMIC_DISPATCH(FinishMoments)
        (count + begin, mean + begin, m2 + begin, mean_out + begin, variance_out + begin,
         end - begin);
    }
    // Merges entries [begin, begin + length) of `partial` into this one's entries from `target`.
    void merge(std::int64_t target, const Accumulators& partial, std::int64_t begin,
               std::int64_t length) const {
        HWY_DYNAMIC_DISPATCH(MergeColumns)
        (partial.count + begin, partial.mean + begin, partial.m2 + begin, count + target,
         mean + target, m2 + target, length);
    }
};

// Items of grain-sized work for parallel_for: run inline when the whole tensor is small.
std::int64_t item_grain(std::int64_t element_count, std::int64_t items) {
    const std::int64_t per_item = std::max<std::int64_t>(1, element_count / items);
    return std::max<std::int64_t>(1, kParallelGrainElements / per_item);
}

// How the matrix kernel cuts a decomposition into items (group block, row chunk, column tile).
//
// A statistic's columns (column_divisor of them, a short run laid across columns) never straddle
// two tiles, so an item folds its columns into one partial result per statistic as soon as it has
// reduced them: the partial results kept for the final merge scale with the statistics, not with
// the columns (a [1, 16384, 15, 15] NCHW tensor is one row of 3.7 million columns, but only 16384
// statistics). Without folding (column_divisor 1), an item accumulates straight into its partial
// results, which lets it take several groups: it then reads each repeat's rows of all its groups,
// contiguous in memory, before moving to the next repeat.
struct MatrixSchedule {
    // Narrow rows are packed `pack` at a time into rows whose width is a multiple of every
    // target's vector, so that no lane is wasted (e.g. 3 channels: 16 rows of 48 columns).
    std::int64_t pack = 1;
    std::int64_t packed_width = 1;
    std::vector<std::int64_t> tile_begin;  // column tiles, then packed_width
    std::int64_t group_rows = 1;           // packed or not, rows of one group
    std::int64_t chunk_rows = 1;
    std::int64_t chunks = 1;
    std::int64_t groups_per_item = 1;
    std::int64_t group_blocks = 1;
    std::int64_t partials_per_chunk = 1;  // pack · local statistics

    std::int64_t tiles() const { return static_cast<std::int64_t>(tile_begin.size()) - 1; }
    std::int64_t items() const { return group_blocks * chunks * tiles(); }
    // One partial result per statistic, at the statistic's own index: the items then accumulate
    // into the statistics themselves, and neither clearing the statistics nor the final merge (a
    // copy into empty accumulators) is needed. With the scalar final loop they took over a
    // quarter of compute_moments on [1, 28, 28, 256] with axis [1, 3] (7168 statistics).
    bool direct() const { return chunks == 1 && pack == 1; }
    std::int64_t partial_count(const Prefix& prefix) const {
        return direct() ? 0 : prefix.groups * chunks * partials_per_chunk;
    }
};

// A short run is laid across at most one tile's columns.
static_assert(kLongRunLength <= kMaxTileWidth);

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

    // Row chunks: about kParallelGrainElements per item, and few enough that the partial results
    // stay small. Without folding, an item takes every group: it then reads the tensor in memory
    // order, and a multi-axis geometry streams like a single-axis one (one group's rows per item,
    // 14 KiB at a time, took 1.2-1.5x as long on [32, 56, 56, 64] with axis [1, 3]; blocks of 19
    // or 28 of its 56 groups, 1.3-1.5x). Such chunks keep at least kMinChunkRows rows of each
    // group, so that the partial results stay a small fraction of the data read, and whole
    // repeats where a repeat is shorter, so that each item reads one contiguous stretch.
    const std::int64_t groups = d.prefix.groups;
    const bool all_groups = d.column_divisor == 1 && groups > 1;
    schedule.group_rows = d.prefix.repeats * d.rows_per_repeat;
    const std::int64_t tile_width = std::min(schedule.packed_width, tile_step);
    // Chunk boundaries fall on multiples of `granule` rows: packed rows, or whole repeats.
    std::int64_t granule = pack;
    std::int64_t chunk_rows = ceil_div(kParallelGrainElements, tile_width);
    if (all_groups) {
        chunk_rows = std::max(kMinChunkRows, ceil_div(chunk_rows, groups));
        if (d.rows_per_repeat < chunk_rows) granule = d.rows_per_repeat;
    }
    const std::int64_t max_chunks =
        std::max<std::int64_t>(1, kMaxPartialResults / (groups * schedule.partials_per_chunk));
    schedule.chunks = std::min(ceil_div(schedule.group_rows, chunk_rows), max_chunks);
    // Even chunks, so that threads get even shares.
    schedule.chunk_rows =
        ceil_div(ceil_div(schedule.group_rows, schedule.chunks), granule) * granule;
    schedule.chunks = ceil_div(schedule.group_rows, schedule.chunk_rows);

    if (all_groups) {
        // Too few items to share among threads: split the groups into blocks, each item keeping
        // at least kParallelGrainElements. Items run group block by group block, so an even count
        // of equal blocks gives two threads equal halves even when the row chunks are uneven or
        // odd in number ([32, 56, 56, 64] with axis [1, 3]: 7 chunks of 280, ..., 280, 112 rows,
        // which two threads could only share 4:3). The blocks only regroup the items: every
        // partial result, hence every bit of the statistics, stays.
        const std::int64_t row_items = schedule.chunks * schedule.tiles();
        const std::int64_t elements = groups * schedule.group_rows * width;
        const std::int64_t max_blocks = std::min(
            groups, std::max<std::int64_t>(1, elements / (kParallelGrainElements * row_items)));
        const std::int64_t least_blocks =
            std::clamp<std::int64_t>(ceil_div(kMinItems, row_items), 1, max_blocks);
        std::int64_t blocks = least_blocks;
        for (std::int64_t b = least_blocks; b <= max_blocks; ++b) {
            if (groups % b == 0 && row_items * b % 2 == 0) {
                blocks = b;
                break;
            }
        }
        schedule.groups_per_item = ceil_div(groups, blocks);
    }
    schedule.group_blocks = ceil_div(d.prefix.groups, schedule.groups_per_item);
    return schedule;
}

// How the run kernel cuts a decomposition into items. Units are (statistic, outer repeat, block of
// runs along the innermost reduced axis, piece), statistic-major; runs much longer than an item
// are cut into pieces so that a few long runs (e.g. one statistic) still spread over the threads,
// and short ones are joined so that a unit is about an item's work. Each item keeps one partial
// result per statistic it touches, item i's from partial_begin[i].
struct RunSchedule {
    std::int64_t pieces_per_run = 1;
    std::int64_t runs_per_unit = 1;
    std::int64_t blocks_per_repeat = 1;  // units along the innermost reduced axis
    std::int64_t units_per_statistic = 1;
    std::int64_t units = 0;
    std::int64_t units_per_item = 1;
    std::int64_t items = 0;
    std::vector<std::int64_t> partial_begin;  // items + 1 entries

    // Each unit a whole statistic: item i's partial results are its statistics, at their own
    // indices, so items accumulate into the statistics themselves (see MatrixSchedule::direct).
    bool direct() const { return units_per_statistic == 1; }
    std::int64_t partial_count() const { return direct() ? 0 : partial_begin.back(); }
};

RunSchedule schedule_runs(const Decomposition& d) {
    RunSchedule schedule;
    const std::int64_t run_length = d.run_length;
    if (run_length >= 2 * kParallelGrainElements) {
        schedule.pieces_per_run = run_length / kParallelGrainElements;
    } else {
        schedule.runs_per_unit =
            std::clamp<std::int64_t>(kParallelGrainElements / run_length, 1, d.inner_repeats);
    }
    schedule.blocks_per_repeat = ceil_div(d.inner_repeats, schedule.runs_per_unit);
    schedule.units_per_statistic =
        d.outer_repeats * schedule.blocks_per_repeat * schedule.pieces_per_run;
    schedule.units = d.prefix.groups * d.local_statistics * schedule.units_per_statistic;
    const std::int64_t unit_elements =
        schedule.runs_per_unit * run_length / schedule.pieces_per_run;
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

// Direct schedules finish each statistic into `mean` and `variance` in the item that reduced it,
// in parallel and while its accumulators are in cache; the others leave that to the caller.
void matrix_moments(const Engine& engine, const Tensor& x, const Decomposition& d,
                    const MatrixSchedule& schedule, const Accumulators& partial_storage,
                    const Accumulators& statistics, double* mean_out, double* variance_out) {
    const Accumulators& partial = schedule.direct() ? statistics : partial_storage;
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
    auto chunk_base = [&](std::int64_t group, std::int64_t chunk) {
        return (group * chunks + chunk) * schedule.partials_per_chunk;
    };

    // Calls reduce(group, first, rows, leftover_first, leftover) for every piece of the chunk's
    // rows of each group in [group_begin, group_end), repeat by repeat and within a repeat group by
    // group (memory order): `rows` packed rows from element `first`, then the first `leftover`
    // columns of one more packed row from `leftover_first`.
    auto for_each_piece = [&](std::int64_t group_begin, std::int64_t group_end, std::int64_t chunk,
                              auto&& reduce) {
        const std::int64_t row_end = std::min(group_rows, (chunk + 1) * chunk_rows);
        for (std::int64_t row = chunk * chunk_rows; row < row_end;) {
            // A piece: consecutive rows of one repeat, contiguous in memory.
            const std::int64_t repeat = row / d.rows_per_repeat;
            const std::int64_t piece_end = std::min(row_end, (repeat + 1) * d.rows_per_repeat);
            const std::int64_t piece_rows = piece_end - row;
            const std::int64_t repeat_first =
                prefix.repeat_offset(repeat) + (row - repeat * d.rows_per_repeat) * width;
            const std::int64_t packed_rows = piece_rows / pack;
            for (std::int64_t group = group_begin; group < group_end; ++group) {
                const std::int64_t first = prefix.group_offset(group) + repeat_first;
                reduce(group, first, packed_rows, first + packed_rows * packed_width,
                       (piece_rows % pack) * width);
            }
            row = piece_end;
        }
    };

    // Accumulates `rows` packed rows from element `first`, then the first `leftover` columns of one
    // more packed row from `leftover_first`, into columns [column_begin, column_end) of the partial
    // results from `base` (column c of a packed row is partial result base + c − column_begin).
    auto accumulate_in_place = [&](std::int64_t base, std::int64_t column_begin,
                                   std::int64_t column_end, std::int64_t first, std::int64_t rows,
                                   std::int64_t leftover_first, std::int64_t leftover) {
        if (rows > 0) {
            HWY_DYNAMIC_DISPATCH(AccumulateMatrixRows)
            (dtype, MatrixRows{data + (first + column_begin) * element_size, rows, packed_width,
                               column_end - column_begin, partial.count + base, partial.mean + base,
                               partial.m2 + base});
        }
        for (std::int64_t c = column_begin; c < std::min(column_end, leftover); ++c) {
            const std::int64_t i = base + c - column_begin;
            merge_moments(partial.count[i], partial.mean[i], partial.m2[i], 1.0,
                          x.get(leftover_first + c), 0.0);
        }
    };

    // When one thread runs every item of a geometry with several groups, and the tensor streams
    // from memory, it reads the tensor in memory order instead: repeat by repeat, group by group,
    // each group's rows of a repeat cut where chunks end. Every partial result receives the same
    // pieces in the same order (a chunk's pieces by increasing row) as from its item, so every bit
    // stays. The items' order serves threads (group blocks give two threads equal halves), but
    // read item by item one thread reads each repeat of [32, 56, 56, 64] with axis [1, 3] in two
    // halves, one per group block, and a chunk of the virtual-batch view [8, 4, 56, 56, 64]
    // interleaves the rows of its 4 groups, 800 KiB apart. Measured at 1 thread, alternating call
    // by call (five runs), the moments took 0.95-1.00x (axis [1, 3]) and 0.88-0.93x (virtual
    // batches of 8) of the item order's time: from 1.17-1.22x of the single-axis moments of the
    // same tensor to 1.11-1.17x, and from 1.20-1.26x to 1.06-1.10x. A tensor that stays in cache
    // ([8, 28, 28, 256] with axis [1, 3]) gains nothing from it and loses the items' smaller
    // working set of statistics (1-5% slower).
    auto run_in_memory_order = [&] {
        partial.clear(0, chunk_base(prefix.groups, 0));
        RepeatCursor repeat_cursor(prefix.reduced_axes, 0);
        for (std::int64_t repeat = 0; repeat < prefix.repeats; ++repeat) {
            const std::int64_t repeat_row = repeat * d.rows_per_repeat;
            for (std::int64_t group = 0; group < prefix.groups; ++group) {
                const std::int64_t group_first =
                    prefix.group_offset(group) + repeat_cursor.offset() - repeat_row * width;
                for (std::int64_t row = repeat_row; row < repeat_row + d.rows_per_repeat;) {
                    const std::int64_t chunk = row / chunk_rows;
                    const std::int64_t piece_end =
                        std::min(repeat_row + d.rows_per_repeat, (chunk + 1) * chunk_rows);
                    const std::int64_t piece_rows = piece_end - row;
                    const std::int64_t first = group_first + row * width;
                    const std::int64_t packed_rows = piece_rows / pack;
                    for (std::int64_t tile = 0; tile < tiles; ++tile) {
                        const std::int64_t column_begin =
                            schedule.tile_begin[static_cast<std::size_t>(tile)];
                        const std::int64_t column_end =
                            schedule.tile_begin[static_cast<std::size_t>(tile) + 1];
                        accumulate_in_place(chunk_base(group, chunk) + column_begin, column_begin,
                                            column_end, first, packed_rows,
                                            first + packed_rows * packed_width,
                                            (piece_rows % pack) * width);
                    }
                    row = piece_end;
                }
            }
            repeat_cursor.next();
        }
        if (schedule.direct()) {
            statistics.finish(0, chunk_base(prefix.groups, 0), mean_out, variance_out);
        }
    };

    auto run_item = [&](std::int64_t item) {
        const std::int64_t tile = item % tiles;
        const std::int64_t chunk = item / tiles % chunks;
        const std::int64_t group_begin = item / tiles / chunks * schedule.groups_per_item;
        const std::int64_t group_end =
            std::min(prefix.groups, group_begin + schedule.groups_per_item);
        const std::int64_t column_begin = schedule.tile_begin[static_cast<std::size_t>(tile)];
        const std::int64_t column_end = schedule.tile_begin[static_cast<std::size_t>(tile) + 1];
        const std::int64_t columns = column_end - column_begin;

        if (column_divisor == 1) {
            // Column c of a packed row is partial result chunk_base + c: accumulate in place.
            for (std::int64_t group = group_begin; group < group_end; ++group) {
                const std::int64_t base = chunk_base(group, chunk) + column_begin;
                partial.clear(base, base + columns);
            }
            for_each_piece(group_begin, group_end, chunk,
                           [&](std::int64_t group, std::int64_t first, std::int64_t rows,
                               std::int64_t leftover_first, std::int64_t leftover) {
                               accumulate_in_place(chunk_base(group, chunk) + column_begin,
                                                   column_begin, column_end, first, rows,
                                                   leftover_first, leftover);
                           });
            if (schedule.direct()) {
                for (std::int64_t group = group_begin; group < group_end; ++group) {
                    const std::int64_t base = chunk_base(group, chunk) + column_begin;
                    statistics.finish(base, base + columns, mean_out, variance_out);
                }
            }
            return;
        }

        // Short runs: the tile's per-column accumulators over all of the chunk's rows, folded per
        // statistic at the end. Only the tile's own columns are cleared: the whole arrays are
        // 12 KiB, which would cost a small tensor's call more than reducing it.
        std::array<double, kMaxTileWidth + kMinTileWidth> count;
        std::array<double, kMaxTileWidth + kMinTileWidth> mean;
        std::array<double, kMaxTileWidth + kMinTileWidth> m2;
        std::fill_n(count.begin(), columns, 0.0);
        std::fill_n(mean.begin(), columns, 0.0);
        std::fill_n(m2.begin(), columns, 0.0);
        for_each_piece(
            group_begin, group_end, chunk,
            [&](std::int64_t, std::int64_t first, std::int64_t rows, std::int64_t leftover_first,
                std::int64_t leftover) {
                if (rows > 0) {
                    HWY_DYNAMIC_DISPATCH(AccumulateMatrixRows)
                    (dtype,
                     MatrixRows{data + (first + column_begin) * element_size, rows, packed_width,
                                columns, count.data(), mean.data(), m2.data()});
                }
                for (std::int64_t c = column_begin; c < std::min(column_end, leftover); ++c) {
                    const std::size_t i = static_cast<std::size_t>(c - column_begin);
                    merge_moments(count[i], mean[i], m2[i], 1.0, x.get(leftover_first + c), 0.0);
                }
            });
        const std::int64_t base = chunk_base(group_begin, chunk);
        const std::int64_t first_target = base + column_begin / column_divisor;
        partial.clear(first_target, first_target + columns / column_divisor);
        for (std::int64_t c = 0; c < columns; c += column_divisor) {
            const std::int64_t target = base + (column_begin + c) / column_divisor;
            const std::size_t i = static_cast<std::size_t>(c);
            HWY_DYNAMIC_DISPATCH(FoldColumns)
            (&count[i], &mean[i], &m2[i], column_divisor, &partial.count[target],
             &partial.mean[target], &partial.m2[target]);
        }
        if (schedule.direct()) {
            statistics.finish(first_target, first_target + columns / column_divisor, mean_out,
                              variance_out);
        }
    };
    const std::int64_t items = schedule.items();
    // The normalize pass' rule for streaming stores: the tensor and an output of its size do not
    // both stay in the last-level cache.
    const bool from_memory =
        2 * static_cast<std::int64_t>(x.byte_size()) > last_level_cache_bytes();
    const bool memory_order = column_divisor == 1 && prefix.groups > 1 && from_memory;
    parallel_for(engine, items, item_grain(x.element_count(), items),
                 [&](std::int64_t begin, std::int64_t end) {
                     if (memory_order && begin == 0 && end == items) {
                         run_in_memory_order();
                         return;
                     }
                     for (std::int64_t item = begin; item < end; ++item) run_item(item);
                 });
    if (schedule.direct()) return;

    // Merge the partial results into the statistics, always in the same order, by column blocks
    // of each group.
    const std::int64_t local = d.local_statistics;
    const std::int64_t column_blocks = ceil_div(local, kMaxTileWidth);
    const std::int64_t merges_per_block = chunks * pack * std::min(local, kMaxTileWidth);
    parallel_for(engine, prefix.groups * column_blocks,
                 std::max<std::int64_t>(1, kParallelGrainElements / merges_per_block),
                 [&](std::int64_t begin, std::int64_t end) {
                     for (std::int64_t block = begin; block < end; ++block) {
                         const std::int64_t group = block / column_blocks;
                         const std::int64_t column = block % column_blocks * kMaxTileWidth;
                         const std::int64_t length = std::min(kMaxTileWidth, local - column);
                         for (std::int64_t chunk = 0; chunk < chunks; ++chunk) {
                             for (std::int64_t p = 0; p < pack; ++p) {
                                 statistics.merge(group * local + column, partial,
                                                  chunk_base(group, chunk) + p * local + column,
                                                  length);
                             }
                         }
                     }
                 });
}

void run_moments(const Engine& engine, const Tensor& x, const Decomposition& d,
                 const RunSchedule& schedule, const Accumulators& partial_storage,
                 const Accumulators& statistics, double* mean_out, double* variance_out) {
    const Accumulators& partial = schedule.direct() ? statistics : partial_storage;
    const DType dtype = x.dtype();
    const std::size_t element_size = dtype_size(dtype);
    const auto* data = static_cast<const std::byte*>(x.data());
    const Prefix& prefix = d.prefix;
    const std::int64_t run_length = d.run_length;
    const std::int64_t pieces_per_run = schedule.pieces_per_run;
    const std::int64_t runs_per_unit = schedule.runs_per_unit;
    const std::int64_t blocks_per_repeat = schedule.blocks_per_repeat;
    const std::int64_t units_per_statistic = schedule.units_per_statistic;
    const std::int64_t units_per_item = schedule.units_per_item;
    const std::int64_t items = schedule.items;
    const std::vector<std::int64_t>& partial_begin = schedule.partial_begin;
    auto statistic_offset = [&](std::int64_t s) {
        return prefix.group_offset(s / d.local_statistics) + s % d.local_statistics * run_length;
    };

    auto run_item = [&](std::int64_t item) {
        const std::int64_t first = item * units_per_item;
        const std::int64_t last = std::min(schedule.units, first + units_per_item);
        const std::int64_t first_statistic = first / units_per_statistic;
        const std::int64_t item_partials = partial_begin[static_cast<std::size_t>(item)];
        partial.clear(item_partials, partial_begin[static_cast<std::size_t>(item) + 1]);

        if (units_per_statistic == 1) {
            // Each unit is a whole statistic: one call per span of statistics of one group (K runs
            // of run_length apart), each with all of its runs.
            for (std::int64_t s = first; s < last;) {
                const std::int64_t group_end = (s / d.local_statistics + 1) * d.local_statistics;
                const std::int64_t span = std::min(last, group_end) - s;
                const std::int64_t i = item_partials + s - first_statistic;
                HWY_DYNAMIC_DISPATCH(AccumulateRuns)
                (dtype, Runs{data + statistic_offset(s) * element_size, span, run_length,
                             d.inner_repeats, d.inner_pitch, run_length, partial.count + i,
                             partial.mean + i, partial.m2 + i});
                s += span;
            }
            // Direct: the item's statistics are [first, last).
            statistics.finish(first, last, mean_out, variance_out);
            return;
        }

        // Decode the first unit once, then step (piece, block, outer repeat, statistic) by
        // additions.
        std::int64_t s = first_statistic;
        std::int64_t unit_in_statistic = first % units_per_statistic;
        std::int64_t piece = unit_in_statistic % pieces_per_run;
        std::int64_t block = unit_in_statistic / pieces_per_run % blocks_per_repeat;
        RepeatCursor outer(d.outer_reduced_axes,
                           unit_in_statistic / pieces_per_run / blocks_per_repeat);
        std::int64_t offset = statistic_offset(s);
        std::int64_t units_left_in_statistic = units_per_statistic - unit_in_statistic;
        for (std::int64_t unit = first; unit < last; ++unit) {
            const std::int64_t piece_begin = run_length * piece / pieces_per_run;
            const std::int64_t piece_end = run_length * (piece + 1) / pieces_per_run;
            const std::int64_t run_begin = block * runs_per_unit;
            const std::int64_t runs = std::min(runs_per_unit, d.inner_repeats - run_begin);
            const std::int64_t element =
                offset + outer.offset() + run_begin * d.inner_pitch + piece_begin;
            const std::int64_t i = item_partials + s - first_statistic;
            HWY_DYNAMIC_DISPATCH(AccumulateRuns)
            (dtype,
             Runs{data + element * element_size, 1, 0, runs, d.inner_pitch, piece_end - piece_begin,
                  partial.count + i, partial.mean + i, partial.m2 + i});
            if (++piece == pieces_per_run) {
                piece = 0;
                if (++block == blocks_per_repeat) {
                    block = 0;
                    outer.next();
                }
            }
            if (--units_left_in_statistic == 0) {
                units_left_in_statistic = units_per_statistic;
                ++s;
                offset = statistic_offset(s);
            }
        }
    };
    parallel_for(engine, items, item_grain(x.element_count(), items),
                 [&](std::int64_t begin, std::int64_t end) {
                     for (std::int64_t item = begin; item < end; ++item) run_item(item);
                 });
    if (schedule.direct()) return;

    for (std::int64_t item = 0; item < items; ++item) {
        const std::int64_t begin = partial_begin[static_cast<std::size_t>(item)];
        statistics.merge(item * units_per_item / units_per_statistic, partial, begin,
                         partial_begin[static_cast<std::size_t>(item) + 1] - begin);
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
    bool direct = false;  // the items accumulate into the statistics (no partial results)
};

MomentsPlan::MomentsPlan(const ReductionGeometry& geometry) : geometry_(geometry) {
    if (geometry.element_count == 0) return;
    auto schedule = std::make_shared<MomentsSchedule>();
    schedule->decomposition = decompose(geometry);
    const Decomposition& d = schedule->decomposition;
    if (d.runs) {
        schedule->run = schedule_runs(d);
        schedule->partial_count = schedule->run.partial_count();
        schedule->direct = schedule->run.direct();
    } else {
        schedule->matrix = schedule_matrix(d);
        schedule->partial_count = schedule->matrix.partial_count(d.prefix);
        schedule->direct = schedule->matrix.direct();
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

    const std::size_t doubles = plan.workspace_doubles();
    if (workspace.storage.size() < doubles) workspace.storage.resize(doubles);
    double* storage = workspace.storage.data();
    const Accumulators statistics = Accumulators::take(storage, geometry.statistic_count);
    const Accumulators partial = Accumulators::take(storage, schedule->partial_count);
    // Each work item clears its own partial results. Otherwise the statistics start empty: the
    // partial results merge into them (Chan's formula).
    if (!schedule->direct) statistics.clear(0, geometry.statistic_count);

    const Decomposition& d = schedule->decomposition;
    if (d.runs) {
        run_moments(engine, x, d, schedule->run, partial, statistics, mean.data(), variance.data());
    } else {
        matrix_moments(engine, x, d, schedule->matrix, partial, statistics, mean.data(),
                       variance.data());
    }
    if (!schedule->direct) {
        statistics.finish(0, geometry.statistic_count, mean.data(), variance.data());
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

std::int64_t moments_partial_results(const ReductionGeometry& geometry) {
    return MomentsPlan(geometry).partial_results();
}

std::string moments_kernel_name(const ReductionGeometry& geometry) {
    return kernel_name("moments", geometry, "", HWY_DYNAMIC_DISPATCH(KernelTargetName)());
}

}  // namespace keel::batch_normalization

#endif  // HWY_ONCE
