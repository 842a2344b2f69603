#pragma once

// Internal: fuses a ReLU (a plain ReLU layer or Activation("relu")) into the BatchNormalization
// directly before it, so inference normalizes and clamps in one pass over the data (what oneDNN's
// fuse_norm_relu does; keel's kernel does it itself). Only when the BatchNormalization's output
// feeds nothing else.

#include <optional>
#include <string>

#include "runtime/graph.hpp"

namespace keel::runtime {

struct BatchNormalizationReluMatch {
    int batch_normalization = -1;
    int relu = -1;
};

std::optional<BatchNormalizationReluMatch> match_fuse_batch_normalization_relu(const Graph& graph,
                                                                               int node);
// Returns "fuse_batch_normalization_relu:<batch normalization>+<relu>".
std::string apply_fuse_batch_normalization_relu(Graph& graph,
                                                const BatchNormalizationReluMatch& match);

}  // namespace keel::runtime
