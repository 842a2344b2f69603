#pragma once

// Internal: the shape of a batch-normalization reduction, independent of layout.
//
// Every BatchNormalization case (one axis or several, channels-last or channels-first, virtual
// batches) is a row-major tensor whose dimensions are each either *kept* (they index a statistic)
// or *reduced* (summed over). Merging neighbours of the same kind and dropping size-1 dimensions
// leaves an alternating list, e.g.
//   NHWC, axis -1                 → [R: N·H·W, K: C]
//   NCHW, axis 1                  → [R: N, K: C, R: H·W]
//   NHWC, axis [1, 3]             → [R: N, K: H, R: W, K: C]
//   NHWC, virtual batches of v    → [R: v, K: N/v, R: H·W, K: C]   (the strided TF grouping)
// A statistic's index is the row-major index over the kept dimensions only.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <keel/engine/tensor.hpp>

namespace keel::batch_normalization {

struct ReductionGeometry {
    std::vector<std::int64_t> dims;    // merged dimensions, outermost first, none of size 1
    std::vector<bool> kept;            // kept[i]: dims[i] indexes statistics; else it is reduced
    std::int64_t statistic_count = 1;  // product of the kept dims (1 if none)
    std::int64_t reduction_count = 1;  // product of the reduced dims: n, elements per statistic
    std::int64_t element_count = 0;    // product of all dims

    // "[R:100352 K:64]", for logs and kernel names.
    std::string to_string() const;
    // True when the layout is [R, K] or [K] (the statistic index is the innermost dimension).
    bool channels_last() const;
    // True when the layout is [K, R], [R, K, R] or [K] with a reduced innermost dimension.
    bool channels_first() const;
};

// `shape` is the tensor's shape; `kept_axes` the dimensions (non-negative, in range, unique) that
// index the statistics. An element_count of 0 gives dims = {} and element_count 0.
ReductionGeometry make_geometry(const Shape& shape, const std::vector<int>& kept_axes);

// Throws keel::Error naming `where` unless `x` is what the kernels read: f32, bf16 or f16 data
// with the geometry's element count.
void check_kernel_input(std::string_view where, const Tensor& x, const ReductionGeometry& geometry);

}  // namespace keel::batch_normalization
