#pragma once

#include <span>

#include "perf/cases/shapes.hpp"

namespace keel::perf {

// Registers every BatchNormalization case of `shape` (each layout, f32 and bf16, inference and
// training, each thread count) with its peers right after one another: keel through its public
// API, oneDNN's batch_normalization_forward called directly, the naive loop and PyTorch. Peers of
// one case run back to back because bandwidth drifts between minutes. Shapes marked
// `custom_paths` add keel-only training cases (nhwc, f32) with renorm, virtual batches, an
// adjustment and axis=[1, 3]. Names read "batch_normalization/shape:<NxHxWxC>/
// layout:<nhwc|nchw|nc>/dtype:<f32|bf16>/mode:<inference|training|training_renorm|
// training_virtual_batch|training_adjustment|training_multi_axis>/threads:<n>/
// peer:<keel|onednn|naive|torch>".
//
// Each peer's output for inference and plain training is checked against a double-precision
// reference (PyTorch's through its sums) before it is timed or reported; a mismatch fails that
// benchmark instead of reporting the speed of a wrong answer. Custom-mode outputs are keel's
// tests' business.
//
// `with_torch` = false leaves the PyTorch peer out (for machines without python3-torch). The
// oneDNN peer is left out of the cases whose dtype this CPU's oneDNN cannot normalize (bf16
// without AVX-512), and the run's context says so ("onednn_bf16_batch_normalization").
void register_batch_normalization_benchmarks(const BatchNormalizationShape& shape,
                                             std::span<const int> thread_counts, bool with_torch);

}  // namespace keel::perf
