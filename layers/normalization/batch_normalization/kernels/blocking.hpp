#pragma once

// Internal: the blocking constants keel's batch-normalization kernels share with their tests, and
// the argument blocks passed from the (target-independent) planners in moments.cpp and
// normalize.cpp to their Highway-dispatched inner loops.

#include <cstdint>

#include <keel/engine/dtype.hpp>
#include <keel/engine/tensor.hpp>

namespace keel::batch_normalization {

// Every f32 partial sum inside a block (of x − x₀, of x − m or of (x − m)²) is built by at most
// this many sequential additions, including the final combination of vector accumulators and
// lanes. The f32 part of the moments' error bound is proportional to it (tests derive their
// tolerances from it); everything past a block is merged in f64. The longest chains are the run
// kernel's: kMaxBlockRows vectors per accumulator, then 2 additions joining its four accumulators
// and log2(kMaxLanes) = 4 joining the lanes (262). The matrix kernel's are at most
// kMaxBlockRows / 2 + 1 (129; on AVX-512, 33).
inline constexpr int kMaxF32AdditionChain = 264;

// A block is reduced with two passes, the second over memory the first just loaded, so it should
// stay in L1 (32 KiB per core on the machines keel targets): 4096 widened f32 values is 16 KiB.
// Small blocks also keep a streaming read going: the prefetchers cover a short second pass.
inline constexpr std::int64_t kBlockElements = 4096;
// But a matrix block has at least this many rows: every block ends with an f64 merge per column,
// and with 512 channels (8 rows per L1 block) those merges cost as much as the reduction itself.
// Such a block is served by L2, fast enough for the compute-bound second pass.
inline constexpr std::int64_t kMinBlockRows = 64;

// The widest column tile the matrix moments kernel keeps f32 accumulators for (three arrays of
// this many floats on the stack); a last tile may be up to kMinTileWidth − 1 wider.
inline constexpr std::int64_t kMaxTileWidth = 512;
inline constexpr std::int64_t kMinTileWidth = 16;  // the widest f32 vector on x86 (AVX-512)
// At most this many rows per matrix block, and vectors per run-kernel accumulator and block: the
// bound on the f32 addition chains (kMaxF32AdditionChain).
inline constexpr std::int64_t kMaxBlockRows = 256;

// The largest f32 vector any compiled Highway target uses (AVX-512). Periods of coefficient
// tables are multiples of it so that every target's vectors tile them exactly.
inline constexpr std::int64_t kMaxLanes = 16;

// Which kernel reduces runs R of a reduced innermost dimension (channels-first data): the run
// kernel vectorizes along a run and joins a statistic's runs in consecutive samples into one
// block; the matrix kernel lays runs side by side as columns and vectorizes across them. Runs of
// at least kLongRunLength go to the run kernel, runs shorter than kMinRunLength (a vector) to the
// matrix kernel; in between, the run kernel takes a statistic of fewer than R runs (few samples:
// the matrix kernel would merge its columns every few rows) and the matrix kernel one of more
// (many samples: the run kernel's short strided reads then cost more). Measured on AVX-512 with
// 1 Mi-element tensors, runs of 16 to 144 and 4 to 128 samples: the rule's kernel is within 16%
// of the faster one on every shape (most within 2%); the wrong one was up to 4.1x slower.
inline constexpr std::int64_t kMinRunLength = 16;
inline constexpr std::int64_t kLongRunLength = 96;
static_assert(kMinRunLength >= kMaxLanes, "the run kernel reads whole vectors inside a run");

// Work below this many elements is not worth handing to another thread.
inline constexpr std::int64_t kParallelGrainElements = 64 * 1024;

// The matrix kernel cuts a multi-axis geometry's rows into chunks of at least this many rows per
// statistic group (its partial results, 24 bytes per group and column, then stay within 2.5% of
// the f32 data read), and wants at least kMinItems items to share among threads.
inline constexpr std::int64_t kMinChunkRows = 256;
inline constexpr std::int64_t kMinItems = 4;

// The matrix moments kernel cuts rows into more chunks (more parallelism) only while the partial
// results they leave for the final merge (3 doubles each) stay below this many; past it the
// partial results are one per statistic and per packed row (see moments_partial_results).
inline constexpr std::int64_t kMaxPartialResults = std::int64_t{1} << 18;

// --- moments ---------------------------------------------------------------------------------

// `rows` rows of `width` contiguous elements each, consecutive rows `pitch` elements apart. Each
// column's statistics are merged (Chan's formula) into count/mean/m2[column].
struct MatrixRows {
    const void* x = nullptr;
    std::int64_t rows = 0;
    std::int64_t pitch = 0;
    std::int64_t width = 0;  // in [kMinTileWidth, kMaxTileWidth + kMinTileWidth)
    double* count = nullptr;
    double* mean = nullptr;
    double* m2 = nullptr;
};

// `statistics` statistics, the first at x and each next one statistic_stride elements further;
// each is `runs` runs of `length` contiguous elements (at least kMinRunLength), run_pitch elements
// apart. Statistic i is merged into count/mean/m2[i].
struct Runs {
    const void* x = nullptr;
    std::int64_t statistics = 1;
    std::int64_t statistic_stride = 0;
    std::int64_t runs = 1;
    std::int64_t run_pitch = 0;
    std::int64_t length = 0;
    double* count = nullptr;
    double* mean = nullptr;
    double* m2 = nullptr;
};

// --- normalize -------------------------------------------------------------------------------

// Widest period of a coefficient table replicated so that narrow rows fill whole vectors.
inline constexpr std::int64_t kMaxPackedWidth = 1024;
// Longest coefficient table expanded over two dimensions for short reduced runs.
inline constexpr std::int64_t kMaxExpandedPeriod = 4096;

// How an operand of the element-wise pass (the per-statistic coefficients, or one adjustment
// tensor) varies along a row. Position j of a row (taken modulo the plan's period) reads index
//     base + (j / inner_length) * middle_stride + (j % inner_length) * inner_stride,
// where base comes from the outer dimensions.
struct OperandLayout {
    enum class Kind {
        scalar,  // one value per row
        direct,  // index = base + j: read the source array in place
        table,   // anything else: gathered into a per-thread table once per base
    };
    Kind kind = Kind::scalar;
    std::int64_t middle_stride = 0;
    std::int64_t inner_stride = 0;
    std::int64_t outer_stride[kMaxRank] = {};  // base change per step of each outer dimension
};

// The element-wise pass as rows of contiguous elements. Rows enumerate the outer dimensions
// row-major (row r starts at element r * row_length); each row is cut into chunks_per_row chunks
// of chunk_length for parallelism; "units" are (row, chunk) pairs, row-major.
struct NormalizePlan {
    DType x_dtype = DType::f32;
    DType y_dtype = DType::f32;
    const void* x = nullptr;
    void* y = nullptr;
    // y does not overlap x, so an output may be written twice with the same value (a row's last
    // partial vector is then computed as a whole vector ending at the row's end).
    bool may_rewrite_outputs = false;

    std::int64_t row_length = 0;
    std::int64_t period = 0;  // array operands repeat with this period; 0 if all are scalars
    std::int64_t inner_length = 1;
    std::int64_t chunk_length = 0;
    std::int64_t chunks_per_row = 1;

    int outer_rank = 0;
    std::int64_t outer_size[kMaxRank] = {};

    OperandLayout statistic;  // indexes mean_hi, mean_lo, scale, shift, outer_scale, outer_shift
    OperandLayout adjustment_scale;
    OperandLayout adjustment_bias;

    const float* mean_hi = nullptr;
    const float* mean_lo = nullptr;
    const float* scale = nullptr;
    const float* shift = nullptr;
    bool with_adjustment = false;
    bool relu = false;  // then y = max(y, 0), in the same pass
    const float* outer_scale = nullptr;
    const float* outer_shift = nullptr;
    const float* adjustment_scale_values = nullptr;
    const float* adjustment_bias_values = nullptr;
};

}  // namespace keel::batch_normalization
